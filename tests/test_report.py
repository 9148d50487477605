"""The HTML report: self-contained, loads in real Chromium without console errors or network,
escapes hostile metadata, hides patient ids, and re-renders from the store unchanged."""

from __future__ import annotations

import re
from html import unescape

import duckdb
import numpy as np
import pytest

from tests.browser import open_page
from tests.conftest import STAND_IN, TINY, FinishedRun, tk
from tests.datasets import make_breakhis, make_class_folders, tile

PAYLOAD_LABEL = "<script>console.log('XSS-LABEL')</script>"
PAYLOAD_SUBTYPE = "<img src=x onerror=console.log('XSS-SUBTYPE')>"
PAYLOAD_FILE = "<svg onload=console.log('XSS-FILE')>.png"
SQL_LABEL = "x'); DROP TABLE images; --"


def _report(out):
    reports = sorted(out.glob("tk-report-*.html"))
    assert len(reports) == 1
    return reports[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> FinishedRun:
    """One run of the tiny backbone on a BreakHis-layout tree with one broken file, shared by the tests
    below that only read its store and report."""
    root = tmp_path_factory.mktemp("tiny-run")
    data = root / "BreaKHis_v1" / "histology_slides" / "breast"
    make_breakhis(data)
    broken = data / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-100" / "40X" / "SOB_B_A-14-100-40-007.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    run = FinishedRun(data, root / "tk.duckdb", root / "out")
    result = tk("run", data, "--backbone", "tiny", "--store", run.store, "--out", run.out, "--plugin", TINY,
                env={"TK_CACHE_DIR": str(root / "cache"), "TK_LOAD_PLUGINS": ""})
    assert result.exit_code == 0, result.stderr
    return run


def test_report_loads_in_chromium_with_every_section(tmp_path, tiny_run):
    report = _report(tiny_run.out)
    html = report.read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp and unescape(csp.group(1)).startswith("default-src 'none';")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html), "external reference in the report"
    page = open_page(report, tmp_path / "report.png")
    assert page.console == []
    for anchor in ("summary", "comparison", "section-tiny", "dataset", "provenance", "glossary"):
        assert f'id="{anchor}"' in page.dom
    table = page.dom.split('class="comparison"', 1)[1].split("</tr>", 1)[0]  # columns contributed by plugins
    assert re.findall(r"<th>([^<]+)</th>", table) == [
        "Backbone", "Weights", "Features", "Silhouette (benign vs malignant)", "Features that differ (q &lt; 0.05, patient means)",
        "Balanced accuracy, new patients", "Patient score, new patients", "AUC, new patients", "Balanced accuracy, leaky split", "Images / s"]
    assert "The embeddings that best separate benign from malignant tissue come from" in page.dom  # the probe's
    assert "Integrity checks" in page.dom.split('id="dataset"', 1)[1]
    card = page.dom.split('id="model-card"', 1)[1].split("</section>", 1)[0]  # issue #16: the model card
    for item in ("Intended use", "Out of scope", "Data", "How it was tested", "Known limitations", "RANDOM"):
        assert item in card, item
    assert "whole patients held out" in card and "balanced accuracy" in card
    assert page.screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    gallery = page.dom.split('id="section-tiny-gradcam"', 1)[1].split('class="analysis"', 1)[0]
    assert "status-ok" in gallery and 'src="data:image/png;base64,' in gallery  # the Grad-CAM gallery
    assert "<script" not in page.dom


def test_report_escapes_hostile_metadata_and_nothing_executes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,label,subtype,patient_id"]
    for i in range(12):
        name = PAYLOAD_FILE if i == 0 else f"img{i}.png"
        tile(rng, i % 2 == 0).save(images / name)
        label = PAYLOAD_LABEL if i % 2 else SQL_LABEL
        rows.append(f'"images/{name}","{label}","{PAYLOAD_SUBTYPE}",p{i % 4}')
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    (images / "broken.png").write_bytes(b"not a png")
    rows.append('"images/broken.png","benign","a",p1')
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    result = tk("run", tmp_path / "m.csv", "--backbone", "stand_in", "--store", store, "--out", out,
                "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT DISTINCT label FROM images").fetchall()) == sorted([PAYLOAD_LABEL, SQL_LABEL])
    con.close()
    html = _report(out).read_text()
    assert PAYLOAD_LABEL not in html and PAYLOAD_SUBTYPE not in html and "<svg onload" not in html
    assert "&lt;script&gt;console.log(&#39;XSS-LABEL&#39;)&lt;/script&gt;" in html
    page = open_page(_report(out), tmp_path / "xss.png")
    assert page.console == []  # an executed or CSP-blocked payload would log here
    assert "XSS-" not in "".join(page.console)


