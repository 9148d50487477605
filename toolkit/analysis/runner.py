"""The analysis runner: orders analyses by the results they read, checks each one's needs, runs it
(or reuses stored results with the same cache key) and stores its results or its failure."""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from toolkit.analysis.cache import cache_key, data_key
from toolkit.errors import TkError
from toolkit.plugin.registry import Registry
from toolkit.plugin.results import Finding, SkipAnalysis, validate_results
from toolkit.plugin.settings import resolved, settings_record, undeclared_read
from toolkit.plugin.types import Analysis, AnalysisContext, Needs
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


HOW_TO_GIVE_PATIENT_IDS = ("Give them with a CSV manifest that has a patient_id column, or with "
                           "tk run --patient-from REGEX, which takes the id from each image's path (see the README)")


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
            return (f"needs a patient id for every image; {int(patients.isna().sum())} have none. "
                    f"{HOW_TO_GIVE_PATIENT_IDS}")
        if patients.nunique() < 2:
            return "needs at least 2 patients"
    return None


def _read_only(array: np.ndarray) -> np.ndarray:
    array = array.view()
    array.flags.writeable = False
    return array


def with_dependencies(selected: list[Analysis], available: dict[str, Analysis]) -> list[Analysis]:
    """``selected`` plus the analyses they read (``Needs.analyses``), transitively, each before its
    dependants; the order does not depend on the order plugins were loaded in."""
    chosen: dict[str, Analysis] = {}
    pending = list(selected)
    while pending:
        analysis = pending.pop()
        if analysis.name in chosen:
            continue
        chosen[analysis.name] = analysis
        for name in analysis.needs.analyses:
            if name not in available:
                raise TkError(f"analysis {analysis.name!r} reads the results of {name!r}, which no loaded plugin "
                              f"registers; load its plugin or leave {analysis.name!r} out with --analysis")
            pending.append(available[name])
    ordered: list[Analysis] = []
    placed: set[str] = set()
    while len(ordered) < len(chosen):
        ready = sorted(name for name, a in chosen.items() if name not in placed and set(a.needs.analyses) <= placed)
        if not ready:
            cycle = sorted(set(chosen) - placed)
            raise TkError(f"analyses {', '.join(cycle)} read each other's results in a cycle; none can run first")
        ordered += [chosen[name] for name in ready]
        placed.update(ready)
    return ordered


