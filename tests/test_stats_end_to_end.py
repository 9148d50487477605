"""`tk run` with the stand-in backbone stores the statistics suite under the documented contract."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from scipy import stats


TTEST_COLUMNS = {"run_id", "backbone", "grouping", "level", "feature", "t", "p_val", "q_val", "cohen_d"}
PROBE_COLUMNS = {"run_id", "backbone", "target", "split", "metric", "value", "ci_low", "ci_high"}


def test_tk_run_stores_statistics_that_sql_can_recompute(finished_run):
    con = duckdb.connect(str(finished_run.store), read_only=True)
    status = dict(con.execute("SELECT analysis, status FROM analysis_runs").fetchall())
    assert {status[a] for a in ("ttest", "anova", "correlation", "clustering", "probe", "integrity")} == {"ok"}
    assert status["cka"] == "skipped"  # one backbone
    columns = lambda table: {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}  # noqa: E731
    assert TTEST_COLUMNS <= columns("results_ttest") and PROBE_COLUMNS <= columns("results_probe")
    assert {r[0] for r in con.execute("SELECT DISTINCT level FROM results_ttest").fetchall()} == {"image", "patient"}
    assert {r[0] for r in con.execute("SELECT DISTINCT split FROM results_probe").fetchall()} == {"patient", "image"}
    assert set(con.execute("SELECT DISTINCT metric FROM results_probe").fetchall()) == {
        (m,) for m in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "patient_score")}

    feature, t_stored, p_stored = con.execute(
        "SELECT feature, t, p_val FROM results_ttest WHERE level = 'image' ORDER BY abs(t) DESC LIMIT 1").fetchone()
    rows = con.execute("""SELECT i.label, e.vector FROM embeddings_stand_in e JOIN images i USING (image_id)
                          JOIN run_images r USING (image_id)""").fetchall()
    labels = np.array([label for label, _ in rows])
    values = np.array([vector[feature] for _, vector in rows], dtype=np.float64)
    welch = stats.ttest_ind(values[labels == "malignant"], values[labels == "benign"], equal_var=False)
    assert t_stored == pytest.approx(welch.statistic, rel=1e-9)
    assert p_stored == pytest.approx(welch.pvalue, abs=1e-9)
