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


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _to_text(root: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """A copy of ``root`` with byte strings decoded, built with an explicit stack (no recursion)."""
    budget = _Budget(max_nodes, max_depth)
    out_root = budget.visit(root, 0, frozenset())
    if not isinstance(root, _CONTAINERS):
        return out_root
    stack = [_frame(root, 0, frozenset())]
    while True:
        top = stack[-1]
        try:
            item = next(top[1])
        except StopIteration:
            stack.pop()
            built = _rebuild(top[0], top[2])
            if not stack:
                return built
            _deliver(stack[-1], built)
            continue
        child = _collect(top, item, budget)
        if child is not None:
            stack.append(child)


class _Budget:
    """The limits of one copy: every value counts towards ``max_nodes``; containers are checked for depth and
    for containing themselves."""

    def __init__(self, max_nodes: int, max_depth: int):
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.nodes = 0

    def visit(self, value: Any, depth: int, path: frozenset) -> Any:
        """``value`` decoded when it is not a container (None for a container: it is copied by its own frame);
        raises :class:`PickleTooLargeError` past a limit. ``path``: the ids of the containers above it."""
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise PickleTooLargeError(f"the pickle expands to more than {self.max_nodes:,} values (shared "
                                      f"references?)")
        if not isinstance(value, _CONTAINERS):
            return _text(value)
        if depth > self.max_depth:
            raise PickleTooLargeError(f"the pickle nests deeper than {self.max_depth} levels")
        if id(value) in path:
            raise PickleTooLargeError("the pickle contains a container that contains itself")
        return None


def _frame(value: Any, depth: int, path: frozenset) -> list:
    """A stack frame: [source container, its items iterator, collected items, depth, ids on the path]."""
    items = iter(value.items()) if isinstance(value, dict) else iter(value)
    return [value, items, [], depth, path | {id(value)}]


def _collect(top: list, item: Any, budget: _Budget) -> list | None:
    """Add one item of ``top``'s container to its collected items; a child container gets a pending slot (filled
    by :func:`_deliver` once built) and its frame is returned, to be copied next."""
    value, _, collected, depth, path = top
    if isinstance(value, dict):
        key, val = item
        key = _text(key)
        leaf = budget.visit(val, depth + 1, path)
        if isinstance(val, _CONTAINERS):
            collected.append([key, None])
            return _frame(val, depth + 1, path)
        collected.append((key, leaf))
        return None
    leaf = budget.visit(item, depth + 1, path)
    if isinstance(item, _CONTAINERS):
        collected.append(_PENDING)
        return _frame(item, depth + 1, path)
    collected.append(leaf)
    return None


def _rebuild(value: Any, collected: list) -> Any:
    """The plain container of ``value``'s type holding the copied items."""
    if isinstance(value, dict):
        return dict(collected)
    if isinstance(value, list):
        return collected
    if isinstance(value, tuple):
        return tuple(collected)
    return type(value)(collected)


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
