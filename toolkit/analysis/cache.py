"""When an analysis' stored results can be reused: the cache key.

A key covers everything a result depends on: the analysis' code (the source of its module and of
every module of the same top-level package it imports, transitively, so that editing a shared
helper re-runs it), the versions of the scientific libraries, the data (embedding tables and every
metadata value), its settings, the seed, and the keys of the analyses whose results it reads.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import sys
import time
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.plugin.types import Analysis

LIBRARIES = ("numpy", "pandas", "scipy", "scikit-learn", "statsmodels")
"""Libraries whose versions are part of every analysis' key; an analysis adds its own in ``libraries``."""


def data_key(tables: list[str], metadata: pd.DataFrame) -> str:
    """Identity of what an analysis reads: the embedding tables and every metadata value, in order."""
    import pandas as pd

    digest = hashlib.sha256("|".join(tables).encode())
    digest.update(pd.util.hash_pandas_object(metadata.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def cache_key(analysis: Analysis, data: str, settings: dict[str, Any], seed: int,
              dependencies: list[str] = ()) -> str:
    """The key under which ``analysis``' results on ``data`` are stored and found again.

    :param settings: its settings as ``toolkit.plugin.settings.settings_record`` writes them (JSON,
        keys sorted), so that the same settings always give the same key.
    """
    text = json.dumps([analysis.name, code_fingerprint(analysis), library_versions(analysis.libraries), data,
                       settings, seed, sorted(dependencies)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def code_fingerprint(analysis: Analysis) -> str:
    """sha256 over the source of the module defining ``analysis.run`` and every module of its
    top-level package that it imports, transitively; unique (never reused) when there is no source."""
    module = inspect.getmodule(analysis.run)
    if module is None or not getattr(module, "__file__", None):
        return f"uncacheable-{time.time_ns()}"  # built in a notebook, a lambda in a REPL...
    digest = hashlib.sha256()
    for name, path in sorted(module_tree(module.__name__).items()):
        digest.update(f"{name}\0{_read(path, *_stamp(path))[0]}".encode())
    return digest.hexdigest()


def module_tree(root: str) -> dict[str, Path]:
    """``root`` and every module of its top-level package that it imports, directly or not (imports
    inside functions included), with their source files."""
    top = root.split(".")[0]
    found: dict[str, Path] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        path = _source_file(name)
        if path is None:
            continue
        found[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = _read(path, *_stamp(path))[1]
        pending.extend(n for n in _absolute(imported, package) if n.split(".")[0] == top and n not in found)
    return found


def _source_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) if module else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec else None
    path = Path(origin) if origin else None
    return path if path is not None and path.suffix == ".py" and path.is_file() else None


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=None)
def _read(path: Path, mtime_ns: int, size: int) -> tuple[str, tuple[tuple[int, str, tuple[str, ...]], ...]]:
    """A source file's sha256 and its imports as (level, module, names), cached by modification time
    and size."""
    source = path.read_bytes()
    imports = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imports += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
    return hashlib.sha256(source).hexdigest(), tuple(imports)


def _absolute(imports: tuple[tuple[int, str, tuple[str, ...]], ...], package: str) -> set[str]:
    """Absolute names of imported modules, and of possible submodules (``from pkg import mod``)."""
    names: set[str] = set()
    for level, module, members in imports:
        base = module
        if level:
            parent = package.rsplit(".", level - 1)[0] if level > 1 else package
            base = f"{parent}.{module}" if module else parent
        names.add(base)
        names.update(f"{base}.{member}" for member in members)
        names.update(_lazy_modules(base, members))
    return {n for n in names if n}


def _lazy_modules(package: str, members: tuple[str, ...]) -> set[str]:
    """The modules that ``package`` loads ``members`` from on first use (``toolkit``'s public names)."""
    origin = getattr(sys.modules.get(package), "_lazy_origin", None)
    if origin is None:
        return set()
    return {found[0] for found in map(origin, members) if found is not None}


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` and ``extra`` (``-`` when not installed)."""
    return {name: _version(name) for name in (*LIBRARIES, *extra)}


@lru_cache(maxsize=None)
def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"