def with_clinical(loaded: tuple[pd.DataFrame, np.ndarray], clinical: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Metadata with the run's clinical columns added (aligned by image_id), and its embeddings."""
    metadata, matrix = loaded
    if clinical.shape[1] > 1:
        metadata = metadata.merge(clinical, on="image_id", how="left", validate="one_to_one")
    return metadata, matrix


@dataclass
class RunData:
    """The embeddings and metadata of one run, loaded once for every analysis."""

    store: Store
    run_id: str
    loaded: dict[str, tuple[pd.DataFrame, np.ndarray]]
    data_keys: dict[str, str]
    clinical_columns: dict[str, str]

    @classmethod
    def load(cls, store: Store, run_id: str, sets: dict[str, EmbeddingSet]) -> RunData:
        kinds, clinical = store.clinical.run_clinical(run_id)
        loaded = {name: with_clinical(store.embeddings.run_embeddings(run_id, embedding_set), clinical)
                  for name, embedding_set in sets.items()}
        typed = [f"clinical:{name}={kind}" for name, kind in kinds.items()]  # a changed type is changed data
        keys = {name: data_key([sets[name].table, *typed], meta) for name, (meta, _) in loaded.items()}
        if loaded:
            metadata = next(iter(loaded.values()))[0]
            same_rows = [name for name, (meta, _) in loaded.items() if meta["image_id"].equals(metadata["image_id"])]
            keys[ALL_BACKBONES] = data_key(sorted(sets[name].table for name in same_rows) + typed, metadata)
        return cls(store, run_id, loaded, keys, kinds)

    def targets(self, analysis: Analysis) -> list[str]:
        """The backbones an analysis runs on: each of them, or all at once (``ALL_BACKBONES``)."""
        return [ALL_BACKBONES] if analysis.needs.all_backbones else list(self.loaded)

    def context(self, analysis: Analysis, backbone: str, settings: Any, seed: int,
                registry: Registry | None = None) -> AnalysisContext:
        """The context ``analysis`` gets for ``backbone`` (``ALL_BACKBONES``: every backbone at once)."""
        metadata = next(iter(self.loaded.values()))[0]
        all_embeddings = {name: _read_only(matrix) for name, (meta, matrix) in self.loaded.items()
                          if meta["image_id"].equals(metadata["image_id"])}
        meta = metadata if backbone == ALL_BACKBONES else self.loaded[backbone][0]
        return AnalysisContext(
            run_id=self.run_id, backbone=backbone or None,
            embeddings=None if backbone == ALL_BACKBONES else _read_only(self.loaded[backbone][1]),
            metadata=meta.copy(), all_embeddings=all_embeddings, store=self.store.reader(own_cursor=True),
            registry=registry, settings=settings, seed=seed, clinical_columns=dict(self.clinical_columns))


def run_analyses(store: Store, run_id: str, sets: dict[str, EmbeddingSet], analyses: list[Analysis],
                 chosen: dict[str, dict[str, Any]] | None = None, seed: int = 0, registry: Registry | None = None,
                 timeout: float | None = None,
                 on_outcome: Callable[[Outcome], None] = lambda outcome: None) -> list[Outcome]:
    """Run every analysis on every backbone of the run (or once on all), dependencies first; one
    failure stops nothing, and an analysis whose dependency did not finish is skipped with the reason.

    :param analyses: in the order :func:`with_dependencies` gives.
    :param chosen: the user's settings by analysis (``tk run --set``); declared defaults fill the rest.
    """
    data = RunData.load(store, run_id, sets)
    if not data.loaded:
        return []
    if registry is None:
        from toolkit.plugin.registry import load_registry

        registry = load_registry()
    outcomes: list[Outcome] = []
    keys: dict[tuple[str, str], str] = {}
    done: dict[tuple[str, str], Outcome] = {}
    for analysis in analyses:
        settings = resolved(analysis, chosen or {})
        for backbone in data.targets(analysis):
            needed = [(name, target) for name in analysis.needs.analyses
                      for target in _dependency_targets(name, backbone, done, list(data.loaded))]
            key = cache_key(analysis, data.data_keys[backbone], settings_record(settings), seed,
                            [keys.get(n, "") for n in needed])
            keys[(analysis.name, backbone)] = key
            unfinished = [(name, done.get((name, target))) for name, target in needed
                          if done.get((name, target)) is None or done[(name, target)].status != "ok"]
            source = None if unfinished else store.results.reusable_results(key)
            if unfinished:
                outcome = _skip_dependant(store, run_id, analysis, backbone, unfinished, key)
            elif source is not None:
                status, message, seconds = store.results.copy_results(source, run_id, analysis.name, backbone)
                outcome = Outcome(analysis.name, backbone or "all", status, message, seconds, reused_from=source)
            else:
                context = data.context(analysis, backbone, settings, seed, registry)
                outcome = _run_one(store, analysis, context, backbone, key, timeout)
            done[(analysis.name, backbone)] = outcome
            outcomes.append(outcome)
            on_outcome(outcome)
    return outcomes


def _dependency_targets(name: str, backbone: str, done: dict[tuple[str, str], Outcome],
                        backbones: list[str]) -> list[str]:
    """Whose results of dependency ``name`` an analysis on ``backbone`` reads: the same backbone's,
    the all-backbones run's, or, for an all-backbones analysis reading a per-backbone one, every
    backbone's."""
    if (name, backbone) in done:
        return [backbone]
    if backbone == ALL_BACKBONES and any((name, b) in done for b in backbones):
        return backbones
    return [ALL_BACKBONES]


def _skip_dependant(store: Store, run_id: str, analysis: Analysis, backbone: str,
                    unfinished: list[tuple[str, Outcome | None]], key: str) -> Outcome:
    reasons = "; ".join(f"{name} {'did not run' if o is None else o.status}" + (f" ({o.message})" if o and o.message else "")
                        for name, o in unfinished)
    message = f"needs the results of {', '.join(dict.fromkeys(name for name, _ in unfinished))}: {reasons}"
    store.results.save_results(run_id, analysis.name, backbone, "skipped", message, 0.0,
                       [Finding(f"{analysis.name} was skipped: it {message}.", "warning")], key)
    return Outcome(analysis.name, backbone or "all", "skipped", message, 0.0)


class AnalysisTimeout(Exception):
    """An analysis ran longer than ``--analysis-timeout``."""


def _call(analysis: Analysis, context: AnalysisContext, timeout: float | None) -> Any:
    """``analysis.run(context)``, given up after ``timeout`` seconds if set.

    Python cannot stop a running thread: a timed-out analysis is abandoned (daemon thread, its own
    database cursor) and whatever it returns later is ignored.
    """
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
             key: str | None = None, timeout: float | None = None) -> Outcome:
    started = time.perf_counter()
    results: list = []
    reason = unmet_need(analysis.needs, context.metadata)
    if analysis.needs.all_backbones and len(context.all_embeddings) < 2:
        reason = reason or "needs at least 2 backbones in the run"
    if reason:
        status, message = "skipped", reason
    else:
        try:
            results = validate_results(analysis.name, _call(analysis, context, timeout))
            status, message = "ok", ""
        except SkipAnalysis as exc:
            status, message = "skipped", str(exc)
        except Exception as exc:  # an analysis failing must not stop the others
            status = "failed"
            message = undeclared_read(exc, analysis, context.settings) or f"{type(exc).__name__}: {exc}"
            frames = traceback.extract_tb(exc.__traceback__)
            if frames and not isinstance(exc, AnalysisTimeout):
                message += f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})"
            results = []
    seconds = time.perf_counter() - started
    try:
        store.results.save_results(context.run_id, analysis.name, backbone, status, message, seconds, results, key)
    except Exception as exc:  # results that cannot be stored count as a failure of this analysis only
        status, message = "failed", f"results could not be stored: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        store.results.save_results(context.run_id, analysis.name, backbone, status, message, seconds, [])
    return Outcome(analysis.name, backbone or "all", status, message, seconds)
