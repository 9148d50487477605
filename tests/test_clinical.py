"""Clinical variables (issue #21 A): manifest extra columns and ``--clinical`` CSVs are kept, typed,
stored per run and analysed (grouping of ttest/anova, Spearman + BH, the patient-split probe)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tests.conftest import STAND_IN, tk
from tests.datasets import make_breakhis
from toolkit.errors import TkError
from toolkit.ingest.clinical import attach_clinical, infer_kind, parse_overrides
from toolkit.ingest.sources import find_images
from toolkit.plugin.results import Finding, SkipAnalysis, Table
from toolkit.plugin.types import AnalysisContext
from toolkit.plugins.analyses.clinical import clinical, spearman


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def manifest(tmp_path: Path, extra: dict[str, list[object]]) -> Path:
    """A manifest of 12 images of 6 patients (two each) with ``extra`` columns."""
    paths = make_breakhis(tmp_path / "images", patients=1, magnifications=(40,), per_magnification=3)[:12]
    rows = [[p.relative_to(tmp_path).as_posix(), "benign" if i < 6 else "malignant", f"p{i // 2}",
             *[values[i] for values in extra.values()]] for i, p in enumerate(paths)]
    return write_csv(tmp_path / "manifest.csv", ["path", "label", "patient_id", *extra], rows)


def load(path: Path, clinical_csv: Path | None = None, overrides: list[str] = ()):
    kind, _, records, _ = find_images(path)
    return attach_clinical(records, clinical_csv, parse_overrides(list(overrides)), path if kind == "manifest" else None)


EXTRA = {
    "er_status": ["pos", "pos", "neg", "neg", "pos", "pos", "neg", "neg", "pos", "pos", "NA", "NA"],
    "age": [51, 51, 63, 63, 47.5, 47.5, 70, 70, "", "", 39, 39],
    "ki67": [5, 9, 12, 30, 1, 2, 44, 41, 8, 7, 3, 6],  # varies within patients: image level
    "notes": [f"patient seen on day {i} by dr {i}" for i in range(12)],
    "surname": ["Smith", "Smith", "Jones", "Jones", "Brown", "Brown", "Smith", "Smith", "Jones", "Jones", "Lee", "Lee"],
}


def test_manifest_extra_columns_are_kept_typed_and_free_text_refused(tmp_path):
    records, data = load(manifest(tmp_path, EXTRA))
    columns = {c.name: (c.kind, c.level, c.source) for c in data.columns}
    assert columns == {"er_status": ("categorical", "patient", "manifest"), "age": ("numeric", "patient", "manifest"),
                       "ki67": ("numeric", "image", "manifest")}
    assert [r.clinical for r in records[:3]] == [{"ki67": 5.0}, {"ki67": 9.0}, {"ki67": 12.0}]  # image-level only
    assert data.patient_values["age"] == {"p0": 51.0, "p1": 63.0, "p2": 47.5, "p3": 70.0, "p4": None, "p5": 39.0}
    assert data.patient_values["er_status"]["p5"] is None  # NA is missing, not a level
    notes, surname = data.warnings
    assert "'notes'" in notes and "free text" in notes and "--clinical-type notes=categorical" in notes
    assert "'surname'" in surname and "free text" in surname  # Lee is one patient's, though on two images


def test_clinical_type_overrides_keep_drop_and_retype_columns(tmp_path):
    path = manifest(tmp_path, EXTRA)
    _, data = load(path, overrides=["notes=categorical", "age=categorical", "ki67=drop", "surname=drop"])
    assert {c.name: c.kind for c in data.columns} == {"er_status": "categorical", "age": "categorical",
                                                      "notes": "categorical"}
    assert data.patient_values["age"]["p2"] == "47.5"  # categorical values are the text as written
    assert any("'ki67' dropped" in w for w in data.warnings)
    with pytest.raises(TkError, match="--clinical-type grade: no such clinical column"):
        load(path, overrides=["grade=numeric"])
    with pytest.raises(TkError, match="KIND one of categorical, numeric, drop"):
        parse_overrides(["age=number"])
    with pytest.raises(TkError, match="'er_status' is set numeric but holds 'pos'"):
        load(path, overrides=["er_status=numeric"])


@pytest.mark.parametrize("values, patients, kind", [
    (["1", "2.5", "", "-3e2"], None, "numeric"),
    (["a", "b", "a", "b", "NA"], None, "categorical"),
    (["a", "b", "a", "c"], None, "free_text"),  # c is seen once
    ([str(i) + "x" for i in range(30)] * 2, None, "free_text"),  # more than 20 levels
    (["a", "a", "b", "b"], ["p1", "p2", "p3", "p3"], "free_text"),  # b is one patient's
    (["a", "a", "b", "b"], ["p1", "p2", "p3", "p4"], "categorical"),
])
def test_type_inference_rule(values, patients, kind):
    assert infer_kind(values, patients) == kind


def test_columns_named_like_core_metadata_are_refused(tmp_path):
    with pytest.raises(TkError, match="clinical column 'sha256' has the name of a core metadata column"):
        load(manifest(tmp_path, {"sha256": ["x"] * 12}))
    tree = tmp_path / "tree"
    make_breakhis(tree)
    bad = write_csv(tmp_path / "clinical.csv", ["patient_id", "magnification"], [["14-100", 40]])
    with pytest.raises(TkError, match="'magnification' has the name of a core metadata column"):
        load(tree, bad)


def test_clinical_csv_joins_by_patient_on_a_breakhis_tree(tmp_path):
    tree = tmp_path / "tree"
    make_breakhis(tree)  # patients 14-100, 14-101, 14-110, ..., 14-131
    table = write_csv(tmp_path / "clinical.csv", ["patient_id", "grade", "size"],
                      [["14-100", "G1", 10], ["14-101", "G1", 12], ["14-110", "G2", 30], ["14-111", "G2", ""],
                       ["99-1", "G1", 5], ["99-2", "G2", 6]])  # two patients not in the data, six without a row
    records, data = load(tree, table)
    assert len(records) == 32  # no image dropped for lacking clinical values
    assert {c.name: (c.kind, c.level, c.source) for c in data.columns} == {
        "grade": ("categorical", "patient", "clinical.csv"), "size": ("numeric", "patient", "clinical.csv")}
    assert data.patient_values["size"] == {"14-100": 10.0, "14-101": 12.0, "14-110": 30.0, "14-111": None}
    assert data.warnings == ["clinical.csv: 2 patients of the clinical CSV not in the data (ignored); check that "
                             "its patient_id values match the images'"]


def test_spearman_matches_scipy_with_ties_and_constant_columns():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(25, 6))
    x[:, 2] = np.round(x[:, 2])  # ties
    x[:, 5] = 1.0  # constant
    y = x[:, 0] + rng.normal(size=25)
    y[:4] = y[0]  # ties in y too
    rho, p = spearman(x, y)
    for j in range(5):
        expected = stats.spearmanr(x[:, j], y)
        assert rho[j] == pytest.approx(expected.statistic, abs=1e-12)
        assert p[j] == pytest.approx(expected.pvalue, rel=1e-9)
    assert np.isnan(rho[5])


def synthetic_context(seed: int = 0, n_patients: int = 40, per_patient: int = 3, dim: int = 24) -> AnalysisContext:
    """Patients whose mean embedding carries a numeric ``signal`` along feature 3 and a categorical
    ``marker`` along feature 5; ``noise`` and ``coin`` are unrelated to the images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_patients, dim))
    centres[:, 5] += np.where(centres[:, 5] > 0, 1.0, -1.0)  # the two marker groups lie apart along feature 5
    x = np.repeat(centres, per_patient, axis=0) + 0.3 * rng.normal(size=(n_patients * per_patient, dim))
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    per_image = lambda values: np.repeat(values, per_patient)  # noqa: E731
    metadata = pd.DataFrame({
        "image_id": np.arange(len(x)), "sha256": [f"sha{i}" for i in range(len(x))], "patient_id": patients,
        "label": "benign", "subtype": None, "magnification": 40,
        "signal": per_image(2.0 * centres[:, 3] + 0.3 * rng.normal(size=n_patients)),
        "noise": per_image(rng.normal(size=n_patients)),
        "marker": per_image(np.where(centres[:, 5] > 0, "high", "low")).astype(object),
        "coin": per_image(rng.choice(["heads", "tails"], n_patients)).astype(object)})
    return AnalysisContext("run", "synthetic", x.astype(np.float32), metadata, {}, seed=seed,
                           clinical_columns={"signal": "numeric", "noise": "numeric", "marker": "categorical",
                                             "coin": "categorical"})


