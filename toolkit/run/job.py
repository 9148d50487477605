"""``tk run``: find images, embed what is missing with every selected backbone, analyse, export."""

from __future__ import annotations

import hashlib
import platform
import secrets
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit import __version__, console
from toolkit.analysis.runner import run_analyses, with_dependencies
from toolkit.errors import TkError
from toolkit.plugin.settings import parse_assignments, resolved
from toolkit.plugin.types import Analysis, Backbone, ExportContext, Exporter
from toolkit.extract.pipeline import BATCH_SIZE, BackboneJob, extract
from toolkit.extract.precision import Lowered, check_precision, device_note, lower, parity_warning
from toolkit.plugin.registry import Registry, load_registry
from toolkit.ingest.scan import ScannedImage, scan
from toolkit.ingest.sources import find_images
from toolkit.store import EmbeddingSet, Store
from toolkit.extract.weights import ResolvedWeights, WeightsUnavailable, build_model, planned_weights, random_weights

EXIT_OK = 0
EXIT_PARTIAL = 3  # the run finished, but a backbone, analysis or exporter failed


@dataclass
class RunSettings:
    """Everything ``tk run`` was asked to do."""

    data: Path | None = None
    backbones: str = "all"
    weights: str = "auto"
    store: Path = Path("tk.duckdb")
    out: Path = Path("reports")
    plugins: list[str] = field(default_factory=list)
    source: str = "auto"
    analyses: str = "all"
    exports: str | None = None
    seed: int = 0
    batch_size: int = BATCH_SIZE
    precision: str = "fp32"
    reveal_ids: bool = False
    template_dir: Path | None = None
    analysis_timeout: float | None = None
    analysis_settings: list[str] = field(default_factory=list)  # NAME.KEY=VALUE, as given to --set


@dataclass
class RunSummary:
    """What a run did, for the CLI's last lines and for tests."""

    run_id: str
    status: str
    n_images: int
    n_skipped: int
    outputs: list[Path]
    failures: list[str]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if not self.failures else EXIT_PARTIAL


def select(items: dict[str, Any], spec: str, kind: str) -> list[Any]:
    """Items named in a comma list, or all of them for ``all``; unknown names are an error."""
    if spec.strip() == "all":
        return list(items.values())
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if kind == "backbone":  # fine-tuned variants, <base>@<train_id>
        from toolkit.models.variants import with_variants

        items = with_variants(items, names)
    unknown = [n for n in names if n not in items]
    if unknown:
        raise TkError(f"unknown {kind} {', '.join(unknown)}; available: {', '.join(items) or 'none'} (see `tk plugins`)")
    return [items[n] for n in dict.fromkeys(names)]


def versions() -> dict[str, str]:
    """Versions that make a run reproducible (TensorFlow's only when it was imported)."""
    from importlib.metadata import version

    found = {"tk": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("keras", "tensorflow-cpu", "tensorflow", "numpy", "scipy", "scikit-learn", "duckdb"):
        try:
            found[package] = version(package)
        except Exception:
            continue
    return found


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)


def dataset_fingerprint(images: list[ScannedImage]) -> str:
    digest = hashlib.sha256()
    for sha in sorted({image.sha256 for image in images}):
        digest.update(sha.encode())
    return digest.hexdigest()


def _plan_backbone(store: Store, backbone: Backbone, settings: RunSettings,
                   shas: set[str]) -> tuple[EmbeddingSet, ResolvedWeights, Any, set[str]]:
    """The embedding set a backbone writes to, its weights, its model for inference (batch norms
    folded, ``toolkit.extract.folding``; None if nothing to do), and the hashes it still needs."""
    request = backbone.fixed_weights or settings.weights
    planned = planned_weights(request, settings.seed)
    if planned is None:
        planned = _auto_without_building(store, backbone, settings.seed, shas, settings.precision)
    if planned is not None:
        embedding_set = EmbeddingSet(backbone.name, planned.weights_id, backbone.dim, settings.precision)
        needed = store.missing(embedding_set, shas)
        if not needed:
            return embedding_set, planned, None, needed
    model, resolved = build_model(backbone, request, settings.seed)
    from toolkit.extract.folding import fold_batch_norm  # after build_model: imports Keras

    model = fold_batch_norm(model)  # folded here, so the unfolded copy is freed before the next backbone is built
    embedding_set = EmbeddingSet(backbone.name, resolved.weights_id, backbone.dim, settings.precision)
    return embedding_set, resolved, model, store.missing(embedding_set, shas)


