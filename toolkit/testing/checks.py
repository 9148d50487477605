"""The conformance checks: each takes one registered object and raises ``AssertionError`` saying
what breaks the contract."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from toolkit.analysis.runner import RunData, run_analyses, with_dependencies
from toolkit.errors import TkError
from toolkit.plugin.registry import load_registry
from toolkit.plugin.settings import declared, resolved, undeclared_read
from toolkit.plugin.types import Analysis, AnalysisContext, Backbone, ExportContext, Exporter
from toolkit.plugin.results import Figure, Finding, MalformedResult, Result, Table, validate_results
from toolkit.run.exports import ExportEscape, export_into
from toolkit.store import Store, identifier
from toolkit.testing.synthetic import KIT_BACKBONES, KIT_LABELS, KIT_RUN_ID, KIT_SEED, SyntheticRun, synthetic_run

Item = Backbone | Analysis | Exporter
Check = Callable[[Any], None]


# --- analyses ------------------------------------------------------------------------------------

def _kit_context(run: SyntheticRun, analysis: Analysis, seed: int) -> AnalysisContext:
    """The context the runner builds for ``analysis`` (first backbone, or all of them), with its
    default settings, after running the analyses whose results it reads (``Needs.analyses``)."""
    registry = load_registry()
    dependencies = [a for a in with_dependencies([analysis], {**registry.analyses, analysis.name: analysis})
                    if a.name != analysis.name]
    run_analyses(run.store, run.run_id, run.sets, dependencies, seed=seed, registry=registry)
    data = RunData.load(run.store, run.run_id, run.sets)
    return data.context(analysis, data.targets(analysis)[0], resolved(analysis, {}), seed, registry)


def _results(analysis: Analysis, context: AnalysisContext) -> list[Result]:
    try:
        returned = analysis.run(context)
    except ValueError as exc:
        if "read-only" in str(exc):
            raise AssertionError(f"analysis {analysis.name!r} writes into its input arrays, which are read-only "
                                 f"in tk runs; work on a copy (np.array(x)): {exc}") from exc
        raise AssertionError(f"analysis {analysis.name!r} failed on the kit's synthetic run: ValueError: {exc}") from exc
    except Exception as exc:
        raise AssertionError(undeclared_read(exc, analysis, context.settings) or (
            f"analysis {analysis.name!r} failed on the kit's synthetic run, which meets its "
            f"needs ({analysis.needs}): {type(exc).__name__}: {exc}")) from exc
    try:
        return validate_results(analysis.name, returned)
    except MalformedResult as exc:
        raise AssertionError(str(exc)) from None


@dataclass(frozen=True)
class _KitOutcome:
    results: list[Result]
    context: AnalysisContext
    metadata_before: pd.DataFrame
    store: Store


def _run_on_kit_data(analysis: Analysis, seed: int) -> _KitOutcome:
    """One run of ``analysis`` on a fresh synthetic store, with a copy of the metadata it was given."""
    store = Store.open(":memory:")
    context = _kit_context(synthetic_run(store), analysis, seed)
    before = context.metadata.copy()
    return _KitOutcome(_results(analysis, context), context, before, store)


def check_analysis_results_are_stored(analysis: Analysis, seed: int = 0) -> None:
    """Results are Tables, Figures and Findings that the store saves and gives back unchanged in shape."""
    outcome = _run_on_kit_data(analysis, seed)
    results, store = outcome.results, outcome.store
    backbone = outcome.context.backbone or ""
    store.results.save_results(KIT_RUN_ID, analysis.name, backbone, "ok", "", 0.0, results)
    for table in (r for r in results if isinstance(r, Table)):
        stored = store.results.result_table(KIT_RUN_ID, analysis.name, table.name, backbone)
        expected = [identifier(str(c)) for c in table.data.columns]
        assert list(stored.columns) == expected, (
            f"analysis {analysis.name!r}: table {table.name!r} was stored with columns {list(stored.columns)}, "
            f"not {expected}; use distinct lower-case column names")
        assert len(stored) == len(table.data), (
            f"analysis {analysis.name!r}: table {table.name!r} has {len(table.data)} rows but {len(stored)} were stored")
    stored_items = {"figures": store.results.run_figures(KIT_RUN_ID), "findings": store.results.run_findings(KIT_RUN_ID)}
    for kind, cls in (("figures", Figure), ("findings", Finding)):
        count = sum(item["analysis"] == analysis.name for item in stored_items[kind])
        expected_count = sum(isinstance(r, cls) for r in results)
        assert count == expected_count, (
            f"analysis {analysis.name!r} returned {expected_count} {kind} but {count} were stored")


def check_analysis_settings_are_typed(analysis: Analysis, seed: int = 0) -> None:
    """The settings are a frozen dataclass of typed fields with fitting defaults, and each default,
    written as ``tk plugins`` shows it, parses back to itself with ``--set``."""
    try:
        specs = declared(analysis.settings)
    except TkError as exc:
        raise AssertionError(f"analysis {analysis.name!r}: {exc}") from None
    for spec in specs:
        text = spec.text(spec.default)
        try:
            parsed = spec.parse(text)
        except ValueError as exc:
            raise AssertionError(f"analysis {analysis.name!r}: the default of setting {spec.name!r} reads as "
                                 f"{text!r}, which --set refuses: {exc}") from None
        assert parsed == spec.default, (
            f"analysis {analysis.name!r}: the default of setting {spec.name!r}, {spec.default!r}, reads as {text!r}, "
            f"which --set parses to {parsed!r}; choose a default that survives being written out")


def check_analysis_leaves_inputs_alone(analysis: Analysis, seed: int = 0) -> None:
    """The analysis reads its context without changing it (arrays are read-only, metadata compared)."""
    outcome = _run_on_kit_data(analysis, seed)
    context = outcome.context
    try:
        pd.testing.assert_frame_equal(context.metadata, outcome.metadata_before)
    except AssertionError as exc:
        raise AssertionError(f"analysis {analysis.name!r} changed context.metadata in place; work on a copy "
                             f"(context.metadata.copy()): {exc}") from None
    assert set(context.all_embeddings) == set(KIT_BACKBONES), (
        f"analysis {analysis.name!r} changed context.all_embeddings; treat the context as read-only")


def _comparable(results: list[Result]) -> list[tuple[str, Any]]:
    return [(type(r).__name__, r.data if isinstance(r, Table) else r.message if isinstance(r, Finding) else r.name)
            for r in results]


def check_analysis_is_deterministic(analysis: Analysis, seed: int = 0) -> None:
    """Two runs with the same seed give the same tables, findings and figure names."""
    first, second = (_comparable(_run_on_kit_data(analysis, seed).results) for _ in range(2))
    assert [k for k, _ in first] == [k for k, _ in second], (
        f"analysis {analysis.name!r} returned different kinds of results on two runs with seed {seed}")
    for (kind, a), (_, b) in zip(first, second):
        if kind == "Table":
            try:
                pd.testing.assert_frame_equal(a, b)
            except AssertionError as exc:
                raise AssertionError(f"analysis {analysis.name!r} is not deterministic with seed {seed}: "
                                     f"seed every random step with context.seed: {exc}") from None
        else:
            assert a == b, f"analysis {analysis.name!r} is not deterministic with seed {seed}: {a!r} != {b!r}"


def _unmet_scenarios(analysis: Analysis) -> dict[str, dict[str, Any]]:
    """Synthetic runs that break one declared need each (and an unlabelled run for every analysis)."""
    needs = analysis.needs
    scenarios: dict[str, dict[str, Any]] = {"unlabelled images": {"labels": ()}}
    if needs.min_samples > 1:
        scenarios[f"{needs.min_samples - 1} images"] = {"n_images": needs.min_samples - 1}
    if needs.labels:
        scenarios["one label group"] = {"labels": KIT_LABELS[:1]}
    if needs.all_backbones:
        scenarios["one backbone"] = {"backbones": dict(list(KIT_BACKBONES.items())[:1])}
    return scenarios


def check_analysis_skips_with_reason(analysis: Analysis, seed: int = 0) -> None:
    """Data that breaks a declared need is skipped with a reason; unlabelled data never crashes it."""
    for scenario, arguments in _unmet_scenarios(analysis).items():
        store = Store.open(":memory:")
        run = synthetic_run(store, **arguments)
        registry = load_registry()
        with_needed = with_dependencies([analysis], {**registry.analyses, analysis.name: analysis})
        outcomes = run_analyses(store, run.run_id, run.sets, with_needed, seed=seed, registry=registry)
        must_skip = scenario != "unlabelled images" or analysis.needs.labels or analysis.needs.patients
        for outcome in (o for o in outcomes if o.analysis == analysis.name):
            where = f"analysis {analysis.name!r} on {scenario} ({outcome.backbone})"
            assert outcome.status != "failed", (
                f"{where} failed: {outcome.message}; declare the need in Needs(...) or raise SkipAnalysis(reason)")
            if must_skip:
                assert outcome.status == "skipped", f"{where} was not skipped although its needs are unmet"
            if outcome.status == "skipped":
                assert outcome.message.strip(), f"{where} was skipped without a reason"


ANALYSIS_CHECKS: tuple[Check, ...] = (check_analysis_settings_are_typed, check_analysis_results_are_stored,
                                      check_analysis_leaves_inputs_alone, check_analysis_is_deterministic,
                                      check_analysis_skips_with_reason)


# --- backbones -----------------------------------------------------------------------------------

def _kit_pixels(backbone: Backbone, n_images: int = 2) -> np.ndarray:
    height, width = backbone.input_size
    return np.random.default_rng(KIT_SEED).integers(0, 256, size=(n_images, height, width, 3), dtype=np.uint8)


def _embed_fresh(backbone: Backbone, seed: int) -> np.ndarray:
    """Embeddings of the kit's images from a model built anew with seeded random weights."""
    from toolkit.errors import TkError
    from toolkit.extract.pipeline import make_extractor
    from toolkit.extract.weights import build_model

    pixels = _kit_pixels(backbone)
    try:
        model, _ = build_model(backbone, "random", seed)
    except TkError as exc:
        raise AssertionError(str(exc)) from None
    return make_extractor(backbone, model, len(pixels), fold=True)(pixels)  # as tk run extracts