def by_name(results: list, name: str) -> pd.DataFrame:
    return next(r.data for r in results if isinstance(r, Table) and r.name == name)


def test_clinical_probe_finds_a_planted_signal_and_not_noise():
    results = clinical(synthetic_context())
    probe = by_name(results, "probe").set_index("variable")
    assert probe.loc["signal", "model"] == "ridge" and probe.loc["signal", "value"] > 0.6
    assert probe.loc["noise", "value"] < 0.1
    assert probe.loc["marker", "model"] == "logistic" and probe.loc["marker", "value"] > 0.8
    assert probe.loc["marker", "ci_low"] > probe.loc["marker", "chance"] == 0.5
    assert probe.loc["coin", "ci_low"] < 0.5 < probe.loc["coin", "ci_high"]
    assert set(probe["n_patients"]) == {40} and set(probe["level"]) == {"patient"}
    main = by_name(results, "main")
    signal = main[main["variable"] == "signal"].set_index("feature")
    assert signal["rho"].abs().idxmax() == 3 and signal.loc[3, "q_val"] < 1e-6
    assert (main[main["variable"] == "noise"]["q_val"] > 0.05).sum() >= 22  # at most 2 of 24 false positives
    assert {f.message.split(":")[0] for f in results if isinstance(f, Finding)} >= {"signal", "noise", "marker", "coin"}


