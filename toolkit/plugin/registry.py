"""The plugin manager: loads built-in and third-party plugins and collects what they register.

Plugins come from, in this order: the built-ins (the modules listed by the ``tk.builtins`` entry
point, declared in pyproject.toml), installed packages that
declare an entry point in the group ``tk``, ``*.py`` files in a ``tk_plugins/`` folder of the
working directory, and files or folders given with ``--plugin``. ``TK_LOAD_PLUGINS`` (comma list of
entry-point names, empty for none) restricts which installed packages load; ``TK_BLOCK_PLUGINS``
(comma list of plugin names) blocks any plugin, built-ins included.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType, ModuleType, SimpleNamespace
from typing import Any, Generic, Iterable, TypeVar

import pluggy

from toolkit import __version__
from toolkit.plugin import hookspecs
from toolkit.errors import PluginError, TkError
from toolkit.plugin.results import core_table_taken_by
from toolkit.plugin.settings import declared
from toolkit.plugin.types import Analysis, Backbone, Exporter, StainNormaliser

BUILTIN_GROUP = "tk.builtins"
"""Entry-point group whose entries load a list of built-in plugin module names."""
LOCAL_PLUGIN_DIR = "tk_plugins"
# a SQL identifier part as it is: single underscores between letters and digits, none at the end, so that two
# names never map to one table (`resnet50_` would be `embeddings_resnet50`); \Z: `$` would accept a final newline
PLUGIN_NAME = re.compile(r"^(?=.{1,41}\Z)[a-z][a-z0-9]*(?:_[a-z0-9]+)*\Z")
EXPORTER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}\Z")  # exporter names are never SQL identifiers

T = TypeVar("T", Backbone, Analysis, Exporter, StainNormaliser)


@dataclass(frozen=True)
class Origin:
    """Where a registered item came from."""

    plugin: str
    source: str  # "builtin", "entrypoint", "file"
    version: str


class Register(Generic[T]):
    """The callable handed to ``register_*`` hooks; refuses duplicates and remembers origins."""

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self.items: dict[str, T] = {}
        self.origins: dict[str, Origin] = {}
        self._current: Origin | None = None

    def __call__(self, item: T) -> None:
        kind_name = self.kind.__name__
        if not isinstance(item, self.kind):
            raise PluginError(
                f"plugin {self._plugin_name()} registered a {type(item).__name__} "
                f"where a {kind_name} was expected"
            )
        pattern = EXPORTER_NAME if self.kind is Exporter else PLUGIN_NAME
        if not isinstance(item.name, str) or not pattern.match(item.name):
            raise PluginError(
                f"plugin {self._plugin_name()}: {kind_name.lower()} name {item.name!r} must be "
                "lower-case letters, digits and single underscores, starting with a letter and not ending with _"
            )
        core = core_table_taken_by(item.name) if self.kind is Analysis else None
        if core:
            raise PluginError(f"plugin {self._plugin_name()}: analysis name {item.name!r} would store its results "
                              f"in tk's core table {core}; rename the analysis")
        if self.kind is Analysis:
            try:
                declared(item.settings)
            except TkError as exc:
                raise PluginError(f"plugin {self._plugin_name()}: analysis {item.name!r}: {exc}") from None
        if item.name in self.items:
            raise PluginError(
                f"{kind_name.lower()} {item.name!r} is registered twice: by "
                f"{self.origins[item.name].plugin} and by {self._plugin_name()}; "
                "rename one or block a plugin with TK_BLOCK_PLUGINS"
            )
        self.items[item.name] = item
        self.origins[item.name] = self._current or Origin("unknown", "unknown", "")

    def _plugin_name(self) -> str:
        return self._current.plugin if self._current else "unknown"


@dataclass
class Registry:
    """Everything the loaded plugins registered."""

    backbones: dict[str, Backbone]
    analyses: dict[str, Analysis]
    exporters: dict[str, Exporter]
    origins: dict[tuple[str, str], Origin]
    pm: pluggy.PluginManager
    stain_normalisers: dict[str, StainNormaliser] = field(default_factory=dict)

    def backbone(self, name: str) -> Backbone:
        """A registered backbone (fine-tuned variants: ``toolkit.models.variants.find_backbone``)."""
        return _lookup(self.backbones, name, "backbone")

    def analysis(self, name: str) -> Analysis:
        return _lookup(self.analyses, name, "analysis")

    def exporter(self, name: str) -> Exporter:
        return _lookup(self.exporters, name, "exporter")

    def stain_normaliser(self, name: str) -> StainNormaliser:
        return _lookup(self.stain_normalisers, name, "stain normaliser")

    def listing(self) -> list[dict[str, Any]]:
        """One row per registered item: name, kind, plugin, source, version, and for analyses the
        analyses they read (``needs``) and their settings (key, type, default, choices, help; a list's
        default as it is written with ``--set``, ``a,b``)."""
        rows = []
        for kind, items in (("backbone", self.backbones), ("analysis", self.analyses),
                            ("exporter", self.exporters), ("stain", self.stain_normalisers)):
            for name, item in items.items():
                origin = self.origins[(kind, name)]
                row: dict[str, Any] = {"name": name, "kind": kind, "plugin": origin.plugin,
                                       "source": origin.source, "version": origin.version}
                if kind == "analysis":
                    row["needs"] = list(item.needs.analyses)
                    row["settings"] = [{"key": f"{name}.{s.name}", "type": s.type_name(),
                                        "default": s.text(s.default) if s.container else s.default,
                                        "choices": list(s.choices) if s.choices else None, "help": s.help}
                                       for s in declared(item.settings)]
                rows.append(row)
        return rows


def _lookup(items: dict[str, T], name: str, kind: str) -> T:
    try:
        return items[name]
    except KeyError:
        known = ", ".join(sorted(items)) or "none"
        raise PluginError(f"unknown {kind} {name!r}; available: {known} (see `tk plugins`)") from None


def _csv_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _import_file(path: Path) -> ModuleType:
    module_name = "tk_plugin_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path} cannot be imported; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _plugin_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.py") if not p.name.startswith("_")))
        elif path.is_file():
            files.append(path)
        else:
            raise PluginError(f"plugin path {path} does not exist; give a .py file or a folder of them")
    return files


def hook_functions(plugin: object) -> object:
    """What pluggy registers for a plugin module: a namespace of its functions only.

    pluggy inspects every attribute of a registered object; a module's other attributes include
    modules bound by ``toolkit.lazy.lazy_import``, which that inspection would load. Objects that
    are not modules (a class or instance given as an entry point) are registered as they are.
    """
    if type(plugin) is not ModuleType:
        return plugin
    functions = {name: value for name, value in vars(plugin).items() if type(value) is FunctionType}
    return SimpleNamespace(__name__=plugin.__name__, **functions)


def builtin_plugins() -> list[str]:
    """Module names of the built-in plugins, from the ``tk.builtins`` entry point of the installed tk.

    Core names no built-in: they are found the way installed plugins are, through the same hooks.
    They import from tk only ``toolkit``, ``toolkit.stats`` and ``toolkit.testing``, as a third-party
    plugin can (``tests/test_architecture.py`` checks it).
    """
    names: list[str] = []
    for ep in importlib.metadata.entry_points(group=BUILTIN_GROUP):
        names.extend(ep.load())
    return names


def make_plugin_manager(plugin_paths: Iterable[Path] = ()) -> tuple[pluggy.PluginManager, dict[str, Origin]]:
    """Load every plugin and return the manager with each plugin's origin."""
    pm = pluggy.PluginManager("tk")
    pm.add_hookspecs(hookspecs)
    blocked = _csv_env("TK_BLOCK_PLUGINS") or set()
    for name in blocked:
        pm.set_blocked(name)
    origins: dict[str, Origin] = {}

    for module_name in builtin_plugins():
        short = module_name.rsplit(".", 1)[-1]
        if short in blocked:
            continue
        pm.register(hook_functions(importlib.import_module(module_name)), name=short)
        origins[short] = Origin(short, "builtin", __version__)

    allowed = _csv_env("TK_LOAD_PLUGINS")
    for ep in importlib.metadata.entry_points(group="tk"):
        if (allowed is not None and ep.name not in allowed) or pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"installed plugin {ep.name!r} failed to load: {type(exc).__name__}: {exc}") from exc
        pm.register(hook_functions(plugin), name=ep.name)
        dist = ep.dist.name if ep.dist else ep.name
        version = ep.dist.version if ep.dist else ""
        origins[ep.name] = Origin(f"{ep.name} ({dist})", "entrypoint", version)

    local_dir = Path.cwd() / LOCAL_PLUGIN_DIR
    extra = [local_dir] if local_dir.is_dir() else []
    for path in _plugin_files([*extra, *plugin_paths]):
        name = str(path.resolve())
        if pm.has_plugin(name) or pm.is_blocked(path.stem):
            continue
        module = _import_file(path)
        pm.register(hook_functions(module), name=name)
        origins[name] = Origin(str(path), "file", str(getattr(module, "__version__", "")))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; check the hook names against docs/hooks.md") from exc
    return pm, origins


