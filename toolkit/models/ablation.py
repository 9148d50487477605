"""``tk train --ablation``: the same training with and without augmentation and class weights,
compared by paired differences on the same held-out patients."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.analysis.evaluation import patient_classes, patient_resamples, percentile_ci, probe_metrics
from toolkit.lazy import lazy_import

if TYPE_CHECKING:
    from toolkit.models.training import TrainOutcome

pd = lazy_import("pandas")

ABLATION = [(False, "none"), (False, "weights"), (True, "none"), (True, "weights")]
"""(augment, balance) of the four ablation runs."""


def paired_differences(a: TrainOutcome, b: TrainOutcome, minority: int, n_bootstrap: int,
                       seed: int) -> list[dict[str, Any]]:
    """``a - b`` in balanced accuracy and minority-class sensitivity, with 95% CIs from one set of
    patient resamples applied to both (both runs share the held-out patients)."""
    n = int(a.val_patients.max()) + 1
    resamples = patient_resamples(patient_classes(a.oof.y_true, a.val_patients), n_bootstrap, seed)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = [probe_metrics(o.oof, o.val_patients, resamples) for o in (a, b)]
        point = [probe_metrics(o.oof, o.val_patients, np.ones((1, n))) for o in (a, b)]
        for metric, cls in (("balanced_accuracy", None), ("sensitivity", minority)):
            pick = (lambda m: m[metric]) if cls is None else (lambda m: m[metric][:, cls])  # noqa: E731
            low, high = percentile_ci(pick(boot[0]) - pick(boot[1]))
            va, vb = float(pick(point[0])[0]), float(pick(point[1])[0])
            rows.append({"metric": metric, "class": None if cls is None else a.oof.classes[cls],
                         "value_a": va, "value_b": vb, "difference": va - vb, "ci_low": low, "ci_high": high})
    return rows


def ablation_table(outcomes: list[TrainOutcome], minority: int, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """One row per factor comparison (augmentation at each balance, balancing at each augmentation)."""
    by_key = {(o.settings.augment, o.settings.balance): o for o in outcomes}
    pairs = [("augment", (True, bal), (False, bal)) for bal in ("none", "weights")]
    pairs += [("balance", (aug, "weights"), (aug, "none")) for aug in (False, True)]
    rows = []
    for factor, key_a, key_b in pairs:
        a, b = by_key[key_a], by_key[key_b]
        label = (f"augment on − off (balance {key_a[1]})" if factor == "augment"
                 else f"balance weights − none (augment {'on' if key_a[0] else 'off'})")
        rows += [{"factor": label, "train_a": a.train_id, "train_b": b.train_id, **r}
                 for r in paired_differences(a, b, minority, n_bootstrap, seed)]
    return pd.DataFrame(rows)