def test_patient_ids_are_pseudonymised_unless_revealed(tmp_path, tiny_run):
    store = tiny_run.store
    con = duckdb.connect(str(store), read_only=True)
    patients = [r[0] for r in con.execute("SELECT DISTINCT patient_id FROM images").fetchall()]
    con.close()
    assert len(patients) == 8
    html = _report(tiny_run.out).read_text()
    assert not [p for p in patients if p in html]
    assert str(tiny_run.data) not in html and str(store.parent) not in html  # no absolute local paths
    assert re.search(r"P-[0-9a-f]{6}", html)  # the skipped file's path names the pseudonym instead
    revealed = tk("report", "--store", store, "--out", tmp_path / "b", "--reveal-ids", "--plugin", TINY)
    assert revealed.exit_code == 0, revealed.stderr
    assert all(p in _report(tmp_path / "b").read_text() for p in ["14-100"])


def test_tk_report_re_renders_the_same_file_from_the_store(tmp_path, tiny_run):
    again = tk("report", "--store", tiny_run.store, "--out", tmp_path / "b", "--plugin", TINY)
    assert again.exit_code == 0, again.stderr
    assert _report(tiny_run.out).read_text() == _report(tmp_path / "b").read_text()


def test_tk_report_never_shows_a_failed_run_as_finished_and_says_why_when_named(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    failed = tk("run", breakhis, "--backbone", "tiny", "--weights", "imagenet", "--store", store,
                "--out", tmp_path / "run", "--plugin", TINY)
    assert failed.exit_code == 1 and "tiny has no ImageNet weights" in failed.stderr
    latest = tk("report", "--store", store, "--out", tmp_path / "latest", "--plugin", TINY)
    assert latest.exit_code == 1, latest.stdout
    assert "no finished run" in latest.stderr and "tiny has no ImageNet weights" in latest.stderr
    assert not (tmp_path / "latest").exists()
    run_id = duckdb.connect(str(store), read_only=True).execute("SELECT run_id FROM runs").fetchall()[0][0]
    named = tk("report", run_id, "--store", store, "--out", tmp_path / "named", "--plugin", TINY)
    assert named.exit_code == 0, named.stderr
    html = _report(tmp_path / "named").read_text()
    assert 'id="unfinished-run"' in html and "This run failed" in html and "tiny has no ImageNet weights" in html
    assert "Nothing was analysed: the run stopped before any image was stored" in html
    for empty in ("We analysed 0 images", 'id="comparison"', 'id="dataset"', "Image source", "None ("):
        assert empty not in html, f"the failed run's report still shows {empty!r}"


def test_class_folders_without_patient_ids_say_patient_unknown_and_how_to_give_ids(tmp_path):
    data = make_class_folders(tmp_path / "slides")
    result = tk("run", data, "--backbone", "stand_in", "--weights", "random", "--analysis", "integrity,probe",
                "--store", tmp_path / "tk.duckdb", "--out", tmp_path / "out", "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", _report(tmp_path / "out").read_text())).split())
    assert "We analysed 12 images , patient unknown (6 benign, 6 malignant)" in text
    assert "0 patients" not in text and "nan%" not in text
    assert "different patients" not in text and "pairs of images of" not in text
    assert "a CSV manifest that has a patient_id column, or with tk run --patient-from REGEX" in text


def test_a_demo_run_says_its_data_are_synthetic(tmp_path):
    """Issue #17, item 9: the demo's report, with real-looking BreakHis patient ids and 100% scores,
    says that its images are generated; a report of real data does not."""
    import json

    from toolkit.plugin.registry import load_registry
    from toolkit.plugin.types import ExportContext
    from toolkit.store import Store
    from toolkit.testing import synthetic_run

    registry = load_registry()
    with Store.open(tmp_path / "tk.duckdb") as store:
        run = synthetic_run(store)
        [real] = registry.exporter("html").export(ExportContext(run.run_id, store, registry=registry), tmp_path / "real")
        store.con.execute("UPDATE runs SET settings = ?", [json.dumps({"demo": True})])
        [demo] = registry.exporter("html").export(ExportContext(run.run_id, store, registry=registry), tmp_path / "demo")
    assert 'id="synthetic-data"' in demo.read_text() and "Synthetic demo data" in demo.read_text()
    assert 'id="synthetic-data"' not in real.read_text()


