"""What ``tk run`` is asked (``RunSettings``) and what it reports back (``RunSummary``), with the
identifiers and provenance every run records."""

from __future__ import annotations

import hashlib
import platform
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from toolkit import __version__
from toolkit.errors import TkError
from toolkit.extract.pipeline import BATCH_SIZE
from toolkit.extract.stain import NONE as NO_STAIN
from toolkit.extract.weights import WEIGHT_CHOICES
from toolkit.ingest.scan import ScannedImage
from toolkit.ingest.sources import patient_pattern

RAY_INSTALL = "pip install 'tk-embeddings[ray]'"
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


Names = list[str] | Literal["all"]  # names of registered things, or every one of them
Precision = Literal["fp32", "bf16", "fp16", "int8"]
Engine = Literal["local", "ray"]
Source = Literal["auto", "breakhis", "folders", "manifest"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
ENGINES: tuple[str, ...] = get_args(Engine)
SOURCES: tuple[str, ...] = get_args(Source)


@dataclass(frozen=True)
class RunSettings:
    """Everything ``tk run`` was asked to do, typed; a RunSettings that exists is valid: construction
    refuses, in one line naming the option and the fix, every value and combination no run can do.
    Names are checked against the loaded plugins when the run selects them (:func:`select`)."""

    data: Path | None = None  # None: the bundled demo
    backbones: Names = "all"
    weights: str = "auto"  # one of WEIGHT_CHOICES, or the path of a weights file
    store: Path = Path("tk.duckdb")
    out: Path = Path("tk-reports")
    plugins: list[str] = field(default_factory=list)
    source: Source = "auto"
    patient_from: str | None = None  # regex: the patient id from each image's path (--patient-from)
    clinical: Path | None = None  # a CSV of patient-level clinical variables keyed by patient_id (--clinical)
    clinical_types: dict[str, str] = field(default_factory=dict)  # column -> categorical|numeric|drop
    analyses: Names = "all"  # []: none
    exports: Names | None = None  # None: the default exporters (the HTML report); []: none
    seed: int = 0
    batch_size: int = BATCH_SIZE
    precision: Precision = "fp32"
    stain: str = NO_STAIN  # stain normalisation before embedding: none, macenko, reinhard or a plugin's
    stain_reference: Path | None = None  # the image the normaliser is fitted to (default: its built-in reference)
    reveal_ids: bool = False
    template_dir: Path | None = None
    analysis_timeout: float | None = None
    analysis_settings: list[str] = field(default_factory=list)  # NAME.KEY=VALUE, as given to --set
    engine: Engine = "local"  # toolkit.run.engine
    ray_address: str | None = None  # None: a local Ray with this machine's cores
    shards: Path | None = None  # the Ray engine's shard folder; None: beside the store
    ray_cpus_per_actor: float = 1.0
    ray_gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        for option, value in (("--backbone", self.backbones), ("--analysis", self.analyses),
                              ("--export", self.exports)):
            if isinstance(value, str) and value != "all":
                raise TypeError(f"RunSettings {option}: give a list of names or 'all', not {value!r}")
        self._check_values()
        self._check_combinations()

    def _check_values(self) -> None:
        """Each option on its own."""
        if self.weights not in WEIGHT_CHOICES and not Path(self.weights).expanduser().exists():
            raise TkError(f"--weights {self.weights}: no such file; use auto, imagenet, random or the path of a "
                          "weights file")
        if self.source not in SOURCES:
            raise TkError(f"unknown source {self.source!r}; use auto, breakhis, folders or manifest")
        if self.patient_from is not None:
            patient_pattern(self.patient_from)
        if self.precision not in PRECISIONS:
            raise TkError(f"--precision {self.precision}: unknown precision; use one of {', '.join(PRECISIONS)}")
        if self.engine not in ENGINES:
            raise TkError(f"--engine {self.engine}: unknown engine; use {' or '.join(ENGINES)}")
        for option, number, least in (("--batch-size", self.batch_size, 1),
                                      ("--ray-cpus-per-actor", self.ray_cpus_per_actor, 0),
                                      ("--ray-gpus-per-actor", self.ray_gpus_per_actor, 0)):
            if number < least:
                raise TkError(f"{option} {number}: give {least} or more")
        if self.analysis_timeout is not None and self.analysis_timeout <= 0:
            raise TkError(f"--analysis-timeout {self.analysis_timeout}: give a number of seconds above 0")
        if self.exports != []:
            check_out_folder(self.out)

    def _check_combinations(self) -> None:
        """Options that need, or exclude, one another; ``--engine ray`` needs Ray installed."""
        if self.stain == NO_STAIN and self.stain_reference is not None:
            raise TkError("--stain-reference needs a method: add --stain macenko (or reinhard, or a plugin's)")
        if self.engine != "ray":
            return
        if self.stain != NO_STAIN:  # Ray's workers do not normalise stains
            raise TkError(f"--stain {self.stain} is not supported with --engine ray yet: run it with --engine "
                          "local, or without --stain on Ray")
        try:
            import ray.data  # noqa: F401
        except ImportError:
            raise TkError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL}") from None


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


def select(items: dict[str, Any], names: Names, kind: str) -> list[Any]:
    """The items ``names`` names (each once, in order), or all of them for ``all``; unknown names
    are an error."""
    if names == "all":
        return list(items.values())
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
