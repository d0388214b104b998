"""The catalog of techniques: names → classes with typed, frozen params.

A technique is a ``Technique`` subclass decorated with ``@register`` (``app.engine.base``: a
technique imports the base, never the catalog, so imports run one way) in a module of one of the
engine's capability packages (``measure/``, ``quantize/``, ``prune/``, ``pytorch/``...). Adding
one is adding that file: the catalog finds it by reading each module's source (``ast``, nothing
executed) and imports only the modules that register a technique. Those import only pydantic
and the standard library at module top, so the API can list techniques and validate params
without loading onnxruntime or torch; helpers, which import them at the top, are never imported
here.
"""

from __future__ import annotations

import ast
import importlib
import threading
from collections.abc import Mapping
from pathlib import Path

from app.engine.base import REGISTRY, Technique

_ENGINE = Path(__file__).resolve().parent


def get(name: str) -> type[Technique]:
    _load_builtin()
    return REGISTRY[name]


def all_techniques() -> Mapping[str, type[Technique]]:
    _load_builtin()
    return REGISTRY


def _registers(path: Path) -> bool:
    """Whether the module defines a class decorated with ``@register``."""
    tree = ast.parse(path.read_text(), str(path))
    return any(isinstance(node, ast.ClassDef) and any(
        isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list) for node in tree.body)


def technique_modules() -> list[str]:
    """Dotted names of the engine modules that register a technique, in a stable order."""
    found = []
    for path in sorted(_ENGINE.glob("*/*.py")):
        if path.name != "__init__.py" and _registers(path):
            found.append(".".join(("app", "engine", path.parent.name, path.stem)))
    return found


_loaded = threading.Event()
_loading = threading.Lock()


def _load_builtin() -> None:
    """Import every technique module once. Requests arrive on many threads at once (the API's
    threadpool): one thread discovers and imports, the others wait for it (parsing modules from
    several threads at once broke CPython's ast in a parallel-request test)."""
    if _loaded.is_set():
        return
    with _loading:
        if not _loaded.is_set():
            for name in technique_modules():
                importlib.import_module(name)
            _loaded.set()