def _auto_without_building(store: Store, backbone: Backbone, seed: int, shas: set[str],
                           precision: str) -> ResolvedWeights | None:
    """``--weights auto`` resolved from what the store already holds, so that a re-run builds no model."""
    if not store.missing(EmbeddingSet(backbone.name, "imagenet", backbone.dim, precision), shas):
        return ResolvedWeights("imagenet", "imagenet")
    fallback = random_weights(seed)
    if not backbone.imagenet:
        return fallback
    if not store.missing(EmbeddingSet(backbone.name, fallback.weights_id, backbone.dim, precision), shas):
        note = (f"the stored {backbone.name} embeddings of these images use RANDOM weights (seed {seed}), because "
                "ImageNet weights were unavailable when they were made; they are reused. "
                "Use --weights imagenet to require pretrained weights.")
        return ResolvedWeights(fallback.kind, fallback.weights_id, note=note)
    return None


def execute_run(settings: RunSettings, command: str | None = None) -> RunSummary:
    """Run the whole job; raises TkError for problems that stop it before anything is written."""
    check_precision(settings.precision)
    registry = load_registry(settings.plugins)
    backbones: list[Backbone] = select(registry.backbones, settings.backbones, "backbone")
    analyses = (with_dependencies(select(registry.analyses, settings.analyses, "analysis"), registry.analyses)
                if settings.analyses != "none" else [])
    chosen = parse_assignments(settings.analysis_settings, registry.analyses)
    exporters: list[Exporter] = (
        [e for e in registry.exporters.values() if e.default] if settings.exports is None
        else select(registry.exporters, settings.exports, "exporter") if settings.exports != "none" else [])
    if not backbones:
        raise TkError("no backbone selected; name one with --backbone (see `tk plugins`)")

    data = settings.data
    if data is None:
        from toolkit.ingest.demo import demo_dataset

        data = demo_dataset()
        console.info(f"no DATA given: using the bundled demo dataset ({data})")
    kind, root, records, skipped = find_images(Path(data), settings.source)

    with Store.open(settings.store) as store:
        run_id = new_run_id()
        command = command or "tk " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        recorded = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
        recorded["analysis_settings"] = {a.name: resolved(a, chosen) for a in analyses if a.settings}
        store.start_run(run_id, command, recorded, versions())
        console.info(f"run {run_id}: {len(records)} images found ({kind}) in {root}")
        scanned, unreadable = scan(records, store.known_files())
        skipped += unreadable
        for item in skipped:
            console.warn(f"{item.relpath}: {item.reason} — skipped")
            store.record_skipped(run_id, item.relpath, item.reason)

        try:
            summary = _embed_and_analyse(store, registry, settings, run_id, backbones, analyses, chosen, scanned,
                                         skipped)
            store.update_run(run_id, data_root=str(root), source=kind, dataset_fingerprint=dataset_fingerprint(scanned),
                             n_images=summary.n_images, n_skipped=summary.n_skipped, warnings=summary.warnings,
                             status="ok" if not summary.failures else "partial", finished_at=_now())
            outputs = _export(store, registry, settings, run_id, exporters, summary.failures)
        except BaseException:
            store.update_run(run_id, status="failed", finished_at=_now())
            raise
        status = "ok" if not summary.failures else "partial"
        store.update_run(run_id, status=status)
    return RunSummary(run_id, status, summary.n_images, summary.n_skipped, outputs, summary.failures)


@dataclass
class _Progress:
    n_images: int
    n_skipped: int
    failures: list[str]
    warnings: list[str]