def test_numbers_and_figures_read_for_people():
    """Issue #17, item 15: '1.66e+03', 'p_adj 0' and '7.1e-05 s' in the report; subtype boxes
    alphabetical, mixing benign and malignant; an integrity warning repeated per backbone unnamed."""
    from toolkit.plugins.analyses.ttest import by_class
    from toolkit.report.environment import format_number, make_environment

    assert format_number(1660.3) == "1,660" and format_number(0.25) == "0.25"
    env = make_environment(None)
    template = env.from_string('{% import "macros.html" as m %}{{ m.result_table(t) }}')
    html = template.render(t={"table_name": "results_x", "description": "", "columns": ["feature", "p_adj", "meandiff"],
                              "rows": [[1, 0.0, 0.0]], "n_rows": 1})
    assert "&lt; 1e-300" in html and html.count("<td") == 3
    assert by_class(np.array(["ductal", "adenosis", "lobular", "fibro"]),
                    np.array(["malignant", "benign", "malignant", "benign"])) == ["adenosis", "fibro", "ductal", "lobular"]


def test_dollar_signs_in_labels_are_drawn_as_text_not_parsed_as_math():
    """A label like ``$\\frac{`` made matplotlib's mathtext raise and PCA fail (issue #20, item 14)."""
    from types import SimpleNamespace

    import pandas as pd

    from toolkit.plugins.analyses.pca import _scatter

    labels = ["$\\frac{$", "cost $5 to $10"]
    meta = pd.DataFrame({"label": labels * 4, "subtype": [None] * 8})
    context = SimpleNamespace(metadata=meta, backbone="tiny")
    svg = _scatter(context, np.random.default_rng(0).normal(size=(8, 2)), np.array([0.6, 0.3])).content
    assert "$\\frac{$" in unescape(svg) and "cost $5 to $10" in unescape(svg)


def test_patient_ids_are_pseudonymised_in_the_data_with_a_store_secret_and_no_absolute_paths(tmp_path):
    """Issue #20, item 9: ids with HTML characters leaked in their escaped form, short numeric ids
    replaced digits across the page (``<h1>``), the pseudonym was sha256(run_id:id) and so reversible,
    and ``--store=/abs`` showed in the Command row."""
    import hashlib

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    patients = ["O'Brien", 'A&B<"x">', "1", "2", "14-13412"]
    rows = ["path,label,subtype,patient_id"]
    for i in range(15):
        tile(rng, i % 2 == 0).save(images / f"img{i}.png")
        rows.append(f'"images/img{i}.png",{"benign" if i % 2 else "malignant"},a,"{patients[i % 5]}"'.replace('"x"', '""x""'))
    (images / "img0-copy.png").write_bytes((images / "img0.png").read_bytes())  # a conflict: the integrity table
    rows.append('"images/img0-copy.png",malignant,a,"14-13412"')
    (images / "O'Brien-scan.png").write_bytes(b"not a png")  # a skipped file naming a patient
    rows.append('"images/O\'Brien-scan.png",benign,a,"O\'Brien"')
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    result = tk("run", tmp_path / "m.csv", "--backbone", "stand_in", "--analysis", "integrity", f"--store={store}",
                f"--out={out}", "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT DISTINCT patient_id FROM images").fetchall()) == sorted(patients)
    run_id = con.execute("SELECT run_id FROM runs").fetchall()[0][0]
    con.close()
    html = _report(out).read_text()
    for patient in ["O'Brien", "O&#39;Brien", "A&amp;B", "&lt;&#34;x&#34;&gt;", "14-13412"]:
        assert patient not in html, patient
    assert "<h1>" in html and "</h1>" in html and "<hP-" not in html  # short ids touch no markup
    old_scheme = ["P-" + hashlib.sha256(f"{run_id}:{p}".encode()).hexdigest()[:6] for p in patients]
    assert not [p for p in old_scheme if p in html]  # not recoverable from the run id
    assert re.search(r"<code>images/P-[0-9a-f]{10}-scan\.png</code>", html)  # the skipped file
    assert len(set(re.findall(r">P-[0-9a-f]{10}</td>", html))) == 2  # the integrity conflict's patient_id cells
    assert re.search(r'"finding warning">1 identical files appear 2 times', html)  # counts are not ids "1", "2"
    assert str(tmp_path) not in html  # --store=/abs and --out=/abs included
    revealed = tk("report", f"--store={store}", "--out", tmp_path / "b", "--reveal-ids", "--plugin", STAND_IN)
    assert revealed.exit_code == 0, revealed.stderr
    assert "O&#39;Brien" in _report(tmp_path / "b").read_text()


