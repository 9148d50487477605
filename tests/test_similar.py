"""`tk similar`: the query image itself ranks first; a new image is embedded on the fly."""

from __future__ import annotations

import numpy as np

from tests.conftest import TINY, run_tk
from tests.datasets import tile


def test_similar_returns_the_image_itself_first(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    assert run_tk("run", breakhis, "--backbone", "tiny", "--store", store, "--export", "none",
                  "--analysis", "none", "--plugin", TINY).exit_code == 0
    query = sorted(breakhis.rglob("SOB_M_DC-*.png"))[1]
    result = run_tk("similar", query, "--backbone", "tiny", "-k", "5", "--store", store, "--format", "csv",
                    "--plugin", TINY)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "rank,image_id,relpath,label,subtype,similarity"
    assert len(lines) == 6
    first = lines[1].split(",")
    assert first[0] == "1" and first[2] == query.relative_to(breakhis).as_posix()
    assert abs(float(first[5]) - 1.0) < 1e-6
    similarities = [float(line.split(",")[5]) for line in lines[1:]]
    assert similarities == sorted(similarities, reverse=True)
    table = run_tk("similar", query, "--backbone", "tiny", "-k", "1", "--store", store, "--plugin", TINY,
                   env={"COLUMNS": "80"})  # issue #17, item 12: the table hid the file behind 'malignant/SOB/…'
    assert table.exit_code == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert query.name.replace("-", "") in "".join(table.stdout.split()).replace("│", "").replace("-", "")


def test_similar_embeds_a_new_image(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    assert run_tk("run", breakhis, "--backbone", "tiny", "--store", store, "--export", "none",
                  "--analysis", "none", "--plugin", TINY).exit_code == 0
    outside = tmp_path / "new.png"
    tile(np.random.default_rng(99), True).save(outside)
    result = run_tk("similar", outside, "--backbone", "tiny", "-k", "3", "--store", store, "--format", "json",
                    "--plugin", TINY)
    assert result.exit_code == 0, result.stderr
    import json

    rows = json.loads(result.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["similarity"] < 1.0 - 1e-7 for r in rows)  # not stored, so no exact match


def test_similar_without_embeddings_says_what_to_do(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    run_tk("run", breakhis, "--backbone", "tiny", "--store", store, "--export", "none", "--analysis", "none",
           "--plugin", TINY)
    result = run_tk("similar", next(breakhis.rglob("*.png")), "--backbone", "resnet50", "--store", store)
    assert result.exit_code == 1
    assert "run `tk run --backbone resnet50` first" in result.stderr
