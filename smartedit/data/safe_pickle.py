"""A restricted unpickler for annotation pickles (RefCOCO's ``refs(unc).p``): only plain containers and numbers.

Unpickling can run arbitrary code through globals (``find_class``) and persistent ids; this loader refuses both,
so only what pickle builds from opcodes alone comes out: dict, list, tuple, set, str, bytes, int, float, bool and
None. Python 2 byte strings (RefCOCO was pickled by Python 2) are decoded as UTF-8 (Latin-1 as a fallback).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

__all__ = ["PlainUnpickler", "load_plain_pickle", "UnsafePickleError"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than plain containers and numbers."""


class PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise UnsafePickleError(f"refusing to load global {module}.{name}: only plain containers (dict, list, tuple) "
                                f"and numbers/strings are allowed in this file")

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing persistent ids: only plain containers and numbers are allowed")


def _to_text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_to_text(k): _to_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_text(v) for v in value)
    return value


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """Load ``path`` with :class:`PlainUnpickler` (raises :class:`UnsafePickleError` on anything else)."""
    with open(path, "rb") as f:
        obj = PlainUnpickler(f, encoding="bytes").load()
    return _to_text(obj)