def _embed_and_analyse(store: Store, registry: Registry, settings: RunSettings, run_id: str,
                       backbones: list[Backbone], analyses: list[Analysis], chosen: dict[str, dict[str, Any]],
                       scanned: list[ScannedImage], skipped: list) -> _Progress:
    failures: list[str] = []
    warnings: list[str] = []
    slow = device_note(settings.precision)
    if slow:
        console.warn(slow)
        warnings.append(slow)
    shas = {image.sha256 for image in scanned}
    jobs: list[BackboneJob] = []
    resolved_by_backbone: dict[str, ResolvedWeights] = {}
    parity_by_backbone: dict[str, dict[str, float]] = {}
    sample_paths = [str(image.record.path) for image in sorted({i.sha256: i for i in scanned}.values(),
                                                                key=lambda i: i.sha256)]
    for backbone in backbones:
        try:
            embedding_set, resolved, model, needed = _plan_backbone(store, backbone, settings, shas)
            lowered = (lower(backbone, model, resolved, settings.precision, settings.batch_size, sample_paths,
                             settings.seed, store.set_model(embedding_set))
                       if model is not None and settings.precision != "fp32" else None)
        except WeightsUnavailable:
            raise
        except TkError as exc:
            failures.append(f"backbone {backbone.name}: {exc}")
            console.error(f"backbone {backbone.name}: {exc}")
            store.record_backbone(run_id, backbone.name, status="failed", error=str(exc), dim=backbone.dim)
            continue
        if resolved.note:
            console.warn(resolved.note)
            warnings.append(resolved.note)
        others = store.ensure_set(embedding_set, resolved.kind, resolved.sha256, resolved.path,
                                  *((lowered.model_path, lowered.model_sha256) if lowered else ()))
        if others:
            console.info(f"{backbone.name}: weights and precision {embedding_set.label} differ from the stored "
                         f"{', '.join(others)}; they start a new embedding set ({embedding_set.table}), "
                         "nothing is mixed")
        if lowered is not None:
            _report_lowered(store, backbone, embedding_set, lowered, warnings)
            parity_by_backbone[backbone.name] = lowered.parity
        resolved_by_backbone[backbone.name] = resolved
        jobs.append(BackboneJob(backbone, embedding_set, model if lowered is None else None, needed,
                                extract=lowered.extract if lowered else None))  # a lowered job needs no fp32 model

    needed_any = set().union(*(job.needed for job in jobs)) if jobs else set()
    representatives: dict[str, ScannedImage] = {}
    for image in scanned:
        representatives.setdefault(image.sha256, image)
    store.add_images(run_id, [image for image in scanned if image.sha256 not in needed_any])

    to_embed = [image for sha, image in representatives.items() if sha in needed_any]
    bad_shas: set[str] = set()
    if to_embed:
        working = [job for job in jobs if job.needed]
        names = ", ".join(job.backbone.name for job in working)

        def on_unreadable(image: ScannedImage, reason: str) -> None:
            bad_shas.add(image.sha256)
            console.warn(f"{image.record.relpath}: {reason} — skipped")
            store.record_skipped(run_id, image.record.relpath, reason)

        started = time.perf_counter()
        console.info(f"embedding {len(to_embed)} images with {names}")
        with console.progress(f"embedding with {names}", len(to_embed)) as advance:
            extract(to_embed, working, store, run_id, advance, on_unreadable, settings.batch_size)
        console.info(f"embedded {len(to_embed) - len(bad_shas)} images in {time.perf_counter() - started:.1f} s")
        done_reps = {id(representatives[sha]) for sha in representatives if sha in needed_any and sha not in bad_shas}
        store.add_images(run_id, [image for image in scanned if image.sha256 in needed_any
                                  and image.sha256 not in bad_shas and id(image) not in done_reps])
    else:
        console.info("every image is already embedded for the selected backbones and weights; nothing to extract")

    sets: dict[str, EmbeddingSet] = {}
    for job in jobs:
        resolved = resolved_by_backbone[job.backbone.name]
        store.point_view(job.embedding_set)
        rate = job.embedded / job.seconds if job.seconds else None
        parity = parity_by_backbone.get(job.backbone.name) or (
            store.last_parity(job.embedding_set) if settings.precision != "fp32" else {})
        store.record_backbone(run_id, job.backbone.name, table_name=job.embedding_set.table,
                              weights_id=resolved.weights_id, weights_kind=resolved.kind,
                              weights_sha256=resolved.sha256, weights_note=resolved.note or None,
                              dim=job.backbone.dim, n_embedded=job.embedded,
                              n_reused=len(shas - job.needed), seconds=job.seconds,
                              images_per_second=rate, status="ok", error=None, precision=settings.precision,
                              **_parity_columns(parity))
        sets[job.backbone.name] = job.embedding_set

    reused: set[str] = set()

    def on_outcome(outcome: Any) -> None:
        if outcome.reused_from:
            reused.add(outcome.reused_from)
        elif outcome.status == "failed":
            failures.append(f"analysis {outcome.analysis} ({outcome.backbone}): {outcome.message}")
            console.error(f"analysis {outcome.analysis} on {outcome.backbone} failed: {outcome.message}")
        elif outcome.status == "skipped":
            console.info(f"analysis {outcome.analysis} on {outcome.backbone} skipped: {outcome.message}")

    if analyses and sets:
        console.info(f"running {len(analyses)} analyses on {len(sets)} backbone(s)")
        run_analyses(store, run_id, sets, analyses, chosen, settings.seed, registry, settings.analysis_timeout,
                     on_outcome)
        if reused:
            console.info(f"analyses whose code, data and settings were unchanged reused the results of run(s) "
                         f"{', '.join(sorted(reused))}")
    n_images = store.run_image_count(run_id)
    return _Progress(n_images, len(skipped) + len(bad_shas), failures, warnings)


