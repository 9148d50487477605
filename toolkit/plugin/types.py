"""The kinds of plugin object: Backbone, Analysis, Exporter and StainNormaliser.

Plugins construct these and hand them to ``register`` in the matching ``register_*`` hook. Nothing
here imports TensorFlow: builders and preprocessing functions import it when they are called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from toolkit.plugin.settings import NoSettings, from_legacy

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from toolkit.plugin.registry import Registry
    from toolkit.plugin.results import Result
    from toolkit.store import Store, StoreReader, TableRows, TableSpec


@dataclass(frozen=True)
class Backbone:
    """A network that turns an RGB image into a fixed-size embedding.

    :param name: lower-case identifier used on the command line and in table names.
    :param dim: length of the pooled embedding the model outputs.
    :param build: ``build(weights)`` returns a Keras model mapping a preprocessed batch
        ``(n, height, width, 3)`` to ``(n, dim)``. ``weights`` is ``None`` (random init; the
        caller seeds Keras first), ``"imagenet"`` or the path of a local weights file.
    :param preprocess: maps a float32 batch of RGB values in 0..255 to the model's input.
    :param input_size: ``(height, width)`` the images are resized to.
    :param gradcam_layer: name of the last convolutional layer (read by Grad-CAM).
    :param imagenet: whether ``build("imagenet")`` is supported.
    :param fixed_weights: a weights file (or folder) that always applies, whatever ``--weights`` says
        (e.g. a fine-tuned variant's ``.keras`` model); its sha256 identifies the embedding set.
    :param extractor: for a network that is not a Keras model (an ONNX graph, say):
        ``extractor(weights)`` returns a function from a preprocessed float32 numpy batch
        ``(n, height, width, 3)`` to ``(n, dim)`` embeddings, and ``build`` is not called to embed.
        Such a backbone embeds in fp32 only; Grad-CAM, ``tk train`` and the model exporters, which
        need a Keras model, refuse it with one line.
    :param fingerprint: what decides the embeddings besides the weights (an encoder's preprocessing
        and pooling, hashed); it is part of the embedding set's weights id, so changing it starts a
        new set.
    :param resize: how an image becomes ``input_size``: ``"stretch"`` (the whole image resized) or
        ``"center-crop"`` (the shorter side resized to fit, then the centre cut out).
    """

    name: str
    dim: int
    build: Callable[[str | None], Any]
    preprocess: Callable[[Any], Any]
    input_size: tuple[int, int] = (224, 224)
    gradcam_layer: str | None = None
    imagenet: bool = True
    description: str = ""
    fixed_weights: str | None = None
    extractor: Callable[[str | None], Callable[[Any], Any]] | None = None
    fingerprint: str = ""
    resize: str = "stretch"


@dataclass(frozen=True)
class Needs:
    """What an analysis needs from the data; unmet needs skip it with the reason recorded.

    :param labels: a ``label`` for every image and at least ``min_groups`` distinct labels.
    :param patients: a ``patient_id`` for every image and at least two patients.
    :param min_samples: the least number of images.
    :param all_backbones: run once with every backbone's embeddings instead of once per backbone.
    :param analyses: names of analyses whose stored results this one reads (``context.results``).
        The runner runs them first (adding them to the run when they were not selected) and skips
        this analysis, with the reason, when one of them failed or was skipped.
    """

    labels: bool = False
    patients: bool = False
    min_groups: int = 2
    min_samples: int = 3
    all_backbones: bool = False
    analyses: tuple[str, ...] = ()


@dataclass
class AnalysisContext:
    """Everything an analysis reads. Arrays are read-only; rows align with ``metadata``.

    :ivar embeddings: ``(n_images, dim)`` float32 for ``backbone`` (``None`` for all-backbone runs).
    :ivar metadata: one row per image: image_id, sha256, relpath, label, subtype, magnification,
        patient_id, width, height, then one column per clinical column (named as in
        ``clinical_columns``; numeric ones float with NaN for missing, categorical ones text with None).
    :ivar all_embeddings: every backbone of the run by name, rows aligned with ``metadata``.
    :ivar settings: this analysis' settings, an instance of its settings dataclass (the declared
        defaults, overridden by ``tk run --set NAME.KEY=VALUE``): read ``context.settings.top_k``.
    :ivar store: the run's store, to read (``context.results`` covers the usual case): a
        ``toolkit.store.StoreReader``, which has no method that writes (a ``Store`` given is read
        through its reader); the runner stores what ``run`` returns.
    :ivar registry: every loaded plugin (to build a backbone's model, say).
    :ivar clinical_columns: the run's clinical variables (extra manifest columns, ``--clinical``):
        column name -> ``"categorical"`` or ``"numeric"``; each is also a column of ``metadata`` with
        that exact name; empty when the run has none.
    """

    run_id: str
    backbone: str | None
    embeddings: np.ndarray | None
    metadata: pd.DataFrame
    all_embeddings: dict[str, np.ndarray]
    store: StoreReader | Store | None = None
    registry: Registry | None = None
    settings: Any = field(default_factory=NoSettings)
    seed: int = 0
    clinical_columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.store is not None:
            self.store = self.store.reader()

    def results(self, analysis: str, table: str = "main") -> pd.DataFrame:
        """A table stored by ``analysis`` (declared in ``Needs.analyses``) for this run and backbone,
        without the run_id and backbone columns; empty when it stored none."""
        if self.store is None:
            raise RuntimeError("this context has no store to read results from")
        return self.store.results.result_table(self.run_id, analysis, table, self.backbone or "")


@dataclass(frozen=True)
class Analysis:
    """A statistic or model computed from embeddings.

    :param name: lower-case identifier; tables are stored as ``results_<name>[_<table>]``.
    :param run: ``run(context) -> list[Table | Figure | Finding]``; raise ``SkipAnalysis(reason)``
        when the data cannot support it.
    :param needs: requirements checked before ``run`` is called, including the analyses it reads.
    :param title: heading in the report.
    :param settings: the class of the settings it reads from ``context.settings``: a
        ``@dataclass(frozen=True)`` whose fields come from ``toolkit.setting(DEFAULT, HELP)``, each
        typed ``int``, ``float``, ``str``, ``bool`` or ``tuple[X, ...]`` of one of them; users set
        them with ``tk run --set NAME.KEY=VALUE``. A tuple of ``Setting`` is still accepted
        (deprecated) and turned into such a class.
    :param order: where its results appear in a backbone's report section (smaller first).
    :param libraries: distributions whose versions are part of its cache key (e.g. ``"scipy"``);
        tk's own and numpy's always are.
    """

    name: str
    run: Callable[[AnalysisContext], list[Result]]
    needs: Needs = Needs()
    title: str = ""
    description: str = ""
    settings: type = NoSettings
    order: int = 100
    libraries: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.settings, (tuple, list)):  # the deprecated tuple-of-Setting form
            object.__setattr__(self, "settings", from_legacy(self.name, tuple(self.settings)))


@dataclass(frozen=True)
class ExportSettings:
    """What the command that runs an exporter (``tk run``, ``tk export``, ``tk report``) tells it.

    :param reveal_ids: show raw patient ids (``--reveal-ids``); keep them out of shared files otherwise.
    :param backbones: the backbones to export (``tk export --backbone``); empty: every backbone the
        run embedded without failing.
    :param seed: the run's seed, for samples the exporter draws (int8 calibration, parity images).
    """

    reveal_ids: bool = False
    backbones: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class ExportContext:
    """What an exporter reads: the finished run in the store, the loaded plugins and the settings.

    :ivar store: the store, to read: a ``toolkit.store.StoreReader``, which has no method that
        writes (a ``Store`` given is read through its reader).
    :ivar settings: the command's :class:`ExportSettings` (``context.settings.reveal_ids``, ...).
    :ivar registry: every loaded plugin (the default plugins when not given).
    :ivar handed: the rows the exporter handed back (:meth:`replace_rows`), for core to write.
    """

    run_id: str
    store: StoreReader | Store
    settings: ExportSettings = field(default_factory=ExportSettings)
    template_dir: Path | None = None
    registry: Registry | None = None
    handed: list[TableRows] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.store = self.store.reader()
        if self.registry is None:  # the plugins that load without --plugin paths
            from toolkit.plugin.registry import load_registry

            self.registry = load_registry()

    def replace_rows(self, spec: TableSpec, rows: list[dict[str, Any]], where: dict[str, Any]) -> None:
        """Hand back rows for a table the exporter declares (``Exporter.tables``): once ``export``
        returns, core deletes the rows matching ``where`` and inserts ``rows``, in one transaction."""
        from toolkit.store import TableRows

        self.handed.append(TableRows(spec, list(rows), dict(where)))


@dataclass(frozen=True)
class Exporter:
    """Writes files from a finished run (a report, a deployable model, ...).

    :param name: identifier used with ``--export``.
    :param export: ``export(context, out_dir) -> list of written paths``; every path must lie
        inside ``out_dir`` (a path whose joins cannot leave it), and nothing beside it may change.
    :param default: run by ``tk run`` when ``--export`` is not given.
    :param rerender: run again by ``tk report`` (it reads only the store and recomputes nothing).
    :param tables: the tables it writes (``toolkit.store.TableSpec``), by handing rows back with
        ``context.replace_rows``; ``tk export`` prints their ``summary`` columns for the run and
        backbone it exported.
    """

    name: str
    export: Callable[[ExportContext, Path], list[Path]]
    default: bool = False
    description: str = ""
    rerender: bool = False
    tables: tuple[TableSpec, ...] = ()


@dataclass(frozen=True)
class StainNormaliser:
    """A stain normalisation method applied to every image before any backbone sees it
    (``tk run --stain NAME``), at the image's own resolution, before resizing.

    :param name: lower-case identifier used with ``--stain`` and in embedding-set table names.
    :param fit: ``fit(reference)`` -> state: the statistics of a reference image (``(h, w, 3)``
        uint8 RGB, from ``--stain-reference``). The state is a dict of numbers and (nested) lists,
        JSON-serialisable: tk stores it with the embedding set, so that query images (``tk similar``)
        are normalised exactly as the set was.
    :param apply: ``apply(batch, state)`` -> batch: normalise a ``(n, h, w, 3)`` batch of RGB values
        in 0..255 (uint8 or float) to RGB values in 0..255 (any real dtype; tk rounds and clips). An
        image that cannot be normalised (blank background, a single stain) must come back unchanged:
        tk counts such images and shows the count in the report. Vectorise over the batch; never
        loop over pixels in Python.
    :param default_state: the state used when no ``--stain-reference`` is given; ``None`` means the
        method needs a reference image.
    """

    name: str
    fit: Callable[[np.ndarray], dict[str, Any]]
    apply: Callable[[np.ndarray, dict[str, Any]], np.ndarray]
    default_state: dict[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class CliContext:
    """What a command added through ``register_commands`` may use: the ``--plugin`` paths of this
    invocation (to pass on to the run it starts) and every loaded plugin."""

    plugins: list[str]
    registry: Registry
