"""Every hook is documented in docs/hooks.md with its exact signature, and every hook has a test
(``test_hook_<name>`` below, each loading docs/examples/every_hook.py)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

from tests.conftest import tk
import numpy as np

from toolkit.extract import stain as stain_normalisation
from toolkit.plugin import hookspecs
from toolkit.plugin.types import ExportContext
from toolkit.plugin.registry import load_registry
from toolkit.store import Store
from toolkit.testing import check_analysis, check_backbone, check_exporter, synthetic_run

DOCS = Path(__file__).parent.parent / "docs"
EVERY_HOOK = DOCS / "examples" / "every_hook.py"
HOOKS = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "tk_spec")}


def signature(fn) -> str:
    """``name(arg: Type, ...) -> Return`` from the spec's annotations, as written in hookspecs.py."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{fn.__name__}({params}) -> {sig.return_annotation}"


def test_the_hookspecs_are_the_seven_hooks():
    assert sorted(HOOKS) == ["prepare_jinja2_environment", "register_analyses", "register_backbones",
                             "register_commands", "register_exporters", "register_stain_normalisers",
                             "report_sections"]


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_signature(name):
    headings = re.findall(r"^### `(.+)`$", (DOCS / "hooks.md").read_text(), re.M)
    assert signature(HOOKS[name]) in headings


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_has_a_test(name):
    assert callable(globals().get(f"test_hook_{name}")), f"write test_hook_{name} in {__file__}"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_example_implements_hook(name):
    assert f"def {name}(" in EVERY_HOOK.read_text()


def test_hook_register_backbones():
    registry = load_registry([EVERY_HOOK])
    assert registry.origins[("backbone", "shallow")].source == "file"
    check_backbone(registry.backbone("shallow"))


def test_hook_register_analyses():
    registry = load_registry([EVERY_HOOK])
    assert registry.analysis("feature_spread").title == "Feature spread"
    check_analysis(registry.analysis("feature_spread"))


def test_hook_register_exporters(tmp_path):
    exporter = load_registry([EVERY_HOOK]).exporter("status_json")
    check_exporter(exporter)
    with Store.open(tmp_path / "tk.duckdb") as store:
        run = synthetic_run(store)
        store.results.save_results(run.run_id, "feature_spread", "alpha", "skipped", "too few", 0.0, [])
        [path] = exporter.export(ExportContext(run.run_id, store), tmp_path / "out")
    assert json.loads(path.read_text()) == [
        {"analysis": "feature_spread", "backbone": "alpha", "status": "skipped", "message": "too few", "seconds": 0.0}]


def test_hook_register_stain_normalisers(tmp_path):
    """The example normaliser is registered with its origin, fits a reference, shifts a tissue tile onto
    it, leaves a blank tile unchanged, and drives the pixels `tk run --stain brightness` embeds."""
    registry = load_registry([EVERY_HOOK])
    assert registry.origins[("stain", "brightness")].source == "file"
    normaliser = registry.stain_normaliser("brightness")
    reference = np.full((4, 4, 3), [180, 120, 160], np.uint8)
    state = normaliser.fit(reference)
    tile = np.random.default_rng(0).integers(50, 200, (2, 8, 8, 3)).astype(np.uint8)
    tile[1] = 255
    out = normaliser.apply(tile, state)
    np.testing.assert_allclose(out[0].reshape(-1, 3).mean(axis=0), [180, 120, 160], atol=1e-3)
    np.testing.assert_array_equal(out[1], tile[1])
    step = stain_normalisation.prepare("brightness", None, registry)
    assert step.stain_id.startswith("brightness-") and step.state == normaliser.default_state


def test_hook_register_commands():
    result = tk("hello", "docs", "--plugin", EVERY_HOOK)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello docs\n"
    assert "new-plugin" in tk("--help").stdout  # the built-in command comes through the same hook


def test_hook_prepare_jinja2_environment(tmp_path):
    """The filter a plugin adds is usable in a --template-dir override that extends the built-in report
    (the template is the one docs/hooks.md shows)."""
    template = re.search(r"```jinja\n(.*?)```", (DOCS / "hooks.md").read_text(), re.S).group(1)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "report.html").write_text(template)
    registry = load_registry([EVERY_HOOK])
    with Store.open(tmp_path / "tk.duckdb") as store:
        run = synthetic_run(store)
        context = ExportContext(run.run_id, store, template_dir=tmp_path / "templates", registry=registry)
        [path] = registry.exporter("html").export(context, tmp_path / "out")
    html = path.read_text()
    assert '<p class="shout">OUR LAB!</p>' in html
    assert html.index('class="shout"') < html.index('id="summary"')  # super() kept the built-in summary


def test_hook_report_sections(tmp_path):
    """A plugin's section appears in the report, escaped, between the backbone sections and Dataset."""
    registry = load_registry([EVERY_HOOK])
    with Store.open(tmp_path / "tk.duckdb") as store:
        run = synthetic_run(store)
        n_images = store.images.run_image_count(run.run_id)
        context = ExportContext(run.run_id, store, registry=registry)
        [path] = registry.exporter("html").export(context, tmp_path / "out")
    html = path.read_text()
    assert f"<h2>Lab notes</h2>\n<p>{n_images} images were scanned in our lab.</p>" in html
    assert html.index("Lab notes") < html.index('id="dataset"')