def test_clinical_skips_without_clinical_columns_and_says_how_to_add_them():
    context = synthetic_context()
    context.clinical_columns = {}
    with pytest.raises(SkipAnalysis, match="--clinical clinical.csv"):
        clinical(context)


@dataclass
class ClinicalRun:
    store: Path
    report: Path
    report_without: Path  # the first run's, which had no clinical variables
    stderr: str
    patient_means: pd.DataFrame  # per patient: feature columns 0..15
    table: pd.DataFrame  # the clinical CSV as written


@pytest.fixture(scope="module")
def clinical_run(tmp_path_factory) -> ClinicalRun:
    """A BreakHis-layout tree of 16 patients embedded once; then a --clinical CSV with er_status (built
    to differ along feature 7), tumour_size (tracks feature 3) and notes (free text) and a second
    run that groups ttest and anova by er_status."""
    root = tmp_path_factory.mktemp("clinical-run")
    data = root / "breast"
    make_breakhis(data, patients=4)
    store, env = root / "tk.duckdb", {"TK_CACHE_DIR": str(root / "cache"), "TK_LOAD_PLUGINS": ""}
    common = ("--backbone", "stand_in", "--weights", "random", "--store", store, "--plugin", STAND_IN)
    first = tk("run", data, *common, "--analysis", "none", "--out", root / "first", env=env)
    assert first.exit_code == 0, first.stderr
    means = patient_means(store)
    rng = np.random.default_rng(0)
    f3, f7 = means[3].to_numpy(), means[7].to_numpy()
    table = pd.DataFrame({"patient_id": means.index,
                          "er_status": np.where(f7 > np.median(f7), "positive", "negative"),
                          "tumour_size": np.round(30 + 10 * (f3 - f3.mean()) / f3.std() + rng.normal(0, 2, len(f3)), 3),
                          "notes": [f"seen by dr {i} on day {3 * i}" for i in range(len(f3))]})
    table.loc[0, "tumour_size"] = np.nan  # a patient without a value keeps its images
    table = table.drop(index=1)  # a patient missing from the CSV
    csv_rows = [*table.astype(object).where(table.notna(), "").values.tolist(), ["99-999", "negative", 1.0, "x"]]
    clinical_csv = write_csv(root / "clinical.csv", list(table.columns), csv_rows)
    second = tk("run", data, *common, "--out", root / "out", "--clinical", clinical_csv,
                "--analysis", "ttest,anova,clinical", "--set", "ttest.grouping=er_status",
                "--set", "anova.factors=er_status,magnification", env=env)
    assert second.exit_code == 0, second.stderr
    [report] = (root / "out").glob("tk-report-*.html")
    [without] = (root / "first").glob("tk-report-*.html")
    return ClinicalRun(store, report, without, second.stderr, means, table.set_index("patient_id"))


def patient_means(store: Path) -> pd.DataFrame:
    con = duckdb.connect(str(store), read_only=True)
    rows = con.execute("SELECT i.patient_id, e.vector FROM embeddings_stand_in e JOIN images i USING (image_id)").fetchall()
    con.close()
    frame = pd.DataFrame([v for _, v in rows], index=[p for p, _ in rows], dtype=np.float64)
    return frame.groupby(level=0).mean()


