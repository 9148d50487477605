"""What ``tk run`` is asked (``RunSettings``) and what it reports back (``RunSummary``), with the
identifiers and provenance every run records."""

from __future__ import annotations

import hashlib
import platform
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.errors import TkError
from toolkit.extract.pipeline import BATCH_SIZE
from toolkit.ingest.scan import ScannedImage

EXIT_OK = 0
EXIT_PARTIAL = 3  # the run finished, but a backbone, analysis or exporter failed


def check_out_folder(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be one: it, or a folder it would be created
    in, is an existing file."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                named = "is" if path == out else f"is inside {path}, which is"
                raise TkError(f"{option} {out} {named} a file, not a folder; give a folder (created if missing)")
            return


@dataclass
class RunSettings:
    """Everything ``tk run`` was asked to do."""

    data: Path | None = None
    backbones: str = "all"
    weights: str = "auto"
    store: Path = Path("tk.duckdb")
    out: Path = Path("tk-reports")
    plugins: list[str] = field(default_factory=list)
    source: str = "auto"
    patient_from: str | None = None  # regex: the patient id from each image's path (--patient-from)
    clinical: Path | None = None  # a CSV of patient-level clinical variables keyed by patient_id (--clinical)
    clinical_types: list[str] = field(default_factory=list)  # NAME=categorical|numeric|drop (--clinical-type)
    analyses: str = "all"
    exports: str | None = None
    seed: int = 0
    batch_size: int = BATCH_SIZE
    precision: str = "fp32"
    stain: str = "none"  # stain normalisation before embedding: none, macenko, reinhard or a plugin's
    stain_reference: Path | None = None  # the image the normaliser is fitted to (default: its built-in reference)
    reveal_ids: bool = False
    template_dir: Path | None = None
    analysis_timeout: float | None = None
    analysis_settings: list[str] = field(default_factory=list)  # NAME.KEY=VALUE, as given to --set
    engine: str = "local"  # local | ray (toolkit.run.engine)
    ray_address: str | None = None  # None: a local Ray with this machine's cores
    shards: Path | None = None  # the Ray engine's shard folder; None: beside the store
    ray_cpus_per_actor: float = 1.0
    ray_gpus_per_actor: float = 0.0


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
        raise TkError(f"unknown {kind} {', '.join(map(repr, unknown))}; available: {', '.join(sorted(items)) or 'none'} "
                      "(see `tk plugins`)")
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


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)


def dataset_fingerprint(images: list[ScannedImage]) -> str:
    digest = hashlib.sha256()
    for sha in sorted({image.sha256 for image in images}):
        digest.update(sha.encode())
    return digest.hexdigest()
