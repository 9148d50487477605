"""The embedding phase of ``tk run``: plan each backbone (its embedding set, weights, model and the
contents it still lacks), embed what is missing with every backbone in one pass, and record what
each backbone did."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from toolkit import console
from toolkit.errors import TkError
from toolkit.extract.external import is_external
from toolkit.extract.pipeline import BackboneJob, extract
from toolkit.extract.precision import Lowered, lower, parity_warning
from toolkit.extract.stain import NONE, StainStep
from toolkit.extract.weights import ResolvedWeights, WeightsUnavailable, build_model, planned_weights, random_weights
from toolkit.ingest.scan import ScannedImage
from toolkit.plugin.types import Backbone
from toolkit.run.settings import RunSettings
from toolkit.store import EmbeddingSet, Store


@dataclass
class RunLog:
    """The failures and warnings a run collects; each is said on the console as it happens."""

    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        console.warn(message)
        self.warnings.append(message)

    def fail(self, message: str) -> None:
        console.error(message)
        self.failures.append(message)


@dataclass
class PlannedBackbone:
    """A backbone ready to embed: its job, its resolved weights, and its parity against fp32 when it
    runs at a lower precision."""

    job: BackboneJob
    resolved: ResolvedWeights
    parity: dict[str, Any]


def plan_backbones(store: Store, backbones: list[Backbone], settings: RunSettings, run_id: str,
                   scanned: list[ScannedImage], log: RunLog, stain: str = NONE,
                   build: bool = True) -> list[PlannedBackbone]:
    """Plan every backbone; one that cannot be built is recorded as failed and left out (weights that
    cannot be had at all stop the run). ``stain`` is the run's stain normalisation id (part of each set's
    key). ``build=False``: build a model only where planning needs one (``--weights auto``, a lowered
    precision), for an engine whose workers build their own."""
    shas = {image.sha256 for image in scanned}
    contents = [(str(image.record.path), image.sha256) for image in sorted({i.sha256: i for i in scanned}.values(),
                                                                           key=lambda i: i.sha256)]
    planned: list[PlannedBackbone] = []
    for backbone in backbones:
        try:
            embedding_set, resolved, model, needed = _plan_backbone(store, backbone, settings, shas, stain,
                                                                    build or settings.precision != "fp32")
            lowered = (lower(backbone, model, resolved, settings.precision, settings.batch_size, contents,
                             settings.seed, store.embeddings.set_model(embedding_set))
                       if model is not None and settings.precision != "fp32" else None)
        except WeightsUnavailable:
            raise
        except TkError as exc:
            log.fail(f"backbone {backbone.name}: {exc}")
            store.runs.record_backbone(run_id, backbone.name, status="failed", error=str(exc), dim=backbone.dim)
            continue
        if resolved.note:
            log.warn(resolved.note)
        others = store.embeddings.ensure_set(embedding_set, resolved.kind, resolved.sha256, resolved.path,
                                  *((lowered.model_path, lowered.model_sha256) if lowered else ()))
        if others:
            console.info(f"{backbone.name}: weights, precision and stain {embedding_set.label} differ from the stored "
                         f"{', '.join(others)}; they start a new embedding set ({embedding_set.table}), "
                         "nothing is mixed")
        if lowered is not None:
            _report_lowered(store, backbone, embedding_set, lowered, log)
        job = BackboneJob(backbone, embedding_set, model if lowered is None else None, needed,
                          extract=lowered.extract if lowered else None)  # a lowered job needs no fp32 model
        planned.append(PlannedBackbone(job, resolved, lowered.parity if lowered else {}))
    return planned


def embed_missing(store: Store, planned: list[PlannedBackbone], scanned: list[ScannedImage], run_id: str,
                  batch_size: int, stain: StainStep | None = None,
                  engine: Callable[..., list[ScannedImage]] = extract) -> int:
    """Embed every content some backbone lacks (each decoded once, stain-normalised by ``stain``),
    record the run's images, and return how many contents could not be read. ``engine`` is
    ``extract`` or one with its signature (``toolkit.run.engine``)."""
    jobs = [p.job for p in planned]
    needed_any = set().union(*(job.needed for job in jobs)) if jobs else set()
    representatives: dict[str, ScannedImage] = {}
    for image in scanned:
        representatives.setdefault(image.sha256, image)
    store.images.add_images(run_id, [image for image in scanned if image.sha256 not in needed_any])
    to_embed = [image for sha, image in representatives.items() if sha in needed_any]
    if not to_embed:
        console.info("every image is already embedded for the selected backbones and weights; nothing to extract")
        return 0
    bad_shas: set[str] = set()
    working = [job for job in jobs if job.needed]
    names = ", ".join(job.backbone.name for job in working)

    def on_unreadable(image: ScannedImage, reason: str) -> None:
        bad_shas.add(image.sha256)
        console.warn(f"{image.record.relpath}: {reason} — skipped")
        store.runs.record_skipped(run_id, image.record.relpath, reason)

    started = time.perf_counter()
    console.info(f"embedding {len(to_embed)} images with {names}")
    with console.progress("embedding", len(to_embed)) as advance:
        engine(to_embed, working, store, run_id, advance, on_unreadable, batch_size, stain=stain)
    console.info(f"embedded {len(to_embed) - len(bad_shas)} images in {time.perf_counter() - started:.1f} s")
    done_reps = {id(representatives[sha]) for sha in representatives if sha in needed_any and sha not in bad_shas}
    store.images.add_images(run_id, [image for image in scanned if image.sha256 in needed_any
                              and image.sha256 not in bad_shas and id(image) not in done_reps])
    return len(bad_shas)


def record_backbones(store: Store, run_id: str, planned: list[PlannedBackbone], settings: RunSettings,
                     shas: set[str], log: RunLog) -> dict[str, EmbeddingSet]:
    """Point each backbone's view at its set and record what it did (a failure during extraction is
    the run's failure); returns the run's sets by backbone, those that failed left out."""
    sets: dict[str, EmbeddingSet] = {}
    for plan in planned:
        job, resolved = plan.job, plan.resolved
        if job.error:
            log.fail(job.error)
            store.runs.record_backbone(run_id, job.backbone.name, status="failed", error=job.error, dim=job.backbone.dim,
                                  precision=settings.precision)
            continue
        store.embeddings.point_view(job.embedding_set)
        rate = job.embedded / job.seconds if job.seconds else None
        parity = plan.parity or (store.embeddings.last_parity(job.embedding_set) if settings.precision != "fp32" else {})
        store.runs.record_backbone(run_id, job.backbone.name, table_name=job.embedding_set.table,
                              weights_id=resolved.weights_id, weights_kind=resolved.kind,
                              weights_sha256=resolved.sha256, weights_note=resolved.note or None,
                              dim=job.backbone.dim, n_embedded=job.embedded,
                              n_reused=len(shas - job.needed), seconds=job.seconds,
                              images_per_second=rate, status="ok", error=None, precision=settings.precision,
                              stain=job.embedding_set.stain,
                              **_parity_columns(parity))
        sets[job.backbone.name] = job.embedding_set
    return sets


def _plan_backbone(store: Store, backbone: Backbone, settings: RunSettings, shas: set[str],
                   stain: str, build: bool = True) -> tuple[EmbeddingSet, ResolvedWeights, Any, set[str]]:
    """The embedding set a backbone writes to, its weights, its model for inference (batch norms
    folded, ``toolkit.extract.folding``; None if nothing to do or not ``build``), and the hashes it
    still needs."""
    request = backbone.fixed_weights or settings.weights
    planned = planned_weights(request, settings.seed, backbone.fingerprint)
    if planned is None:
        planned = _auto_without_building(store, backbone, settings.seed, shas, settings.precision, stain)
    if planned is not None:
        embedding_set = EmbeddingSet(backbone.name, planned.weights_id, backbone.dim, settings.precision, stain)
        needed = store.embeddings.missing(embedding_set, shas)
        if not needed or not build:
            return embedding_set, planned, None, needed
    model, resolved = build_model(backbone, request, settings.seed)
    if not is_external(model):
        from toolkit.extract.folding import fold_batch_norm  # after build_model: imports Keras

        model = fold_batch_norm(model)  # folded here, so the unfolded copy is freed before the next backbone is built
    embedding_set = EmbeddingSet(backbone.name, resolved.weights_id, backbone.dim, settings.precision, stain)
    return embedding_set, resolved, model, store.embeddings.missing(embedding_set, shas)


def _auto_without_building(store: Store, backbone: Backbone, seed: int, shas: set[str],
                           precision: str, stain: str) -> ResolvedWeights | None:
    """``--weights auto`` resolved from what the store already holds, so that a re-run builds no model."""
    if not store.embeddings.missing(EmbeddingSet(backbone.name, "imagenet", backbone.dim, precision, stain), shas):
        return ResolvedWeights("imagenet", "imagenet")
    fallback = random_weights(seed)
    if not backbone.imagenet:
        return fallback
    if not store.embeddings.missing(EmbeddingSet(backbone.name, fallback.weights_id, backbone.dim, precision, stain), shas):
        note = (f"the stored {backbone.name} embeddings of these images use RANDOM weights (seed {seed}), because "
                "ImageNet weights were unavailable when they were made; they are reused. "
                "Use --weights imagenet to require pretrained weights.")
        return ResolvedWeights(fallback.kind, fallback.weights_id, note=note)
    return None


def _report_lowered(store: Store, backbone: Backbone, embedding_set: EmbeddingSet, lowered: Lowered,
                    log: RunLog) -> None:
    """Say where a lowered model came from and how close it is to fp32; keep the int8 model with its set."""
    for note in lowered.notes:
        log.warn(note)
    if lowered.model_path:
        if store.embeddings.set_model(embedding_set) != (lowered.model_path, lowered.model_sha256):
            store.embeddings.record_set_model(embedding_set, lowered.model_path, lowered.model_sha256)
        origin = "converted and cached" if lowered.converted else "from the cache"
        console.info(f"{backbone.name}: int8 model {origin} ({lowered.model_path})")
    found = lowered.parity
    console.info(f"{backbone.name} {lowered.precision} vs fp32 on {found['n_images']} held-out images: centred cosine "
                 f"mean {found['centred_cosine_mean']:.4f}, min {found['centred_cosine_min']:.4f}; "
                 f"similarity rank correlation {found['similarity_rank_corr']:.4f}")
    far = parity_warning(backbone.name, lowered.precision, found)
    if far:
        log.warn(far)


def _parity_columns(parity: dict[str, Any]) -> dict[str, Any]:
    return {"parity_centred_cosine_mean": parity.get("centred_cosine_mean"),
            "parity_centred_cosine_min": parity.get("centred_cosine_min"),
            "parity_rank_corr": parity.get("similarity_rank_corr"),
            "parity_n_images": parity.get("n_images")}
