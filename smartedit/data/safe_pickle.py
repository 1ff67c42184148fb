"""A restricted unpickler for annotation pickles (RefCOCO's ``refs(unc).p``): only plain containers and numbers.

Unpickling can run arbitrary code through globals (``find_class``) and persistent ids; this loader refuses both,
so only what pickle builds from opcodes alone comes out: dict, list, tuple, set, str, bytes, int, float, bool and
None. Python 2 byte strings (RefCOCO was pickled by Python 2) are decoded as UTF-8 (Latin-1 as a fallback).

Bounded: a pickle can share one object many times (its memo) or contain itself, so a few hundred bytes can stand
for an exponentially large or infinite tree. The result is copied without recursion into plain containers with at
most :data:`MAX_DEPTH` levels and ``MAX_NODES + 4 × file size`` values, and a container that contains itself is
refused; either limit raises :class:`PickleTooLargeError`. The file itself may be at most ``max_bytes`` long.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

__all__ = ["PlainUnpickler", "load_plain_pickle", "UnsafePickleError", "PickleTooLargeError", "MAX_DEPTH",
           "MAX_NODES", "MAX_BYTES"]

MAX_DEPTH = 64
MAX_NODES = 2_000_000
MAX_BYTES = 2 << 30


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than plain containers and numbers."""


class PickleTooLargeError(UnsafePickleError):
    """The pickle is too large, too deep, expands too far or contains itself."""


class PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise UnsafePickleError(f"refusing to load global {module}.{name}: only plain containers (dict, list, tuple) "
                                f"and numbers/strings are allowed in this file")

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing persistent ids: only plain containers and numbers are allowed")


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return value


def _to_text(root: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """A copy of ``root`` with byte strings decoded, built with an explicit stack (no recursion)."""
    nodes = 0
    containers = (dict, list, tuple, set, frozenset)

    def fresh(value: Any, depth: int, path: frozenset) -> Any:
        nonlocal nodes
        nodes += 1
        if nodes > max_nodes:
            raise PickleTooLargeError(f"the pickle expands to more than {max_nodes:,} values (shared references?)")
        if not isinstance(value, containers):
            return _text(value)
        if depth > max_depth:
            raise PickleTooLargeError(f"the pickle nests deeper than {max_depth} levels")
        if id(value) in path:
            raise PickleTooLargeError("the pickle contains a container that contains itself")
        return None

    out_root = fresh(root, 0, frozenset())
    if not isinstance(root, containers):
        return out_root
    # each frame: (source container, its items iterator, collected items, depth, ids on the path)
    def frame(value, depth, path):
        items = iter(value.items()) if isinstance(value, dict) else iter(value)
        return [value, items, [], depth, path | {id(value)}]

    stack = [frame(root, 0, frozenset())]
    result = None
    while stack:
        top = stack[-1]
        value, items, collected, depth, path = top
        try:
            item = next(items)
        except StopIteration:
            stack.pop()
            if isinstance(value, dict):
                built: Any = dict(collected)
            elif isinstance(value, list):
                built = collected
            elif isinstance(value, tuple):
                built = tuple(collected)
            else:
                built = type(value)(collected)
            if stack:
                parent = stack[-1]
                _deliver(parent, built)
            else:
                result = built
            continue
        if isinstance(value, dict):
            key, val = item
            key = _text(key)
            leaf = fresh(val, depth + 1, path)
            if isinstance(val, containers):
                top[2].append([key, None])  # filled when the child container is built
                stack.append(frame(val, depth + 1, path))
            else:
                top[2].append((key, leaf))
        else:
            leaf = fresh(item, depth + 1, path)
            if isinstance(item, containers):
                top[2].append(_PENDING)
                stack.append(frame(item, depth + 1, path))
            else:
                top[2].append(leaf)
    return result


_PENDING = object()


def _deliver(parent: list, built: Any) -> None:
    """Put a finished child container into the last pending slot of its parent frame."""
    collected = parent[2]
    last = collected[-1]
    if isinstance(parent[0], dict):
        collected[-1] = (last[0], built)
    else:
        collected[-1] = built


def load_plain_pickle(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> Any:
    """Load ``path`` with :class:`PlainUnpickler` (raises :class:`UnsafePickleError` on anything else, and
    :class:`PickleTooLargeError` past the limits in the module docstring)."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise PickleTooLargeError(f"{path} is {size:,} bytes, more than the {max_bytes:,} accepted")
    with open(path, "rb") as f:
        obj = PlainUnpickler(f, encoding="bytes").load()
    return _to_text(obj, max_nodes=MAX_NODES + 4 * size)
