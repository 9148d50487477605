"""What ``tk train`` keeps in the store: one row per training run, its per-epoch history, its
held-out metrics and, for an ablation, the paired differences. ``tk train`` owns these tables and
declares them here; the store creates them when they are first written."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.lazy import lazy_import
from toolkit.store import Store, TableSpec

if TYPE_CHECKING:
    from toolkit.models.training import TrainSettings

pd = lazy_import("pandas")

RUNS = TableSpec("training_runs", {
    "train_id": "VARCHAR", "backbone": "VARCHAR", "variant": "VARCHAR", "base_weights_id": "VARCHAR",
    "base_weights_kind": "VARCHAR", "ablation_id": "VARCHAR", "settings": "JSON", "classes": "JSON",
    "model_path": "VARCHAR", "model_sha256": "VARCHAR", "n_train_images": "INTEGER", "n_val_images": "INTEGER",
    "n_train_patients": "INTEGER", "n_val_patients": "INTEGER", "started_at": "TIMESTAMP",
    "finished_at": "TIMESTAMP", "status": "VARCHAR", "error": "VARCHAR", "dataset_fingerprint": "VARCHAR",
    "warnings": "JSON"},
    key=("train_id",))
HISTORY = TableSpec("training_history", {
    "train_id": "VARCHAR", "epoch": "INTEGER", "phase": "VARCHAR", "loss": "DOUBLE", "accuracy": "DOUBLE",
    "val_loss": "DOUBLE", "val_accuracy": "DOUBLE", "val_balanced_accuracy": "DOUBLE", "val_roc_auc": "DOUBLE",
    "learning_rate": "DOUBLE", "seconds": "DOUBLE"}, key=("train_id", "epoch"))
METRICS = TableSpec("training_metrics", {
    "train_id": "VARCHAR", "split": "VARCHAR", "metric": "VARCHAR", "class": "VARCHAR", "value": "DOUBLE",
    "ci_low": "DOUBLE", "ci_high": "DOUBLE"})
DIFFERENCES = TableSpec("training_differences", {
    "ablation_id": "VARCHAR", "factor": "VARCHAR", "train_a": "VARCHAR", "train_b": "VARCHAR", "metric": "VARCHAR",
    "class": "VARCHAR", "value_a": "DOUBLE", "value_b": "DOUBLE", "difference": "DOUBLE", "ci_low": "DOUBLE",
    "ci_high": "DOUBLE"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def records(frame: pd.DataFrame, **constant: Any) -> list[dict[str, Any]]:
    """The rows of ``frame`` as dicts (NaN as None), each with the ``constant`` columns added."""
    values = frame.astype(object)
    return [{**constant, **row} for row in values.where(values.notna(), None).to_dict("records")]


def record_start(store_path: Path, train_id: str, backbone: str, variant: str, ablation_id: str | None,
                 settings: TrainSettings, classes: list[str], dataset_fingerprint: str) -> None:
    with Store.open(store_path) as store:
        store.tables.insert_rows(RUNS, [{"train_id": train_id, "backbone": backbone, "variant": variant,
                                  "ablation_id": ablation_id, "settings": json.dumps(asdict(settings), default=str),
                                  "classes": json.dumps(classes), "started_at": utcnow(), "status": "running",
                                  "dataset_fingerprint": dataset_fingerprint}])


def record_failure(store_path: Path, train_id: str, error: str) -> None:
    with Store.open(store_path) as store:
        store.tables.update_rows(RUNS, {"status": "failed", "error": error, "finished_at": utcnow()},
                                 {"train_id": train_id})


def record_success(store_path: Path, train_id: str, finished: dict[str, Any], history: pd.DataFrame,
                   metrics: pd.DataFrame) -> None:
    """Mark the run ok with ``finished`` (weights, model file, image and patient counts) and store
    its history and metrics, in one transaction."""
    with Store.open(store_path) as store:
        for spec in (HISTORY, METRICS):
            store.tables.ensure_table(spec)
        with store.transaction():
            store.tables.update_rows(RUNS, {**finished, "finished_at": utcnow(), "status": "ok"},
                                     {"train_id": train_id})
            store.tables.insert_rows(HISTORY, records(history[list(HISTORY.columns)[1:]], train_id=train_id))
            store.tables.insert_rows(METRICS, records(metrics[list(METRICS.columns)[1:]], train_id=train_id))


def record_differences(store_path: Path, ablation_id: str, table: pd.DataFrame) -> None:
    with Store.open(store_path) as store:
        store.tables.insert_rows(DIFFERENCES, records(table[list(DIFFERENCES.columns)[1:]], ablation_id=ablation_id))
