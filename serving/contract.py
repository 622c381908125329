"""The model contract, ``schemas.preprocessing``, as the model server imports it.

``schemas.preprocessing`` is dependency-free, but the ``schemas`` package's ``__init__`` may import
the service's dependencies (e.g. orjson), which the model server's environment lacks. In that case
the contract module is loaded on its own from its file, so both sides still read the same values.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load_standalone() -> ModuleType:
    name = "schemas.preprocessing"
    path = Path(__file__).resolve().parent.parent / "schemas" / "preprocessing.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the model contract from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


try:
    from schemas import preprocessing
except ModuleNotFoundError as exc:
    if exc.name == "schemas" or exc.name == "schemas.preprocessing":
        raise
    preprocessing = _load_standalone()

__all__ = ["preprocessing"]