def test_clinical_tables_are_stored_per_run_and_free_text_is_refused(clinical_run):
    con = duckdb.connect(str(clinical_run.store), read_only=True)
    run_id = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    columns = con.execute("SELECT name, kind, level, source FROM clinical_columns WHERE run_id = ?", [run_id]).fetchall()
    assert sorted(columns) == [("er_status", "categorical", "patient", "clinical.csv"),
                               ("tumour_size", "numeric", "patient", "clinical.csv")]
    assert "clinical column 'notes' looks like free text" in clinical_run.stderr
    assert "1 patient of the clinical CSV not in the data" in clinical_run.stderr
    stored = con.execute("SELECT count(*) FROM clinical WHERE run_id = ? AND name = 'notes'", [run_id]).fetchone()
    assert stored == (0,)
    assert con.execute("SELECT count(*) FROM run_images WHERE run_id = ?", [run_id]).fetchone() == (64,)
    per_image = con.execute("""SELECT i.patient_id, c.name, c.value_num, c.value_text FROM clinical c
                               JOIN images i USING (image_id) WHERE c.run_id = ?""", [run_id]).df()
    sizes = per_image[per_image["name"] == "tumour_size"].groupby("patient_id")["value_num"].agg(["first", "size"])
    expected = clinical_run.table["tumour_size"].dropna()
    assert sizes["first"].to_dict() == pytest.approx(expected.to_dict())
    assert set(sizes["size"]) == {4}  # every image of a patient carries its patient's value
    assert len(per_image[per_image["name"] == "er_status"]) == 15 * 4  # one patient had no row: no values
    con.close()


def test_ttest_grouped_by_a_clinical_column_gives_scipy_welch_at_patient_level(clinical_run):
    con = duckdb.connect(str(clinical_run.store), read_only=True)
    rows = con.execute("""SELECT feature, t, p_val, n_a, n_b, group_a, group_b FROM results_ttest
                          WHERE grouping = 'er_status' AND level = 'patient' ORDER BY feature""").df()
    con.close()
    groups = clinical_run.table["er_status"]
    means = clinical_run.patient_means
    negative, positive = means.loc[groups.index[groups == "negative"]], means.loc[groups.index[groups == "positive"]]
    assert (rows["group_a"].iloc[0], rows["group_b"].iloc[0]) == ("negative", "positive")
    assert (rows["n_a"].iloc[0], rows["n_b"].iloc[0]) == (len(negative), len(positive))
    for row in rows.itertuples():
        welch = stats.ttest_ind(positive[row.feature], negative[row.feature], equal_var=False)
        assert row.t == pytest.approx(welch.statistic, rel=1e-8)
        assert row.p_val == pytest.approx(welch.pvalue, rel=1e-6)
    assert rows.set_index("feature").loc[7, "p_val"] < 0.01  # er_status was built along feature 7