@lru_cache(maxsize=4)
def _embed(backbone: Backbone, seed: int) -> np.ndarray:
    return _embed_fresh(backbone, seed)


def check_backbone_output(backbone: Backbone, seed: int = 0) -> None:
    """The model built with random weights maps a batch to finite ``(n, dim)`` float embeddings."""
    vectors = _embed(backbone, seed)
    expected = (len(_kit_pixels(backbone)), backbone.dim)
    assert vectors.shape == expected, f"backbone {backbone.name!r} gave embeddings of shape {vectors.shape}, not {expected}"
    assert np.issubdtype(vectors.dtype, np.floating), f"backbone {backbone.name!r} gave {vectors.dtype} embeddings"
    assert np.isfinite(vectors).all(), f"backbone {backbone.name!r} gave NaN or infinite embeddings"


def check_backbone_is_deterministic(backbone: Backbone, seed: int = 0) -> None:
    """Two builds with the same seed give the same embeddings (random weights follow the seed)."""
    first, second = _embed(backbone, seed), _embed_fresh(backbone, seed)
    assert np.allclose(first, second, rtol=1e-5, atol=1e-6), (
        f"backbone {backbone.name!r} gives different embeddings from two builds with seed {seed}; "
        "build(None) must draw its weights from Keras' seeded initialisers")


