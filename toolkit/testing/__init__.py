"""A conformance kit for plugins, in the manner of scikit-learn's ``parametrize_with_checks``.

Each check takes one registered object and raises ``AssertionError`` saying what breaks the
contract. Run them all at once::

    from toolkit.testing import check_analysis
    check_analysis(my_analysis)

or one pytest test per check::

    from toolkit.testing import parametrize_with_checks, registered
    import my_plugin

    @parametrize_with_checks(registered(my_plugin))
    def test_conformance(item, check):
        check(item)

Analyses and exporters are checked on a synthetic run written into a DuckDB store through the
store's own API (24 labelled images from 6 patients, two backbones with a class signal in the
embeddings). Backbones are built with seeded random weights, so no download is needed. Importing
this module does not import TensorFlow or pytest.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Iterable, Mapping

from toolkit.plugin.types import Analysis, Backbone, Exporter
from toolkit.testing.checks import (ANALYSIS_CHECKS, BACKBONE_CHECKS, EXPORTER_CHECKS, Check, Item,
                                   check_analysis_is_deterministic, check_analysis_leaves_inputs_alone,
                                   check_analysis_results_are_stored, check_analysis_settings_are_typed,
                                   check_analysis_skips_with_reason,
                                   check_backbone_is_deterministic, check_backbone_output,
                                   check_backbone_preprocess_is_pure, check_exporter_is_repeatable,
                                   check_exporter_writes_inside_out_dir)
from toolkit.testing.synthetic import SyntheticRun, synthetic_run

__all__ = ["ANALYSIS_CHECKS", "BACKBONE_CHECKS", "EXPORTER_CHECKS", "SyntheticRun", "check_analysis",
           "check_analysis_is_deterministic", "check_analysis_leaves_inputs_alone",
           "check_analysis_results_are_stored", "check_analysis_settings_are_typed", "check_analysis_skips_with_reason",
           "check_backbone",
           "check_backbone_is_deterministic", "check_backbone_output", "check_backbone_preprocess_is_pure",
           "check_exporter", "check_exporter_is_repeatable", "check_exporter_writes_inside_out_dir", "checks_for",
           "parametrize_with_checks", "registered", "synthetic_run"]


def checks_for(item: Item) -> tuple[Check, ...]:
    """The checks that apply to a Backbone, Analysis or Exporter."""
    for kind, checks in ((Backbone, BACKBONE_CHECKS), (Analysis, ANALYSIS_CHECKS), (Exporter, EXPORTER_CHECKS)):
        if isinstance(item, kind):
            return checks
    raise TypeError(f"expected a Backbone, Analysis or Exporter, got {type(item).__name__}")


def _check_all(item: Item) -> None:
    for check in checks_for(item):
        check(item)


def check_backbone(backbone: Backbone) -> None:
    """Run every backbone check (builds the model twice with random weights)."""
    _check_all(backbone)


def check_analysis(analysis: Analysis) -> None:
    """Run every analysis check on synthetic runs."""
    _check_all(analysis)


def check_exporter(exporter: Exporter) -> None:
    """Run every exporter check on a synthetic run in a temporary store."""
    _check_all(exporter)


def registered(module: ModuleType) -> list[Item]:
    """Everything a plugin module registers through its ``register_*`` hooks (only that module)."""
    from toolkit.plugin.registry import Register

    items: list[Item] = []
    for hook, kind in (("register_backbones", Backbone), ("register_analyses", Analysis),
                       ("register_exporters", Exporter)):
        if hasattr(module, hook):
            register: Register = Register(kind)
            getattr(module, hook)(register=register)
            items.extend(register.items.values())
    return items


def parametrize_with_checks(items: Iterable[Item],
                            expected_failed_checks: Mapping[str, Mapping[str, str]] | None = None) -> Any:
    """A ``pytest.mark.parametrize`` over (item, check) pairs, one test per check, with readable ids.

    :param expected_failed_checks: ``{item name: {check name: reason}}``; those pairs are marked
        ``xfail(strict=True)``, so a fixed check shows up as a failure to remove from the list.
    """
    import pytest

    expected = expected_failed_checks or {}
    params = []
    for item in items:
        for check in checks_for(item):
            reason = expected.get(item.name, {}).get(check.__name__)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(item, check, id=f"{item.name}-{check.__name__}", marks=marks))
    return pytest.mark.parametrize("item, check", params)
