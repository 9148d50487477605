"""``tk run``: find images, embed what is missing with every selected backbone, analyse, export;
``tk report``: render a stored run again."""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit import console
from toolkit.analysis.runner import Outcome, run_analyses, with_dependencies
from toolkit.errors import TkError
from toolkit.extract import stain as stain_normalisation
from toolkit.extract.precision import device_note
from toolkit.ingest.clinical import attach_clinical
from toolkit.ingest.scan import ScannedImage, scan
from toolkit.ingest.sources import find_images
from toolkit.plugin.registry import Registry, load_registry
from toolkit.plugin.settings import declared, parse_assignments, resolved, settings_record
from toolkit.plugin.types import Analysis, Backbone, ExportContext, Exporter, ExportSettings
from toolkit.run.engine import RayOptions, default_shards, engine_extract
from toolkit.run.exports import export_into
from toolkit.run.embed import RunLog, embed_missing, plan_backbones, record_backbones
from toolkit.run.settings import (EXIT_OK, EXIT_PARTIAL, RunSettings, RunSummary, check_out_folder,
                                  dataset_fingerprint, new_run_id, select, utcnow, versions)
from toolkit.store import EmbeddingSet, Store


def execute_run(settings: RunSettings, command: str | None = None) -> RunSummary:
    """Run the whole job; raises TkError for problems that stop it before anything is written."""
    registry = load_registry(settings.plugins)
    backbones: list[Backbone] = select(registry.backbones, settings.backbones, "backbone")
    analyses = with_dependencies(select(registry.analyses, settings.analyses, "analysis"), registry.analyses)
    chosen = parse_assignments(settings.analysis_settings, registry.analyses)
    exporters: list[Exporter] = ([e for e in registry.exporters.values() if e.default] if settings.exports is None
                                 else select(registry.exporters, settings.exports, "exporter"))
    if not backbones:
        raise TkError("no backbone selected; name one with --backbone (see `tk plugins`)")
    stain = stain_normalisation.prepare(settings.stain, settings.stain_reference, registry)

    data = settings.data
    if data is None:
        from toolkit.ingest.demo import demo_dataset

        data = demo_dataset()
        console.info(f"no DATA given: using the bundled demo dataset ({data})")
    kind, root, records, skipped = find_images(Path(data), settings.source, settings.patient_from)
    records, clinical = attach_clinical(records, settings.clinical, settings.clinical_types,
                                        Path(data) if kind == "manifest" else None)

    with Store.open(settings.store) as store:
        run_id = new_run_id()
        command = command or "tk " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        recorded = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
        recorded["analysis_settings"] = {a.name: settings_record(resolved(a, chosen)) for a in analyses
                                         if declared(a.settings)}
        recorded["demo"] = settings.data is None  # the report says the data are synthetic
        recorded["stain_id"] = stain.stain_id if stain else stain_normalisation.NONE
        store.runs.start_run(run_id, command, recorded, versions())
        console.info(f"run {run_id}: {len(records)} images found ({kind}) in {root}")
        try:
            store.clinical.record_clinical(run_id, clinical)
            if clinical.columns:
                console.info("clinical variables: " + ", ".join(f"{c.name} ({c.kind}, per {c.level})"
                                                                for c in clinical.columns))
            scanned, unreadable = scan(records, store.images.known_files())
            skipped += unreadable
            for item in skipped:
                console.warn(f"{item.relpath}: {item.reason} — skipped")
                store.runs.record_skipped(run_id, item.relpath, item.reason)
            summary = _embed_and_analyse(store, registry, settings, run_id, backbones, analyses, chosen, scanned,
                                         skipped, clinical.warnings, stain)
            store.runs.update_run(run_id, data_root=str(root), source=kind, dataset_fingerprint=dataset_fingerprint(scanned),
                             n_images=summary.n_images, n_skipped=summary.n_skipped, warnings=summary.warnings,
                             status="ok" if not summary.failures else "partial", finished_at=utcnow())
            outputs = _export(store, registry, settings, run_id, exporters, summary.failures)
        except BaseException as exc:
            interrupted = is_interruption(exc)
            store.runs.update_run(run_id, status="interrupted" if interrupted else "failed",
                             error="interrupted by the user (Ctrl-C or SIGTERM)" if interrupted else failure_reason(exc),
                             finished_at=utcnow())
            if interrupted and not isinstance(exc, KeyboardInterrupt):
                raise KeyboardInterrupt from exc
            raise
        status = "ok" if not summary.failures else "partial"
        store.runs.update_run(run_id, status=status)
    return RunSummary(run_id, status, summary.n_images, summary.n_skipped, outputs, summary.failures)