def test_plugin_section_tables_and_paragraphs_show_pseudonyms():
    """Issue #20, item 9: plugin sections' tables and texts are pseudonymised like the core's."""
    import pandas as pd

    from toolkit.plugin.results import Table
    from toolkit.plugin.sections import ReportSection
    from toolkit.report.data import Pseudonyms
    from toolkit.report.environment import make_environment
    from toolkit.report.sections import render

    pseudonyms = Pseudonyms(["O'Brien"], b"k" * 32, "run-1")
    section = ReportSection("Cohort", paragraphs=["O'Brien has 2 images"],
                            tables=[Table("patients", pd.DataFrame({"patient_id": ["O'Brien"], "n": [2]}))])
    [view] = render([section], make_environment(None), pseudonyms)["slots"]["appendix"]
    assert view["paragraphs"] == [pseudonyms("O'Brien") + " has 2 images"]
    assert view["tables"][0]["rows"] == [[pseudonyms("O'Brien"), 2]]


PATIENT_PLUGIN = '''
import pandas as pd

from toolkit import hookimpl
from toolkit.plugin.results import Figure, Finding, Table, patient_ref
from toolkit.plugin.types import Analysis, Needs


def per_patient(context):
    meta = context.metadata
    first = meta.groupby("patient_id").first().reset_index()
    rows = pd.DataFrame({"patient_id": first["patient_id"], "relpath": first["relpath"],
                         "note": [f"{patient_ref(p)} in 2 groups" for p in first["patient_id"]]})
    return [Table("main", rows, "One row per patient"),
            Finding("; ".join(f"patient {patient_ref(p)}: {n} images" for p, n in meta["patient_id"].value_counts(
                sort=False).sort_index().items())),
            Figure("dots", "<svg xmlns='http://www.w3.org/2000/svg'/>", alt=f"dots of {patient_ref('12')}",
                   caption=f"{patient_ref('1')} at left, 12 dots")]


@hookimpl
def register_analyses(register):
    register(Analysis(name="per_patient", run=per_patient, needs=Needs(min_samples=2), title="Per patient"))
'''


def test_short_patient_ids_never_show_raw_where_ids_appear(tmp_path):
    """Ids of 1-3 digits ("1", "2", "12") were not pseudonymised in free text (they cannot be told from
    counts) nor in file paths; and with pandas' string columns no text cell of a table was (a BreakHis
    id in a relpath showed raw). Analyses now mark the ids they write (``patient_ref``), and paths are
    searched for every id (issue #20, limits)."""
    from toolkit.report.data import Pseudonyms

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    patients = ["1", "2", "12", "14-13412"]
    rows = ["path,label,subtype,patient_id"]
    for i in range(8):
        folder = images / f"patient_{patients[i % 4]}"
        folder.mkdir(parents=True, exist_ok=True)
        tile(rng, i % 2 == 0).save(folder / f"scan_{i}.png")
        rows.append(f"{(folder / f'scan_{i}.png').relative_to(tmp_path)},{'benign' if i % 2 else 'malignant'},a,"
                    f"{patients[i % 4]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    plugin = tmp_path / "patient_plugin.py"
    plugin.write_text(PATIENT_PLUGIN)
    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    result = tk("run", tmp_path / "m.csv", "--backbone", "stand_in", "--analysis", "per_patient", f"--store={store}",
                f"--out={out}", "--plugin", STAND_IN, "--plugin", plugin)
    assert result.exit_code == 0, result.stderr
    with duckdb.connect(str(store), read_only=True) as con:
        run_id = con.execute("SELECT run_id FROM runs").fetchall()[0][0]
        secret = bytes.fromhex(con.execute("SELECT value FROM store_secrets").fetchall()[0][0])
    shown = Pseudonyms(patients, secret, run_id)
    html = unescape(_report(out).read_text())
    section = html.split('id="section-stand_in-per_patient"', 1)[1].split("</section>", 1)[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    for patient in patients:
        assert f"patient {shown(patient)}: 2 images" in section
        assert cells.count(shown(patient)) == 1 and cells.count(f"{shown(patient)} in 2 groups") == 1
        assert f"images/patient_{shown(patient)}/scan_" in section  # a path column: the folder names the id
    assert not set(patients) & set(cells) and "14-13412" not in html
    assert f'alt="dots of {shown("12")}"' in section and f"{shown('1')} at left, 12 dots" in section  # counts stay
    assert "⟦" not in html and "patient:" not in html
    revealed = tk("report", f"--store={store}", "--out", tmp_path / "b", "--reveal-ids", "--plugin", STAND_IN,
                  "--plugin", plugin)
    assert revealed.exit_code == 0, revealed.stderr
    plain = unescape(_report(tmp_path / "b").read_text())
    assert "patient 12: 2 images" in plain and ">1 in 2 groups</td>" in plain and "⟦" not in plain