def check_backbone_preprocess_is_pure(backbone: Backbone, seed: int = 0) -> None:
    """``preprocess`` keeps the batch shape and does not write into a numpy batch it is given."""
    batch = _kit_pixels(backbone).astype(np.float32)
    original = batch.copy()
    output = np.asarray(backbone.preprocess(batch))
    assert output.shape == original.shape, (
        f"backbone {backbone.name!r}: preprocess changed the batch shape {original.shape} to {output.shape}")
    assert np.array_equal(batch, original), (
        f"backbone {backbone.name!r}: preprocess wrote into its input array; copy it first")


BACKBONE_CHECKS: tuple[Check, ...] = (check_backbone_output, check_backbone_is_deterministic,
                                      check_backbone_preprocess_is_pure)


# --- exporters -----------------------------------------------------------------------------------

def _kit_store(path: Path) -> str:
    """A store file holding a synthetic run with one stored result of each kind; returns the run id."""
    with Store.open(path) as store:
        run = synthetic_run(store)
        for backbone in run.sets:
            figure = Figure("dots", '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>',
                            alt="an empty kit figure")
            store.results.save_results(run.run_id, "kit_summary", backbone, "ok", "", 0.01, [
                Table("main", pd.DataFrame({"feature": [0, 1], "value": [0.5, 1.5]}), "kit table"),
                figure, Finding("the kit wrote this finding")])
    return run.run_id


