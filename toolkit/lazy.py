"""Deferred imports, so that ``tk --help`` and ``tk plugins`` stay fast.

Loading the plugins to list their commands and analyses imports every plugin module; those that
compute statistics use pandas and scipy.stats (together ~0.7 s of CPU). ``lazy_import`` binds the
name at once and executes the module on its first attribute access (the standard library's
``importlib.util.LazyLoader``).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """``import name`` (a full dotted name), executed when one of its attributes is first used."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def is_loaded(name: str) -> bool:
    """Whether module ``name`` has really been executed (not only bound by :func:`lazy_import`)."""
    module = sys.modules.get(name)
    return module is not None and type(module).__name__ != "_LazyModule"
