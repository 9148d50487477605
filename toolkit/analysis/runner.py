"""The analysis runner: checks each analysis' needs, runs it, stores results or the failure."""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from toolkit.plugin.types import Analysis, AnalysisContext, Needs
from toolkit.plugin.results import SkipAnalysis, validate_results
from toolkit.store import EmbeddingSet, Store

ALL_BACKBONES = ""  # the backbone column of analyses that see every backbone at once


@dataclass(frozen=True)
class Outcome:
    """How one analysis went for one backbone."""

    analysis: str
    backbone: str
    status: str  # "ok", "skipped" or "failed"
    message: str
    seconds: float
    reused_from: str | None = None  # the run whose stored results were reused


def unmet_need(needs: Needs, metadata: pd.DataFrame) -> str | None:
    """Why the data cannot support an analysis with ``needs``, or None when it can."""
    if len(metadata) < needs.min_samples:
        return f"needs at least {needs.min_samples} images, the run has {len(metadata)}"
    if needs.labels:
        labels = metadata["label"]
        if labels.isna().any():
            return f"needs a label for every image; {int(labels.isna().sum())} have none"
        if labels.nunique() < needs.min_groups:
            return f"needs at least {needs.min_groups} label groups, found {labels.nunique()}"
    if needs.patients:
        patients = metadata["patient_id"]
        if patients.isna().any():
            return f"needs a patient_id for every image; {int(patients.isna().sum())} have none"
        if patients.nunique() < 2:
            return "needs at least 2 patients"
    return None


def _read_only(array: np.ndarray) -> np.ndarray:
    array = array.view()
    array.flags.writeable = False
    return array


def run_analyses(store: Store, run_id: str, sets: dict[str, EmbeddingSet], analyses: list[Analysis],
                 settings: dict[str, Any], seed: int = 0,
                 on_outcome: Callable[[Outcome], None] = lambda outcome: None) -> list[Outcome]:
    """Run every analysis on every backbone of the run (or once on all); one failure stops nothing."""
    loaded = {name: store.run_embeddings(run_id, embedding_set) for name, embedding_set in sets.items()}
    if not loaded:
        return []
    metadata = next(iter(loaded.values()))[0]
    all_embeddings = {name: _read_only(matrix) for name, (meta, matrix) in loaded.items()
                      if meta["image_id"].equals(metadata["image_id"])}
    data_keys = {name: _data_key([sets[name].table], meta) for name, (meta, _) in loaded.items()}
    data_keys[ALL_BACKBONES] = _data_key(sorted(sets[name].table for name in all_embeddings), metadata)
    outcomes: list[Outcome] = []
    for analysis in analyses:
        targets = [ALL_BACKBONES] if analysis.needs.all_backbones else list(loaded)
        for backbone in targets:
            meta = metadata if backbone == ALL_BACKBONES else loaded[backbone][0]
            context = AnalysisContext(
                run_id=run_id, backbone=backbone or None,
                embeddings=None if backbone == ALL_BACKBONES else _read_only(loaded[backbone][1]),
                metadata=meta.copy(), all_embeddings=all_embeddings, con=store.con.cursor(),
                settings=dict(settings), seed=seed)
            key = cache_key(analysis, data_keys[backbone], settings, seed)
            source = store.reusable_results(key)
            if source is not None:
                status, message, seconds = store.copy_results(source, run_id, analysis.name, backbone)
                outcome = Outcome(analysis.name, backbone or "all", status, message, seconds, reused_from=source)
            else:
                outcome = _run_one(store, analysis, context, backbone, key)
            outcomes.append(outcome)
            on_outcome(outcome)
    return outcomes


UNCACHED_SETTINGS = ("plugins", "analysis_timeout")


def _data_key(tables: list[str], metadata: pd.DataFrame) -> str:
    """Identity of what an analysis reads: the embedding tables and every metadata value, in order."""
    digest = hashlib.sha256("|".join(tables).encode())
    digest.update(pd.util.hash_pandas_object(metadata.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def cache_key(analysis: Analysis, data_key: str, settings: dict[str, Any], seed: int) -> str:
    """Results can be reused when the analysis' code, its data, the settings and the seed are the same.

    The code is identified by the source file of ``analysis.run`` (any edit invalidates the cache).
    """
    try:
        code = hashlib.sha256(Path(inspect.getsourcefile(analysis.run) or "").read_bytes()).hexdigest()
    except (OSError, TypeError):
        code = f"uncacheable-{time.time_ns()}"  # no source file (built in a notebook, a lambda...)
    relevant = {k: v for k, v in settings.items() if k not in UNCACHED_SETTINGS}
    text = json.dumps([analysis.name, code, data_key, relevant, seed], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AnalysisTimeout(Exception):
    """An analysis ran longer than ``--analysis-timeout``."""


def _call(analysis: Analysis, context: AnalysisContext) -> Any:
    """``analysis.run(context)``, given up after ``settings["analysis_timeout"]`` seconds if set.

    Python cannot stop a running thread: a timed-out analysis is abandoned (daemon thread, its own
    database cursor) and whatever it returns later is ignored.
    """
    timeout = context.settings.get("analysis_timeout")
    if not timeout:
        return analysis.run(context)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = analysis.run(context)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"analysis-{analysis.name}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AnalysisTimeout(f"took longer than {timeout:g} s (--analysis-timeout) and was abandoned")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _run_one(store: Store, analysis: Analysis, context: AnalysisContext, backbone: str,
             key: str | None = None) -> Outcome:
    started = time.perf_counter()
    results: list = []
    reason = unmet_need(analysis.needs, context.metadata)
    if analysis.needs.all_backbones and len(context.all_embeddings) < 2:
        reason = reason or "needs at least 2 backbones in the run"
    if reason:
        status, message = "skipped", reason
    else:
        try:
            results = validate_results(analysis.name, _call(analysis, context))
            status, message = "ok", ""
        except SkipAnalysis as exc:
            status, message = "skipped", str(exc)
        except Exception as exc:  # an analysis failing must not stop the others
            status = "failed"
            message = f"{type(exc).__name__}: {exc}"
            frames = traceback.extract_tb(exc.__traceback__)
            if frames and not isinstance(exc, AnalysisTimeout):
                message += f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})"
            results = []
    seconds = time.perf_counter() - started
    try:
        store.save_results(context.run_id, analysis.name, backbone, status, message, seconds, results, key)
    except Exception as exc:  # results that cannot be stored count as a failure of this analysis only
        status, message = "failed", f"results could not be stored: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        store.save_results(context.run_id, analysis.name, backbone, status, message, seconds, [])
    return Outcome(analysis.name, backbone or "all", status, message, seconds)
