"""`tk similar`: the query image itself ranks first; a new image is embedded on the fly."""

from __future__ import annotations

import numpy as np

from tests.conftest import STAND_IN, tk
from tests.datasets import tile


def test_similar_returns_the_image_itself_first(finished_run, finished_store):
    store, breakhis = finished_store, finished_run.data
    query = sorted(breakhis.rglob("SOB_M_DC-*.png"))[1]
    result = tk("similar", query, "--backbone", "stand_in", "-k", "5", "--store", store, "--format", "csv",
                "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "rank,image_id,relpath,label,subtype,similarity"
    assert len(lines) == 6
    first = lines[1].split(",")
    assert first[0] == "1" and first[2] == query.relative_to(breakhis).as_posix()
    assert abs(float(first[5]) - 1.0) < 1e-6
    similarities = [float(line.split(",")[5]) for line in lines[1:]]
    assert similarities == sorted(similarities, reverse=True)
    table = tk("similar", query, "--backbone", "stand_in", "-k", "1", "--store", store, "--plugin", STAND_IN,
               env={"COLUMNS": "80"})  # issue #17, item 12: the table hid the file behind 'malignant/SOB/…'
    assert table.exit_code == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert query.name.replace("-", "") in "".join(table.stdout.split()).replace("│", "").replace("-", "")


def test_similar_embeds_a_new_image(tmp_path, finished_store):
    store = finished_store
    outside = tmp_path / "new.png"
    tile(np.random.default_rng(99), True).save(outside)
    result = tk("similar", outside, "--backbone", "stand_in", "-k", "3", "--store", store, "--format", "json",
                "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    import json

    rows = json.loads(result.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["similarity"] < 1.0 - 1e-7 for r in rows)  # not stored, so no exact match


def test_similar_without_embeddings_says_what_to_do(finished_run, finished_store):
    store, breakhis = finished_store, finished_run.data
    result = tk("similar", next(breakhis.rglob("*.png")), "--backbone", "resnet50", "--store", store)
    assert result.exit_code == 1
    assert "run `tk run --backbone resnet50` first" in result.stderr