def failure_reason(exc: BaseException) -> str:
    """The one line a failed run keeps to say why it stopped."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    if isinstance(exc, TkError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Progress:
    n_images: int
    n_skipped: int
    failures: list[str]
    warnings: list[str]


def is_interruption(exc: BaseException) -> bool:
    """Whether ``exc`` is the user stopping the run: Ctrl-C itself, or DuckDB's 'Query interrupted'
    when the signal came in the middle of a query."""
    return isinstance(exc, KeyboardInterrupt) or (
        type(exc).__name__ in ("RuntimeError", "InterruptException") and "interrupted" in str(exc).lower())


def _embed_and_analyse(store: Store, registry: Registry, settings: RunSettings, run_id: str,
                       backbones: list[Backbone], analyses: list[Analysis], chosen: dict[str, dict[str, Any]],
                       scanned: list[ScannedImage], skipped: list, warnings: list[str],
                       stain: stain_normalisation.StainStep | None = None) -> _Progress:
    log = RunLog()
    for warning in warnings:
        log.warn(warning)
    slow = device_note(settings.precision)
    if slow:
        log.warn(slow)
    engine = engine_extract(settings.engine, store, run_id, _ray_options(settings))  # before planning: ingests finished shards
    planned = plan_backbones(store, backbones, settings, run_id, scanned, log,
                             stain.stain_id if stain else stain_normalisation.NONE, build=settings.engine == "local")
    if stain:
        stain_normalisation.remember(store, stain)
    n_unreadable = embed_missing(store, planned, scanned, run_id, settings.batch_size, stain, engine)
    if stain:
        stain_normalisation.record_run(store, run_id, stain, scanned)
    sets = record_backbones(store, run_id, planned, settings, {image.sha256 for image in scanned}, log)
    if analyses and sets:
        _analyse(store, registry, settings, run_id, sets, analyses, chosen, log)
    return _Progress(store.images.run_image_count(run_id), len(skipped) + n_unreadable, log.failures, log.warnings)


def _ray_options(settings: RunSettings) -> RayOptions | None:
    if settings.engine != "ray":
        return None
    return RayOptions(settings.shards or default_shards(settings.store), settings.ray_address,
                      settings.ray_cpus_per_actor, settings.ray_gpus_per_actor,
                      tuple(str(Path(p).resolve()) for p in settings.plugins))  # workers may start elsewhere


def _analyse(store: Store, registry: Registry, settings: RunSettings, run_id: str, sets: dict[str, EmbeddingSet],
             analyses: list[Analysis], chosen: dict[str, dict[str, Any]], log: RunLog) -> None:
    """Run the analyses, saying which failed or were skipped and which reused earlier results."""
    reused: set[str] = set()
    skipped: dict[tuple[str, str], list[str]] = {}  # (analysis, why) -> backbones: one line for all of them

    def on_outcome(outcome: Outcome) -> None:
        if outcome.reused_from:
            reused.add(outcome.reused_from)
        elif outcome.status == "failed":
            log.failures.append(f"analysis {outcome.analysis} ({outcome.backbone}): {outcome.message}")
            console.error(f"analysis {outcome.analysis} on {outcome.backbone} failed: {outcome.message}")
        elif outcome.status == "skipped":
            skipped.setdefault((outcome.analysis, outcome.message), []).append(outcome.backbone)

    console.info(f"running {len(analyses)} analyses on {len(sets)} backbone(s)")
    steps = sum(1 if a.needs.all_backbones else len(sets) for a in analyses)
    with console.progress("analysing", steps, unit="step") as advance:
        run_analyses(store, run_id, sets, analyses, chosen, settings.seed, registry, settings.analysis_timeout,
                     lambda outcome: (on_outcome(outcome), advance(1)))
    for (analysis, why), backbones in skipped.items():
        console.info(f"analysis {analysis} on {', '.join(backbones)} skipped: {why}")
    if reused:
        console.info(f"analyses whose code, data and settings were unchanged reused the results of run(s) "
                     f"{', '.join(sorted(reused))}")


def _export(store: Store, registry: Registry, settings: RunSettings, run_id: str, exporters: list[Exporter],
            failures: list[str]) -> list[Path]:
    outputs: list[Path] = []
    context = ExportContext(run_id, store, ExportSettings(reveal_ids=settings.reveal_ids, seed=settings.seed),
                            settings.template_dir, registry)
    for exporter in sorted(exporters, key=lambda e: e.default):  # reports (the defaults) last: they show the others' results
        try:
            written = export_into(exporter, context, settings.out, store)
        except Exception as exc:  # one exporter failing must not lose the others' files
            message = f"exporter {exporter.name}: {type(exc).__name__}: {exc}"
            failures.append(message)
            console.error(message)
            continue
        for path in written:
            store.runs.record_export(run_id, exporter.name, path)
            outputs.append(path)
    return outputs


def rerender(store_path: Path, run_id: str | None, out: Path, plugins: list[str],
             template_dir: Path | None, reveal_ids: bool) -> list[Path]:
    """``tk report``: render a stored run again without recomputing anything."""
    registry = load_registry(plugins)
    exporters = [e for e in registry.exporters.values() if e.rerender]
    if not exporters:
        raise TkError("no loaded exporter re-renders reports (Exporter(rerender=True)); load one with --plugin")
    check_out_folder(out)
    with Store.open(store_path, read_only=True) as store:
        run = store.runs.run(run_id)
        context = ExportContext(run["run_id"], store, ExportSettings(reveal_ids=reveal_ids), template_dir, registry)
        return [path for exporter in exporters for path in export_into(exporter, context, out, store)]


__all__ = ["RunSettings", "RunSummary", "execute_run", "rerender", "EXIT_OK", "EXIT_PARTIAL"]
