"""probe: metrics against scikit-learn, bootstrap shape, signal vs shuffled labels, skips."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from tests.test_stats_common import synthetic_context
from toolkit.analysis.evaluation import (SOLVER_TOL, OutOfFold, confusion_counts, confusion_metrics, metric_rows,
                                         patient_resamples, weighted_auc)
from toolkit.plugins.analyses.probe import ProbeSettings, probe
from toolkit.plugin.results import SkipAnalysis, Table


def _metrics(results):
    return next(r.data for r in results if isinstance(r, Table) and r.name == "main")


def _value(metrics, target, split, metric, cls=None):
    rows = metrics[(metrics["target"] == target) & (metrics["split"] == split) & (metrics["metric"] == metric)]
    if cls is not None:
        rows = rows[rows["class"] == cls]
    assert len(rows) == 1
    return rows.iloc[0]


def test_weighted_auc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    score = np.round(rng.random(300), 2)  # many ties
    positive = rng.random(300) < 0.4
    weights = rng.integers(0, 3, (4, 300)).astype(float)
    ours = weighted_auc(score, positive, np.arange(300), weights)
    expected = [roc_auc_score(positive, score, sample_weight=w) for w in weights]
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_weighted_auc_of_patient_weights_counts_every_image_of_a_patient():
    rng = np.random.default_rng(3)
    score = np.round(rng.random(400), 2)
    positive = rng.random(400) < 0.3
    patients = rng.integers(0, 15, 400)
    weights = rng.multinomial(15, np.full(15, 1 / 15), size=6).astype(float)
    ours = weighted_auc(score, positive, patients, weights)
    expected = [roc_auc_score(positive, score, sample_weight=w[patients]) for w in weights]
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    assert np.isnan(weighted_auc(score, positive, patients, np.zeros((1, 15))))  # no image drawn


def test_confusion_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    counts = confusion_counts(y_true, y_pred, rng.integers(0, 5, 200), 5, 3)
    cm = counts.sum(axis=0)
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred))
    metrics = confusion_metrics(cm)
    assert metrics["accuracy"] == pytest.approx((y_true == y_pred).mean(), abs=1e-12)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    negatives = y_true != 0
    assert metrics["specificity"][0] == pytest.approx((y_pred[negatives] != 0).mean(), abs=1e-12)


def test_point_estimates_and_patient_score():
    y_true = np.array([0, 0, 1, 1, 1, 0])
    proba1 = np.array([0.2, 0.6, 0.7, 0.9, 0.4, 0.1])
    oof = OutOfFold("label", "patient", ["benign", "malignant"], y_true, np.c_[1 - proba1, proba1], 2)
    patients = np.array([0, 0, 1, 1, 2, 2])
    rows = metric_rows(oof, patients, n_bootstrap=200, seed=0).set_index("metric")
    assert rows.loc["accuracy", "value"] == pytest.approx(4 / 6)
    assert rows.loc["patient_score", "value"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert rows.loc["sensitivity", "value"] == pytest.approx(2 / 3) and rows.loc["sensitivity", "class"] == "malignant"
    assert rows.loc["specificity", "value"] == pytest.approx(2 / 3)
    assert rows.loc["roc_auc", "value"] == pytest.approx(roc_auc_score(y_true, proba1))
    assert (rows["ci_low"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["ci_high"] + 1e-12).all()


def test_probe_finds_the_signal_and_stores_predictions():
    results = probe(synthetic_context(dim=24, signal=2.0, settings=ProbeSettings(bootstrap=200)))
    metrics = _metrics(results)
    assert set(metrics["split"]) == {"patient", "image"} and set(metrics["target"]) == {"label", "subtype"}
    honest = _value(metrics, "label", "patient", "balanced_accuracy")
    assert honest["value"] > 0.8 and honest["ci_low"] > 0.6
    assert _value(metrics, "label", "patient", "roc_auc")["value"] > 0.9
    per_class = metrics[(metrics["target"] == "subtype") & (metrics["metric"] == "sensitivity")
                        & (metrics["split"] == "patient")]
    assert len(per_class) == 4 and per_class["class"].notna().all()
    predictions = next(r.data for r in results if isinstance(r, Table) and r.name == "predictions")
    label = predictions[(predictions["target"] == "label") & (predictions["split"] == "patient")]
    assert len(label) == 2 * 24 * 12
    sums = label.groupby("image_id")["probability"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-9)
    assert {r.name for r in results if not isinstance(r, Table) and hasattr(r, "content")} == {"roc", "confusion"}


def test_probe_on_shuffled_labels_is_at_chance():
    context = synthetic_context(dim=24, signal=0.0, settings=ProbeSettings(bootstrap=200))
    context.metadata["label"] = context.metadata["label"].sample(frac=1.0, random_state=5).to_numpy()
    value = _value(_metrics(probe(context)), "label", "patient", "balanced_accuracy")
    assert 0.38 < value["value"] < 0.62 and value["ci_low"] < 0.5  # CV under the null sits at or below chance


def test_probe_skips_without_two_patients_per_class():
    context = synthetic_context(n_patients=3, per_patient=6, dim=6, settings=ProbeSettings())  # one benign patient
    context.metadata["subtype"] = None
    with pytest.raises(SkipAnalysis, match="at least 2 patients"):
        probe(context)


def test_row_space_projection_gives_the_same_probe():
    """Fewer images than features: fitting in the span of the training rows is the same model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from toolkit.analysis.evaluation import RowSpace

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 300))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    scaler = StandardScaler().fit(x)
    z, test = scaler.transform(x), scaler.transform(rng.normal(size=(20, 300)))
    plain = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(z, y)
    space = RowSpace().fit(z)
    projected = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(space.transform(z), y)
    assert space.basis_.shape == (300, 59)  # centred rows span n - 1 directions
    np.testing.assert_allclose(projected.predict_proba(space.transform(test)), plain.predict_proba(test), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standardise_matches_standard_scaler(dtype):
    from sklearn.preprocessing import StandardScaler

    from toolkit.analysis.evaluation import standardise

    rng = np.random.default_rng(4)
    x = np.abs(rng.normal(3, 2, size=(2500, 40))).astype(dtype)
    x[:, 5] = dtype(0.1)  # constant: scale 1, standardised to 0
    train, test = x[:2000].copy(), x[2000:].copy()
    scaler = StandardScaler().fit(x[:2000])
    standardise(train, test)
    assert train.dtype == test.dtype == dtype
    tolerance = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(train, scaler.transform(x[:2000]), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(test, scaler.transform(x[2000:]), rtol=tolerance, atol=tolerance)
    assert np.abs(train[:, 5]).max() < 1e-12


def test_parallel_probe_matches_a_plain_scikit_learn_cross_validation():
    """The probe's own standardisation and its folds fitted side by side give the out-of-fold
    probabilities of the textbook pipeline, fold after fold (up to the optimizer's tolerance)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from toolkit.analysis.evaluation import cross_validate, fold_indices
    from toolkit.analysis.stats import group_codes

    context = synthetic_context(n_patients=30, per_patient=20, dim=48, signal=0.6)
    x = context.embeddings
    patients, _ = group_codes(context.metadata["patient_id"])
    problems, expected = [], []
    for target, split in (("label", "patient"), ("subtype", "image")):
        y, classes = group_codes(context.metadata[target])
        folds = fold_indices(y, patients, split, seed=0)
        problems.append((y, len(classes), folds))
        proba = np.zeros((len(y), len(classes)))
        for train, test in folds:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, tol=SOLVER_TOL, max_iter=1000)).fit(x[train], y[train])
            proba[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
        expected.append(proba)
    for ours, theirs in zip(cross_validate(x, problems, c=0.1), expected):
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
        np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))


def test_bootstrap_resamples_patients_within_each_class():
    """Issue #16, item 4: a resample that misses the rare class no longer averages balanced accuracy
    over the classes it happens to hold. Class 2 (2 of 20 patients) is always misclassified, the others
    never: balanced accuracy is 2/3 in every resample that keeps every class; an unstratified
    bootstrap drops class 2 in ~12% of resamples and reports 1.0 there."""
    patients = np.repeat(np.arange(20), 5)
    patient_class = np.array([0] * 9 + [1] * 9 + [2] * 2)
    y_true = patient_class[patients]
    y_pred = np.where(y_true == 2, 0, y_true)
    proba = np.eye(3)[y_pred] * 0.8 + 0.2 / 3
    oof = OutOfFold("subtype", "patient", ["a", "b", "c"], y_true, proba, 5)
    rows = metric_rows(oof, patients, n_bootstrap=400, seed=0)
    ba = rows[(rows["metric"] == "balanced_accuracy")].iloc[0]
    assert np.isclose(ba["value"], 2 / 3)
    assert ba["ci_high"] < 0.7, "resamples without class 2 inflated the interval"
    weights = patient_resamples(patient_class, 100, 0)
    for stratum in range(3):
        assert (weights[:, patient_class == stratum].sum(axis=1) == (patient_class == stratum).sum()).all()


def test_backbones_are_compared_on_the_same_patient_resamples():
    """Issue #16, item 2: paired differences between backbones, stored, and 'best' only when clear."""
    import pandas as pd

    from toolkit.analysis.runner import run_analyses, with_dependencies
    from toolkit.plugin.registry import load_registry
    from toolkit.plugins.analyses.backbone_comparison import clear_winner
    from toolkit.store import Store
    from toolkit.testing import synthetic_run

    registry = load_registry()
    store = Store.open(":memory:")
    run = synthetic_run(store, n_images=96)
    analyses = with_dependencies([registry.analyses["backbone_comparison"]], registry.analyses)
    outcomes = run_analyses(store, run.run_id, run.sets, analyses, {"probe": {"bootstrap": 200},
                                                                    "backbone_comparison": {"bootstrap": 200}})
    assert [(o.analysis, o.status) for o in outcomes][-1] == ("backbone_comparison", "ok")
    table = store.results.run_results(run.run_id, "backbone_comparison")
    assert sorted(table["metric"]) == ["balanced_accuracy", "roc_auc"]
    row = table[table["metric"] == "balanced_accuracy"].iloc[0]
    assert (row["backbone_a"], row["backbone_b"]) == ("alpha", "beta")
    assert np.isclose(row["diff"], row["value_a"] - row["value_b"]) and row["ci_low"] <= row["diff"] <= row["ci_high"]
    comparison = pd.DataFrame({"metric": "balanced_accuracy", "backbone_a": ["a", "a", "b"], "backbone_b": ["b", "c", "c"],
                               "ci_low": [0.01, 0.02, -0.05], "ci_high": [0.10, 0.20, 0.05]})
    assert clear_winner(comparison, "balanced_accuracy") == "a"
    comparison.loc[0, "ci_low"] = -0.01  # a vs b now includes 0
    assert clear_winner(comparison, "balanced_accuracy") is None


def test_a_perfect_result_gets_an_exact_interval_not_a_point():
    """Issue #16, item 3: 'AUC 1.00 (1.00–1.00)' from 8 patients; a perfect proportion gets the
    Clopper–Pearson bound on the number of patients, and no interval has zero width."""
    from scipy.stats import beta

    patients = np.repeat(np.arange(8), 4)
    y_true = (np.arange(8) % 2)[patients]
    proba = np.eye(2)[y_true] * 0.9 + 0.05
    rows = metric_rows(OutOfFold("label", "patient", ["benign", "malignant"], y_true, proba, 4), patients, 200, 0)
    assert (rows["ci_high"] > rows["ci_low"]).all(), "a zero-width interval"
    ba = rows[rows["metric"] == "balanced_accuracy"].iloc[0]
    assert ba["value"] == 1.0 and ba["ci_method"] == "clopper-pearson"
    assert np.isclose(ba["ci_low"], beta.ppf(0.025, 8, 1)) and ba["ci_high"] == 1.0  # exact, 8 patients
    sensitivity = rows[rows["metric"] == "sensitivity"].iloc[0]
    assert np.isclose(sensitivity["ci_low"], beta.ppf(0.025, 4, 1))  # the 4 malignant patients


def test_probe_fits_converge_and_record_their_tolerance():
    """Issue #16, item 11: the solver's default tolerance moved out-of-fold probabilities by up to 0.016;
    a fold's probabilities now equal a fully converged fit's to 1e-4, and the tolerance is stored."""
    import toolkit.analysis.evaluation as evaluation

    context = synthetic_context(n_patients=60, per_patient=10, dim=512, signal=0.3)
    x = np.asarray(context.embeddings, dtype=np.float64)
    y = (context.metadata["label"] == "malignant").to_numpy().astype(int)
    train, test = np.flatnonzero(np.arange(len(y)) % 5 != 0), np.flatnonzero(np.arange(len(y)) % 5 == 0)
    fitted = evaluation.fold_proba(x, y, train, test, 2, 0.1)
    from sklearn.linear_model import LogisticRegression

    fit_rows, test_rows = x[train].copy(), x[test].copy()
    evaluation.standardise(fit_rows, test_rows)
    converged = LogisticRegression(C=0.1, tol=1e-12, max_iter=100_000).fit(fit_rows, y[train]).predict_proba(test_rows)
    assert np.abs(fitted - converged).max() < 1e-4
    main = next(r.data for r in probe(synthetic_context(dim=24, settings=ProbeSettings(bootstrap=50))) if getattr(r, "name", "") == "main")
    assert set(main["solver_tol"]) == {evaluation.SOLVER_TOL}


def test_the_breakhis_protocol_probes_40x_images_of_its_four_subtypes_over_repeated_splits():
    """Issue #16: --set probe.protocol=breakhis-40x-4class gives a number comparable with published
    linear-probe results, and the store says which protocol made each row."""
    context = synthetic_context(n_patients=32, per_patient=8, dim=24, signal=2.0, settings=ProbeSettings(
        bootstrap=50, protocol="breakhis-40x-4class"))
    meta = context.metadata
    meta["subtype"] = meta["subtype"].replace({"adenosis": "tubular_adenoma", "lobular_carcinoma": "mucinous_carcinoma"})
    results = probe(context)
    main = next(r.data for r in results if getattr(r, "name", "") == "main")
    published = main[main["protocol"] == "breakhis-40x-4class"]
    assert set(main["protocol"]) == {"patient-cv", "breakhis-40x-4class"}
    assert len(published) == 1 and published["target"].iloc[0] == "subtype"
    row = published.iloc[0]
    assert row["n_repeats"] == 5 and 0 <= row["sd"] < 0.5 and 0.25 < row["value"] <= 1
    finding = next(r for r in results if getattr(r, "message", "").startswith("Protocol breakhis-40x-4class"))
    assert "over 5 repeated patient splits" in finding.message
    meta["magnification"] = 100  # no 40x image: the protocol cannot run, and says so
    skipped = probe(context)
    assert any("Not probed under breakhis-40x-4class" in getattr(r, "message", "") for r in skipped)
