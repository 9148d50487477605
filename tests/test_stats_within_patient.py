"""Magnification varies within patients: its patient-level test is a repeated-measures design
(RM-ANOVA and Friedman on complete blocks), not a one-way test of patient means as if they were
independent (issue #16, item 1)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from scipy.stats import friedmanchisquare
from statsmodels.stats.anova import AnovaRM

from tests.test_stats_common import synthetic_context
from toolkit.stats import patient_blocks, patient_means, repeated_measures, within_patient
from toolkit.plugin.results import Finding, Table
from toolkit.plugins.analyses.anova import AnovaSettings, anova


def _within_effect_context(n_patients: int = 12, dim: int = 6, seed: int = 3):
    """Large differences between patients, a small magnification effect that every patient shares,
    in features 0 and 1."""
    context = synthetic_context(n_patients=n_patients, per_patient=8, dim=dim, signal=0.0, seed=seed,
                                settings=AnovaSettings())
    meta = context.metadata
    rng = np.random.default_rng(seed)
    patient_offset = dict(zip(meta["patient_id"].unique(), rng.normal(0, 5, meta["patient_id"].nunique())))
    x = rng.normal(0, 0.3, (len(meta), dim)) + meta["patient_id"].map(patient_offset).to_numpy()[:, None]
    x[:, :2] += 0.6 * np.log2(meta["magnification"].to_numpy() / 40)[:, None]
    context.embeddings = x.astype(np.float32)
    context.all_embeddings = {context.backbone: context.embeddings}
    return context


def test_repeated_measures_equals_statsmodels_anovarm_and_scipy_friedman():
    context = _within_effect_context()
    meta, x = context.metadata, np.asarray(context.embeddings, dtype=np.float64)
    x[:, 5] = np.round(x[:, 5])  # ties within patients, for Friedman's tie correction
    table = repeated_measures(patient_blocks(patient_means(x, meta, "magnification")), "magnification")
    for feature in range(x.shape[1]):
        means = (meta[["patient_id", "magnification"]].assign(v=x[:, feature])
                 .groupby(["patient_id", "magnification"], as_index=False)["v"].mean())
        reference = AnovaRM(means, "v", "patient_id", within=["magnification"]).fit().anova_table.iloc[0]
        wide = means.pivot(index="patient_id", columns="magnification", values="v")
        friedman = friedmanchisquare(*[wide[c] for c in wide.columns])
        row = table[table["feature"] == feature].iloc[0]
        assert row["n_subjects"] == 12 and row["n_levels"] == 4
        assert np.isclose(row["f"], reference["F Value"], rtol=1e-10)
        assert np.isclose(row["p_val"], reference["Pr > F"], rtol=1e-8, atol=1e-300)
        assert np.isclose(row["chi2"], friedman.statistic, rtol=1e-10)
        assert np.isclose(row["p_val_friedman"], friedman.pvalue, rtol=1e-8)


def test_magnification_is_tested_within_patients_and_finds_the_shared_effect():
    context = _within_effect_context()
    assert within_patient(context.metadata, "magnification") and not within_patient(context.metadata, "subtype")
    results = anova(context)
    tables = {r.name: r.data for r in results if isinstance(r, Table)}
    main = tables["main"]
    assert main[(main["factor"] == "magnification") & (main["level"] == "patient")].empty  # no one-way rows
    assert not main[(main["factor"] == "subtype") & (main["level"] == "patient")].empty  # between patients: kept
    rm = tables["rm"]
    assert set(rm[rm["q_val"] < 0.05]["feature"]) == {0, 1}
    assert (rm.set_index("feature").loc[[0, 1], "partial_eta_sq"] > 0.5).all()
    finding = next(r for r in results if isinstance(r, Finding) and "within patients" in r.message)
    assert finding.message.startswith("patient level (within patients): 2 of 6 features differ across 4")
    # the one-way test of the same patient means, as the old code ran it, misses the effect
    from toolkit.stats import one_way

    view = patient_means(np.asarray(context.embeddings, dtype=np.float64), context.metadata, "magnification")
    assert (one_way(view, "magnification")["q_val"] >= 0.05).all()


def test_patients_without_every_level_are_left_out_and_counted():
    context = _within_effect_context()
    meta = context.metadata
    first = meta["patient_id"].iloc[0]
    drop = (meta["patient_id"] == first) & (meta["magnification"] == 400)
    context.metadata = meta[~drop].reset_index(drop=True)
    context.embeddings = np.asarray(context.embeddings)[~drop.to_numpy()]
    results = anova(context)
    rm = next(r.data for r in results if isinstance(r, Table) and r.name == "rm")
    assert (rm["n_subjects"] == 11).all()
    finding = next(r for r in results if isinstance(r, Finding) and "within patients" in r.message)
    assert "1 patient without images at every magnification left out" in finding.message


def test_patient_blocks_orders_levels_numerically():
    view = patient_means(np.arange(8.0)[:, None], pd.DataFrame(
        {"patient_id": ["a"] * 4 + ["b"] * 4, "magnification": [400, 40, 200, 100] * 2}), "magnification")
    blocks = patient_blocks(view)
    assert blocks.levels == [40, 100, 200, 400]
    assert blocks.y[:, :, 0].tolist() == [[1.0, 3.0, 2.0, 0.0], [5.0, 7.0, 6.0, 4.0]]


def test_kruskal_wallis_is_not_reported_for_groups_of_few_patients():
    """Issue #16, item 10: with 2 to 4 patients per subtype the chi² approximation of Kruskal–Wallis
    can never reach significance; it is left out, and the finding says why."""
    context = synthetic_context(n_patients=12, per_patient=8, dim=6, signal=3.0,  # 3 patients per subtype
                                settings=AnovaSettings())
    results = anova(context)
    main = next(r.data for r in results if isinstance(r, Table) and r.name == "main")
    patient = main[(main["factor"] == "subtype") & (main["level"] == "patient")]
    image = main[(main["factor"] == "subtype") & (main["level"] == "image")]
    assert patient["p_val_kw"].isna().all() and patient["p_val"].notna().all()
    assert image["p_val_kw"].notna().all()
    finding = next(r for r in results if isinstance(r, Finding) and r.message.startswith("patient level")
                   and "subtype" in r.message)
    assert "Kruskal–Wallis is not reported: a group has fewer than 5 patients" in finding.message


def test_an_image_content_counts_once_and_conflicting_contents_are_left_out():
    """Issue #16, item 8: the same file bytes under two subtypes (BreakHis 14-13412, DC and LC) entered
    image-level tests twice. Each content counts once per group; one filed under two groups is left out."""
    from toolkit.plugins.analyses.ttest import TtestSettings, ttest

    context = synthetic_context(n_patients=12, per_patient=8, dim=6, settings=AnovaSettings())
    meta = context.metadata
    copies = meta.iloc[:3].copy()  # the first three contents again, same labels and subtypes
    copies["image_id"] += 10_000
    conflict = meta.iloc[[3]].copy()  # the fourth content again, under another subtype
    conflict["image_id"] += 20_000
    conflict["subtype"] = "other_subtype"
    context.metadata = pd.concat([meta, copies, conflict], ignore_index=True)
    x = np.asarray(context.embeddings)
    context.embeddings = np.vstack([x, x[:3], x[[3]]])
    main = next(r.data for r in ttest(replace(context, settings=TtestSettings()))
                if isinstance(r, Table) and r.name == "main")
    image = main[main["level"] == "image"].iloc[0]
    assert image["n_a"] + image["n_b"] == len(meta)  # the three copies counted once
    results = anova(context)
    subtype = next(r.data for r in results if isinstance(r, Table) and r.name == "main")
    subtype = subtype[(subtype["factor"] == "subtype") & (subtype["level"] == "image")].iloc[0]
    assert subtype["n"] == len(meta) - 1  # the content under two subtypes is left out
    note = next(r for r in results if isinstance(r, Finding) and r.message.startswith("Tests of subtype"))
    assert "3 images with the same content as another of the same subtype counted once" in note.message
    assert "1 content filed under two or more subtype values left out" in note.message