def _report_lowered(store: Store, backbone: Backbone, embedding_set: EmbeddingSet, lowered: Lowered,
                    warnings: list[str]) -> None:
    """Say where a lowered model came from and how close it is to fp32; keep the int8 model with its set."""
    for note in lowered.notes:
        console.warn(note)
        warnings.append(note)
    if lowered.model_path:
        if store.set_model(embedding_set) != (lowered.model_path, lowered.model_sha256):
            store.record_set_model(embedding_set, lowered.model_path, lowered.model_sha256)
        origin = "converted and cached" if lowered.converted else "from the cache"
        console.info(f"{backbone.name}: int8 model {origin} ({lowered.model_path})")
    found = lowered.parity
    console.info(f"{backbone.name} {lowered.precision} vs fp32 on {found['n_images']} held-out images: centred cosine "
                 f"mean {found['centred_cosine_mean']:.4f}, min {found['centred_cosine_min']:.4f}; "
                 f"similarity rank correlation {found['similarity_rank_corr']:.4f}")
    far = parity_warning(backbone.name, lowered.precision, found)
    if far:
        console.warn(far)
        warnings.append(far)


def _parity_columns(parity: dict[str, Any]) -> dict[str, Any]:
    return {"parity_centred_cosine_mean": parity.get("centred_cosine_mean"),
            "parity_centred_cosine_min": parity.get("centred_cosine_min"),
            "parity_rank_corr": parity.get("similarity_rank_corr"),
            "parity_n_images": parity.get("n_images")}


def _export(store: Store, registry: Registry, settings: RunSettings, run_id: str, exporters: list[Exporter],
            failures: list[str]) -> list[Path]:
    outputs: list[Path] = []
    context = ExportContext(run_id, store, {"reveal_ids": settings.reveal_ids, "seed": settings.seed},
                            settings.template_dir, registry)
    out_dir = settings.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for exporter in sorted(exporters, key=lambda e: e.default):  # reports (the defaults) last: they show the others' results
        try:
            written = [Path(p).resolve() for p in exporter.export(context, out_dir)]
            outside = [p for p in written if not p.is_relative_to(out_dir)]
            if outside:
                raise TkError(f"wrote outside --out: {', '.join(map(str, outside))}")
        except Exception as exc:  # one exporter failing must not lose the others' files
            message = f"exporter {exporter.name}: {type(exc).__name__}: {exc}"
            failures.append(message)
            console.error(message)
            continue
        for path in written:
            store.record_export(run_id, exporter.name, path)
            outputs.append(path)
    return outputs


def rerender(store_path: Path, run_id: str | None, out: Path, plugins: list[str],
             template_dir: Path | None, reveal_ids: bool) -> list[Path]:
    """``tk report``: render a stored run again without recomputing anything."""
    registry = load_registry(plugins)
    exporters = [e for e in registry.exporters.values() if e.rerender]
    if not exporters:
        raise TkError("no loaded exporter re-renders reports (Exporter(rerender=True)); load one with --plugin")
    with Store.open(store_path, read_only=True) as store:
        run = store.run(run_id)
        context = ExportContext(run["run_id"], store, {"reveal_ids": reveal_ids}, template_dir, registry)
        return [path for exporter in exporters for path in exporter.export(context, out.resolve())]


__all__ = ["RunSettings", "RunSummary", "execute_run", "rerender", "EXIT_OK", "EXIT_PARTIAL"]