def _collect(pm: pluggy.PluginManager, origins: dict[str, Origin], hook_name: str, kind: type[T]) -> Register[T]:
    register: Register[T] = Register(kind)
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order
        register._current = origins.get(impl.plugin_name, Origin(impl.plugin_name, "unknown", ""))
        impl.function(register=register)
    register._current = None
    return register


_cache: dict[tuple[str, ...], Registry] = {}


def load_registry(plugin_paths: Iterable[Path | str] = ()) -> Registry:
    """Load plugins once per distinct set of ``--plugin`` paths and return what they registered."""
    paths = tuple(str(Path(p)) for p in plugin_paths)
    key = (*paths, os.environ.get("TK_LOAD_PLUGINS", "\0"), os.environ.get("TK_BLOCK_PLUGINS", ""), os.getcwd())
    if key not in _cache:
        pm, origins = make_plugin_manager(Path(p) for p in paths)
        registers = {
            "backbone": _collect(pm, origins, "register_backbones", Backbone),
            "analysis": _collect(pm, origins, "register_analyses", Analysis),
            "exporter": _collect(pm, origins, "register_exporters", Exporter),
            "stain": _collect(pm, origins, "register_stain_normalisers", StainNormaliser),
        }
        all_origins = {(kind, name): origin for kind, reg in registers.items()
                       for name, origin in reg.origins.items()}
        _cache[key] = Registry(registers["backbone"].items, registers["analysis"].items,
                               registers["exporter"].items, all_origins, pm, registers["stain"].items)
    return _cache[key]