def test_anova_factors_take_clinical_columns(clinical_run):
    con = duckdb.connect(str(clinical_run.store), read_only=True)
    factors = con.execute("SELECT DISTINCT factor, level FROM results_anova").fetchall()
    rm = con.execute("SELECT DISTINCT factor FROM results_anova_rm").fetchall()
    recorded = con.execute("SELECT settings FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    con.close()
    assert sorted(factors) == [("er_status", "image"), ("er_status", "patient"), ("magnification", "image")]
    assert rm == [("magnification",)]  # within patients: repeated measures, not a between-patient test
    analysis_settings = json.loads(recorded)["analysis_settings"]  # the list, as the run record keeps it
    assert analysis_settings["anova"] == {"tukey_top": 3, "factors": ["er_status", "magnification"]}
    assert analysis_settings["ttest"] == {"grouping": "er_status", "top_k": 20}


def test_spearman_at_patient_level_matches_scipy_on_the_planted_column(clinical_run):
    con = duckdb.connect(str(clinical_run.store), read_only=True)
    rows = con.execute("SELECT feature, n, rho, p_val, q_val FROM results_clinical WHERE variable = 'tumour_size'"
                       " ORDER BY feature").df()
    probe = con.execute("SELECT variable, model, metric, value, n FROM results_clinical_probe").df().set_index("variable")
    con.close()
    sizes = clinical_run.table["tumour_size"].dropna()
    means = clinical_run.patient_means.loc[sizes.index]
    assert set(rows["n"]) == {len(sizes)} == {14}
    for row in rows.itertuples():
        expected = stats.spearmanr(means[row.feature], sizes)
        assert row.rho == pytest.approx(expected.statistic, abs=1e-12)
        assert row.p_val == pytest.approx(expected.pvalue, rel=1e-9)
    assert rows.set_index("feature").loc[3, "rho"] > 0.8 and rows.set_index("feature").loc[3, "q_val"] < 0.01
    assert probe.loc["tumour_size", "model"] == "ridge" and probe.loc["er_status", "model"] == "logistic"


def test_report_has_a_clinical_section_without_patient_values(clinical_run, tmp_path):
    from tests.browser import open_page

    page = open_page(clinical_run.report, tmp_path / "report.png")
    assert 'id="clinical"' in page.dom and not page.console
    html = clinical_run.report.read_text()
    section = html[html.index('<section id="clinical"'):]
    section = section[:section.index("</section>")]
    assert "Clinical variables" in section and "tumour_size" in section and "er_status" in section
    assert "clinical column &#39;notes&#39; looks like free text" in section
    assert "1 patient of the clinical CSV not in the data" in section
    assert "seen by dr" not in html and "14-100" not in html


def test_report_without_clinical_variables_says_how_to_add_them(clinical_run):
    html = clinical_run.report_without.read_text()
    section = html[html.index('<section id="clinical"'):]
    assert "This run has no clinical variables" in section[:section.index("</section>")]
    assert "--clinical clinical.csv" in section[:section.index("</section>")]


def test_store_keeps_image_level_values_with_the_images_and_patient_values_per_patient(tmp_path):
    from toolkit.ingest.clinical import ClinicalColumn, ClinicalData
    from toolkit.ingest.scan import ScannedImage
    from toolkit.ingest.sources import ImageRecord
    from toolkit.store import Store

    images = [ScannedImage(ImageRecord(Path(f"/x/{i}.png"), f"{i}.png", "manifest", "benign", patient_id=f"p{i // 2}",
                                       clinical={"ki67": [5.0, None, 12.0, 30.0][i]}), f"sha{i}", 1, 0, 8, 8)
              for i in range(4)]
    data = ClinicalData([ClinicalColumn("ki67", "numeric", "image", "manifest"),
                         ClinicalColumn("grade", "categorical", "patient", "manifest")],
                        {"grade": {"p0": "G1", "p1": None}}, [])
    with Store.open(tmp_path / "tk.duckdb") as store:
        store.runs.start_run("r1", "test", {}, {})
        store.clinical.record_clinical("r1", data)
        store.images.add_images("r1", images)
        kinds, frame = store.clinical.run_clinical("r1")
        rows = store.con.execute("SELECT image_id, value_num FROM clinical_values ORDER BY image_id").fetchall()
        assert store.clinical.run_clinical("another run")[0] == {}
    assert kinds == {"ki67": "numeric", "grade": "categorical"}
    assert rows == [(1, 5.0), (3, 12.0), (4, 30.0)]  # a missing value has no row
    assert frame["ki67"].tolist()[0] == 5.0 and np.isnan(frame["ki67"].tolist()[1])
    assert frame["grade"].tolist() == ["G1", "G1", None, None]  # patient p1 has no grade


def test_anova_factors_refuse_unknown_and_numeric_columns():
    from toolkit.plugins.analyses.anova import AnovaSettings, anova

    context = synthetic_context()
    context.settings = AnovaSettings(factors=("marker", "bogus"))
    with pytest.raises(SkipAnalysis, match="'bogus' is not a metadata column.*marker, coin"):
        anova(context)
    context.settings = AnovaSettings(factors=("signal",))
    with pytest.raises(SkipAnalysis, match="'signal' is a numeric clinical column"):
        anova(context)
    context.settings = AnovaSettings(factors=("marker",))
    main = by_name(anova(context), "main")
    assert set(zip(main["factor"], main["level"])) == {("marker", "image"), ("marker", "patient")}
    assert main[(main["level"] == "patient") & (main["feature"] == 5)]["q_val"].iloc[0] < 1e-3


def test_ttest_on_a_within_patient_clinical_column_tests_images_only_and_says_why():
    from toolkit.plugins.analyses.ttest import TtestSettings, ttest

    context = synthetic_context()
    side = np.tile(["left", "right", "left"], 40)  # every patient has images on both sides
    context.metadata = context.metadata.assign(side=side)
    context.clinical_columns = {**context.clinical_columns, "side": "categorical"}
    context.settings = TtestSettings(grouping="side")
    results = ttest(context)
    assert set(by_name(results, "main")["level"]) == {"image"}
    assert any("side varies within patients" in f.message and "anova.factors=side" in f.message
               for f in results if isinstance(f, Finding))
    context.settings = TtestSettings(grouping="signal")
    with pytest.raises(SkipAnalysis, match="'signal' is a numeric clinical column"):
        ttest(context)