def _export(exporter: Exporter, store_path: Path, run_id: str, out_dir: Path) -> list[Path]:
    """Export from the store opened read-only, as ``tk report`` does; exporters must not write to it."""
    with Store.open(store_path, read_only=True) as store:
        context = ExportContext(run_id, store, registry=load_registry())
        try:
            written = export_into(exporter, context, out_dir, store)
        except ExportEscape as exc:
            raise AssertionError(f"exporter {exporter.name!r} wrote outside out_dir: {exc}") from exc
        except Exception as exc:
            raise AssertionError(f"exporter {exporter.name!r} failed on the kit's synthetic run (store opened "
                                 f"read-only): {type(exc).__name__}: {exc}") from exc
    assert isinstance(written, (list, tuple)), f"exporter {exporter.name!r} returned {type(written).__name__}, not a list of paths"
    root = out_dir.resolve()
    for path in written:
        resolved = Path(path).resolve()
        assert resolved.exists(), f"exporter {exporter.name!r} returned {path}, which does not exist"
        assert resolved.is_relative_to(root), f"exporter {exporter.name!r} wrote {path} outside out_dir {root}"
    return [Path(p).resolve().relative_to(root) for p in written]


def check_exporter_writes_inside_out_dir(exporter: Exporter, seed: int = 0) -> None:
    """Every returned path exists and lies inside ``out_dir``, nothing beside ``out_dir`` changes (as
    ``tk run`` checks), and the store is only read."""
    with tempfile.TemporaryDirectory(prefix="tk-kit-") as tmp:
        store_path = Path(tmp) / "kit.duckdb"
        _export(exporter, store_path, _kit_store(store_path), Path(tmp) / "out")


def check_exporter_is_repeatable(exporter: Exporter, seed: int = 0) -> None:
    """Exporting the same run twice writes the same files (by name)."""
    with tempfile.TemporaryDirectory(prefix="tk-kit-") as tmp:
        store_path = Path(tmp) / "kit.duckdb"
        run_id = _kit_store(store_path)
        first = _export(exporter, store_path, run_id, Path(tmp) / "first")
        second = _export(exporter, store_path, run_id, Path(tmp) / "second")
        assert sorted(first) == sorted(second), (
            f"exporter {exporter.name!r} wrote {sorted(map(str, first))} then {sorted(map(str, second))} for the same run")


EXPORTER_CHECKS: tuple[Check, ...] = (check_exporter_writes_inside_out_dir, check_exporter_is_repeatable)


