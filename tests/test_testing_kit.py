"""toolkit.testing: built-ins pass the conformance kit, and the kit catches plugins that break the contract."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import STAND_IN, TINY
from tests.datasets import tile
from toolkit.plugin.types import Analysis, Backbone, Exporter, Needs
from toolkit.plugin.registry import load_registry
from toolkit.plugins import BUILTIN_PLUGINS
from toolkit.plugin.results import Finding, Table
from toolkit.testing import (ANALYSIS_CHECKS, check_analysis_is_deterministic, check_analysis_leaves_inputs_alone,
                             check_analysis_results_are_stored, check_analysis_skips_with_reason,
                             check_backbone, check_backbone_output, check_backbone_preprocess_is_pure,
                             check_exporter_writes_inside_out_dir, parametrize_with_checks, registered)

# The deployment exporters and the Grad-CAM gallery rebuild a registered backbone with its weights
# and read the run's image files, which the kit's synthetic store (made-up backbones, no files)
# cannot give; tests/test_deploy.py and tests/test_report.py run them end to end instead.
NEEDS_A_REAL_RUN = {"tflite", "tflite-fp16", "tflite-dynamic", "tflite-int8", "savedmodel", "gradcam"}
BUILTIN_ITEMS = [item for module in BUILTIN_PLUGINS for item in registered(importlib.import_module(module))
                 if item.name not in NEEDS_A_REAL_RUN]


def test_importing_the_kit_imports_neither_tensorflow_nor_pytest():
    code = ("import sys, toolkit.testing; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'pytest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@parametrize_with_checks([item for item in BUILTIN_ITEMS if not isinstance(item, Backbone)])
def test_builtin_analyses_and_exporters_pass_the_kit(item, check):
    check(item)


@pytest.mark.slow
@parametrize_with_checks([item for item in BUILTIN_ITEMS if isinstance(item, Backbone)])
def test_builtin_backbones_pass_the_kit(item, check):
    check(item)


def test_parametrize_with_checks_gives_one_named_case_per_check_and_strict_xfails():
    analysis = Analysis(name="noop", run=lambda context: [])
    mark = parametrize_with_checks([analysis], expected_failed_checks={"noop": {"check_analysis_is_deterministic": "why"}})
    params = mark.args[1]
    assert [p.id for p in params] == [f"noop-{check.__name__}" for check in ANALYSIS_CHECKS]
    xfails = {p.id: p.marks[0].kwargs for p in params if p.marks}
    assert xfails == {"noop-check_analysis_is_deterministic": {"strict": True, "reason": "why"}}


def test_the_tiny_test_backbone_passes():
    check_backbone(load_registry([TINY]).backbone("tiny"))


def test_the_numpy_stand_in_backbone_passes_and_tells_tissues_apart():
    """The stand-in that most tests embed with is a lawful backbone, gives every image its own
    vector, and separates the generated malignant tiles from the benign ones, so statistics on its
    embeddings have something to find."""
    from scipy import stats

    from toolkit.extract.external import ExternalModel, external_extractor
    from toolkit.extract.weights import build_model

    stand_in = load_registry([STAND_IN]).backbone("stand_in")
    check_backbone(stand_in)
    model, weights = build_model(stand_in, "random")
    assert isinstance(model, ExternalModel) and weights.kind == "file"
    rng = np.random.default_rng(0)
    malignant = [True] * 8 + [False] * 8
    pixels = np.stack([np.asarray(tile(rng, m).convert("RGB").resize(stand_in.input_size)) for m in malignant])
    vectors = external_extractor(stand_in, model)(pixels)
    assert vectors.shape == (16, stand_in.dim) and len({v.tobytes() for v in vectors}) == 16
    welch = stats.ttest_ind(vectors[:8], vectors[8:], equal_var=False)  # per feature, malignant vs benign
    assert (welch.pvalue < 1e-3).sum() >= 4, welch.pvalue


def _analysis(run, needs: Needs = Needs()) -> Analysis:
    return Analysis(name="broken", run=run, needs=needs)


def _ok(context):
    return [Table("main", {"n": [len(context.metadata)]}), Finding("fine")]


def test_writing_into_the_embeddings_is_caught():
    def scale_in_place(context):
        context.embeddings[:] *= 2
        return _ok(context)

    with pytest.raises(AssertionError, match="writes into its input arrays"):
        check_analysis_leaves_inputs_alone(_analysis(scale_in_place))


def test_changing_the_metadata_is_caught():
    def relabel(context):
        context.metadata["label"] = "everything"
        return _ok(context)

    with pytest.raises(AssertionError, match="changed context.metadata in place"):
        check_analysis_leaves_inputs_alone(_analysis(relabel))


def test_an_unseeded_analysis_is_caught():
    def noisy(context):
        return [Table("main", {"draw": np.random.default_rng().normal(size=3)})]

    with pytest.raises(AssertionError, match="not deterministic with seed 0"):
        check_analysis_is_deterministic(_analysis(noisy))


def test_results_that_are_not_results_are_caught():
    with pytest.raises(AssertionError, match="returned dict"):
        check_analysis_results_are_stored(_analysis(lambda context: {"mean": 1.0}))


def test_an_analysis_that_crashes_on_unlabelled_data_is_caught():
    def needs_labels_but_does_not_say_so(context):
        if context.metadata["label"].isna().any():
            raise ValueError("labels are missing")
        return _ok(context)

    broken = _analysis(needs_labels_but_does_not_say_so)
    with pytest.raises(AssertionError, match=r"unlabelled images \(alpha\) failed: ValueError: labels are missing"):
        check_analysis_skips_with_reason(broken)
    check_analysis_skips_with_reason(_analysis(needs_labels_but_does_not_say_so, Needs(labels=True)))


def test_a_skip_without_a_reason_is_caught():
    from toolkit.plugin.results import SkipAnalysis

    def mute(context):
        if context.metadata["label"].isna().any():
            raise SkipAnalysis("")
        return _ok(context)

    with pytest.raises(AssertionError, match="skipped without a reason"):
        check_analysis_skips_with_reason(_analysis(mute))


def test_a_wrong_dim_is_caught():
    tiny = load_registry([TINY]).backbone("tiny")
    wrong = Backbone(name="wrong", dim=tiny.dim + 1, build=tiny.build, preprocess=tiny.preprocess,
                     input_size=tiny.input_size, imagenet=False)
    with pytest.raises(AssertionError, match="declares dim 17 but its model outputs shape"):
        check_backbone_output(wrong)


def test_preprocessing_in_place_is_caught():
    def in_place(batch):
        batch /= 255.0
        return batch

    backbone = Backbone(name="inplace", dim=1, build=lambda weights: None, preprocess=in_place, input_size=(8, 8))
    with pytest.raises(AssertionError, match="preprocess wrote into its input array"):
        check_backbone_preprocess_is_pure(backbone)


def test_an_exporter_writing_outside_out_dir_is_caught(tmp_path):
    def escape(context, out_dir: Path):
        path = tmp_path / "elsewhere.txt"
        path.write_text("x")
        return [path]

    with pytest.raises(AssertionError, match="outside out_dir"):
        check_exporter_writes_inside_out_dir(Exporter(name="escape", export=escape))


def test_an_exporter_writing_beside_out_dir_and_returning_nothing_is_caught():
    def stray(context, out_dir: Path):
        (Path(str(out_dir)).parent / "stray.txt").write_text("x")
        return []

    with pytest.raises(AssertionError, match="wrote outside out_dir: wrote outside --out: .*stray.txt"):
        check_exporter_writes_inside_out_dir(Exporter(name="stray", export=stray))


def test_an_exporter_writing_to_the_store_is_caught():
    def scribble(context, out_dir: Path):
        context.store.save_results(context.run_id, "scribble", "", "ok", "", 0.0, [])
        return []

    with pytest.raises(AssertionError, match="store opened read-only.*the store is read-only to plugins"):
        check_exporter_writes_inside_out_dir(Exporter(name="scribble", export=scribble))
