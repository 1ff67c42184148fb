"""Splitting a list of work items across the processes a launcher starts, and resumable per-rank progress files.

``torchrun`` and ``accelerate launch`` start one process per GPU and tell each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; a plain ``python`` run is rank 0 of 1). :class:`Shard` gives every
process a fixed, interleaved part of the items (item ``i`` belongs to rank ``i mod world_size``), so the split
depends only on the item order, never on timing, and anything derived from an item (its seed, its output path)
is the same whichever process handles it.

:class:`ProgressLog` is one rank's append-only JSONL record of finished items: written (and flushed) after every
item, so a killed rank loses at most the item it was working on and skips the recorded ones when started again.
Every log starts with a header holding a *fingerprint* of the run (what would make old records wrong: data,
model, settings); records under another fingerprint are ignored. Ranks never talk to each other: when a rank is
done it writes a marker file, and rank 0 waits for every marker and reads all logs (so a shared folder is all
that several nodes need). Used by :mod:`smartedit.eval.benchmark` and ``smartedit edit --batch``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["Shard", "ProgressLog", "fingerprint", "wait_for_ranks", "read_progress"]

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun / accelerate "
                         f"launch; unset it for a single-process run)") from None


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world_size`` processes (``rank`` 0 merges and reports)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"invalid shard rank {self.rank} of world size {self.world_size} "
                             f"(local rank {self.local_rank}): need 0 <= rank < world_size")

    @classmethod
    def from_env(cls) -> "Shard":
        """From ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (torchrun, accelerate launch); rank 0 of 1 without them."""
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        return cls(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank if world > 1 else 0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def select(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th one, starting at ``rank`` (order kept)."""
        return [item for i, item in enumerate(items) if self.owns(i)]

    def device(self, device: str) -> str:
        """``cuda`` → ``cuda:<local rank>`` when several processes run (one GPU each); anything else unchanged."""
        if self.distributed and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    @property
    def tag(self) -> str:
        return f"rank{self.rank}-of-{self.world_size}"


def fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a JSON-serialisable run description (sorted keys)."""
    text = json.dumps(config, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_progress(folder: str | os.PathLike, fp: str) -> list[dict[str, Any]]:
    """Every record (in file order, files sorted by name) of every progress log in ``folder`` whose header
    carries fingerprint ``fp``; a torn last line (a killed writer) is skipped."""
    records: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("*.jsonl")) if Path(folder).is_dir() else []:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if not lines:
            continue
        try:
            header = json.loads(lines[0])
        except ValueError:
            continue
        if header.get("fingerprint") != fp:
            logger.info("ignoring %s: written by a run with other settings", path)
            continue
        for line in lines[1:]:
            try:
                records.append(json.loads(line))
            except ValueError:
                logger.warning("%s: skipping an unfinished line (the process was killed while writing it)", path)
    return records


class ProgressLog:
    """One rank's append-only record file ``folder/<rank tag>.jsonl`` and its ``.done`` marker."""

    def __init__(self, folder: str | os.PathLike, shard: Shard, fp: str):
        self.folder = Path(folder)
        self.shard = shard
        self.fingerprint = fp
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{shard.tag}.jsonl"
        self.done_path = self.folder / f"{shard.tag}.done"
        self.done_path.unlink(missing_ok=True)
        fresh = True
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                first = f.readline()
            try:
                fresh = json.loads(first).get("fingerprint") != fp
            except ValueError:
                fresh = True
            if fresh:
                logger.info("%s was written by a run with other settings: starting it again", self.path)
        if fresh:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"fingerprint": fp, "rank": shard.rank, "world_size": shard.world_size}) + "\n")
        else:
            self._repair_tail()

    def _repair_tail(self) -> None:
        """A writer killed mid-line leaves no newline at the end: cut the torn line so appends stay valid."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[:data.rfind(b"\n") + 1])

    def records(self) -> list[dict[str, Any]]:
        """Every record of every log in the folder with this run's fingerprint (other ranks' too)."""
        return read_progress(self.folder, self.fingerprint)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.append(r)

    def mark_done(self, count: int) -> None:
        tmp = self.done_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "count": count}), encoding="utf-8")
        os.replace(tmp, self.done_path)


def wait_for_ranks(folder: str | os.PathLike, shard: Shard, fp: str, timeout: float = 7 * 24 * 3600,
                   poll: float = 2.0) -> None:
    """Block until every rank of ``shard``'s world has written its ``.done`` marker for fingerprint ``fp``."""
    folder = Path(folder)
    start = time.monotonic()
    waiting: list[int] = []
    while True:
        waiting = []
        for r in range(shard.world_size):
            marker = folder / f"{Shard(r, shard.world_size).tag}.done"
            try:
                ok = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fp
            except (OSError, ValueError):
                ok = False
            if not ok:
                waiting.append(r)
        if not waiting:
            return
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"ranks {waiting} of {shard.world_size} did not finish within {timeout:.0f} s "
                               f"(no .done marker in {os.fspath(folder)}); start them again, they resume")
        time.sleep(poll)
