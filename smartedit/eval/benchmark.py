"""One interface behind every benchmark, and the one loop that runs them (edit → locate → score → report).

A benchmark is a :class:`Benchmark` subclass in one module: it reads its published layout into
:class:`Sample` s (:meth:`~Benchmark.read`), says where an edit of a sample is written and found
(:meth:`~Benchmark.output_path`, :meth:`~Benchmark.find_outputs`), builds the scored rows
(:meth:`~Benchmark.build_results`), scores one row (:meth:`~Benchmark.score`) and names its metrics and summary
rows (:meth:`~Benchmark.metric_infos`, :meth:`~Benchmark.aggregates`). Everything else is shared by
:func:`run_benchmark`:

- **editing** (``editor`` given): the benchmark's jobs through :class:`~smartedit.eval.generate.Editor` (fixed
  seed per sample), outputs under ``OUT/outputs`` in the benchmark's outputs layout;
- **scoring** that never stops for one sample (a problem becomes the row's status);
- **sharding**: under ``torchrun`` / ``accelerate launch`` every process takes every ``WORLD_SIZE``-th sample
  (:class:`~smartedit.shard.Shard`), writes each finished row to its own progress log under
  ``OUT/partial/`` as it goes, and rank 0 merges all logs into one report, the same report a single process
  writes (every row is computed from its sample alone). A killed or restarted process skips the rows its log
  already holds (a scored row is reused only while its input and output files are unchanged);
- **completeness**: :attr:`EvalRun.incomplete` lists the rows that were not scored for another reason than the
  benchmark's own rules (:attr:`Benchmark.rule_exclusions`); the scripts exit 1 unless ``--allow-partial``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from .generate import EditJob, Editor
from .images import ImageSource, describe_source, find_image
from .judge import Judge
from .report import write_report
from .results import (ERROR, GENERATION_FAILED, OK, Aggregate, BenchmarkError, MetricInfo, SampleProblem,
                      SampleResult)
from .runner import Backbones, EvalRun
from ..shard import ProgressLog, Shard, fingerprint, read_progress, wait_for_ranks

logger = logging.getLogger(__name__)

__all__ = ["Sample", "Generation", "Context", "Benchmark", "run_benchmark", "PARTIAL_DIR"]

PARTIAL_DIR = "partial"


@dataclass
class Sample:
    """One benchmark entry: what to edit (``input`` + ``instruction``) and the benchmark's own ``data``.
    ``problem`` = (status, message) when the benchmark's files for it are incomplete."""

    id: str
    group: str
    instruction: str = ""
    input: ImageSource | None = None
    problem: tuple[str, str] | None = None
    data: Any = None


@dataclass
class Generation:
    """What editing produced: per-job seeds, failure messages and replies (a model that writes one), and the
    editor's settings record."""

    seeds: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What scoring can use: the metric backbones, the judge, the benchmark's scoring options."""

    backbones: Backbones
    judge: Judge | None = None
    allow_size_mismatch: bool = False


class Benchmark:
    """Subclass per benchmark; ``data`` is the benchmark folder / file the user gives."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    backbone_kinds: ClassVar[tuple[str, ...]] = ()
    """Metric backbones the benchmark uses (``clip``, ``dino``, ``lpips``)."""
    uses_judge: ClassVar[bool] = False
    """True when the benchmark's protocol is scored by a VLM judge (``--judge``)."""
    rule_exclusions: ClassVar[frozenset[str]] = frozenset()
    """Statuses the benchmark's own rules drop (e.g. Emu Edit's bad captions): they do not make a run partial."""
    outputs_layout: ClassVar[str] = ""
    """The ``--outputs`` layout in one line, for error messages."""

    def __init__(self, data: str | os.PathLike):
        self.data = data

    # ---- reading -------------------------------------------------------------------------------------------
    def read(self) -> tuple[list[Sample], list[str]]:
        """Every sample (stable order) and notes about the data; BenchmarkError when ``data`` is not the layout."""
        raise NotImplementedError

    def run_info(self) -> dict[str, Any]:
        return {"data": os.fspath(self.data)}

    # ---- outputs -------------------------------------------------------------------------------------------
    def output_path(self, sample: Sample, outputs: Path) -> Path:
        """Where the edit of ``sample`` is written with ``--model`` (and looked for first with ``--outputs``)."""
        raise NotImplementedError

    def find_outputs(self, samples: Sequence[Sample], outputs: Sequence[Path]) -> dict[str, Path]:
        """Sample id → output file found (any image extension); samples without one are left out."""
        found = {}
        for s in samples:
            for root in outputs:
                want = self.output_path(s, root)
                p = find_image(want.parent, want.stem)
                if p is not None:
                    found[s.id] = p
                    break
        return found

    def expected_output(self, sample: Sample, outputs: Sequence[Path]) -> Path:
        """The path named in a ``missing_output`` message."""
        return self.output_path(sample, outputs[0])

    # ---- editing -------------------------------------------------------------------------------------------
    def generate(self, samples: Sequence[Sample], editor: Editor, outputs: Path) -> None:
        """Edit every sample that has no problem (one job each); benchmarks with chains override this."""
        jobs = [EditJob(s.id, s.input, s.instruction, self.output_path(s, outputs)) for s in samples
                if s.problem is None]
        editor.run(jobs, desc=f"{self.title}: editing")

    seed_lists: ClassVar[bool] = False
    """True when a row depends on several edits (a chain): its ``meta.seed`` is then the list of their seeds."""

    def job_ids(self, result: SampleResult) -> list[str]:
        """The editing jobs a result depends on (their seeds go into ``meta.seed``, their failures fail it)."""
        return [result.id]

    # ---- scoring -------------------------------------------------------------------------------------------
    def build_results(self, samples: Sequence[Sample], found: dict[str, Path], outputs: Sequence[Path]
                      ) -> list[SampleResult]:
        """One row per sample by default (``payload`` = (sample, output path))."""
        results = []
        for s in samples:
            output = found.get(s.id) or self.expected_output(s, outputs)
            r = SampleResult(id=s.id, group=s.group, meta={"instruction": s.instruction,
                                                           "input": describe_source(s.input),
                                                           "output": describe_source(output)})
            r.visuals = [("input", s.input), ("output", output)]
            r.payload = (s, output)
            if s.problem is not None:
                r.fail(*s.problem)
            results.append(r)
        return results

    def metric_infos(self, ctx: Context) -> dict[str, MetricInfo]:
        raise NotImplementedError

    def score(self, result: SampleResult, ctx: Context) -> dict[str, float]:
        """The metrics of one row; raise SampleProblem for anything that prevents scoring it."""
        raise NotImplementedError

    def aggregates(self, samples: Sequence[Sample]) -> list[Aggregate]:
        groups = list(dict.fromkeys(s.group for s in samples))
        return [Aggregate("all", tuple(groups))] + [Aggregate(g, (g,)) for g in groups]

    def notes(self, ctx: Context) -> list[str]:
        return []


def _stamp(result: SampleResult) -> list[Any]:
    """The files a row was computed from (path, size, mtime): a stored row is reused only while they match."""
    out = []
    for _, src in result.visuals:
        if isinstance(src, (str, os.PathLike)):
            try:
                st = os.stat(src)
                out.append([os.fspath(src), st.st_size, st.st_mtime_ns])
            except OSError:
                out.append([os.fspath(src), None, None])
    return out


def _overlay(result: SampleResult, record: dict[str, Any]) -> None:
    result.status, result.message = record["status"], record["message"]
    result.metrics = {k: (float("nan") if v is None else v) for k, v in record["metrics"].items()}
    result.meta = record["meta"]


def _score_one(bench: Benchmark, r: SampleResult, ctx: Context) -> None:
    if not r.ok:
        return
    try:
        r.metrics = bench.score(r, ctx)
    except SampleProblem as e:
        r.fail(e.status, e.message)
    except Exception as e:  # never stop the run for one sample; the message is in the report
        logger.exception("unexpected error while scoring %s", r.id)
        r.fail(ERROR, f"{type(e).__name__}: {e}")


def _apply_generation(bench: Benchmark, results: list[SampleResult], gen: Generation) -> None:
    for r in results:
        jobs = bench.job_ids(r)
        seeds = [gen.seeds.get(j) for j in jobs]
        r.meta["seed"] = seeds if bench.seed_lists else seeds[0]
        if any(j in gen.replies for j in jobs):  # what the model said before each edit
            replies = [gen.replies.get(j) for j in jobs]
            r.meta["reply"] = replies if bench.seed_lists else replies[0]
        failed = [gen.failures[j] for j in jobs if j in gen.failures]
        if r.ok and failed:
            r.fail(GENERATION_FAILED, failed[0])


def run_benchmark(bench: Benchmark, *, out: str | os.PathLike, outputs: str | os.PathLike | Sequence | None = None,
                  editor: Editor | None = None, backbones: Backbones | None = None, judge: Judge | None = None,
                  limit: int | None = None, max_visual: int = 16, allow_size_mismatch: bool = False,
                  shard: Shard | None = None, run_info: dict[str, Any] | None = None, notes: list[str] | None = None,
                  merge_timeout: float = 7 * 24 * 3600) -> EvalRun:
    """Edit (with ``editor``) or read ``outputs``, score, and (on rank 0) write the report into ``out``.

    The phases: read the samples, record the run's settings, edit this rank's samples (:func:`_generate`), score
    them (:func:`_score_rows`), merge every rank's rows (rank 0, :func:`_merge_ranks`), write the report."""
    if (outputs is None) == (editor is None):
        raise ValueError("give exactly one of outputs= (score existing edits) or editor= (run a model)")
    shard = shard or Shard.from_env()
    backbones = backbones or Backbones()
    out = Path(out)
    samples, data_notes = _read_samples(bench, limit)
    ctx = Context(backbones=backbones, judge=judge, allow_size_mismatch=allow_size_mismatch)
    info, roots = _run_info(bench, out, outputs, editor, judge, run_info)
    metrics = bench.metric_infos(ctx)
    fp = fingerprint({"benchmark": bench.name, "run": {k: v for k, v in info.items() if k != "generation"},
                      "generation": {k: v for k, v in (editor.info if editor else {}).items() if k != "device"},
                      "metrics": {k: m.to_dict() for k, m in metrics.items()}, "limit": limit,
                      "allow_size_mismatch": allow_size_mismatch})
    partial = out / PARTIAL_DIR
    log = ProgressLog(partial, shard, fp)
    done = log.records()
    mine = shard.select(samples)
    if shard.distributed:
        logger.info("%s: rank %d of %d takes %d of %d samples", bench.title, shard.rank, shard.world_size,
                    len(mine), len(samples))

    gen = _generate(bench, editor, mine, done, log, roots[0]) if editor is not None else None
    if editor is None and not bench.find_outputs(samples, roots):
        raise BenchmarkError(f"no {bench.title} outputs found in {', '.join(map(os.fspath, roots))}: expected "
                             f"{bench.outputs_layout}")
    results = _score_rows(bench, mine, roots, done, gen, ctx, log)
    log.mark_done(len(results))
    if not shard.is_main:
        return EvalRun(summary={}, results=results, out_dir=out, merged=False)
    if shard.distributed:
        results = _merge_ranks(bench, samples, roots, partial, fp, shard, editor, merge_timeout)

    all_notes = (list(data_notes) + list(notes or []) + backbones.notes() + bench.notes(ctx)
                 + _judge_notes(judge, results))
    summary = write_report(out, benchmark=bench.name, title=bench.title, results=results, metrics=metrics,
                           aggregates=bench.aggregates(samples), run_info=info, notes=all_notes,
                           max_visual=max_visual)
    run = EvalRun(summary=summary, results=results, out_dir=out)
    run.incomplete = [r for r in results if not r.ok and r.status not in bench.rule_exclusions]
    return run


def _read_samples(bench: Benchmark, limit: int | None) -> tuple[list[Sample], list[str]]:
    """The benchmark's samples (the first ``limit``) and its data notes; none at all is a BenchmarkError."""
    samples, data_notes = bench.read()
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise BenchmarkError(f"no {bench.title} samples in {os.fspath(bench.data)!r}")
    return samples, data_notes


def _run_info(bench: Benchmark, out: Path, outputs, editor: Editor | None, judge: Judge | None,
              run_info: dict[str, Any] | None) -> tuple[dict[str, Any], list[Path]]:
    """The run's settings for the report, and the folders the edits are found in (``OUT/outputs`` when editing;
    a given outputs folder must exist)."""
    info: dict[str, Any] = {**bench.run_info(), **(run_info or {})}
    if editor is not None:
        roots = [out / "outputs"]
        info["generation"] = editor.info
    else:
        roots = [Path(p) for p in ([outputs] if isinstance(outputs, (str, os.PathLike)) else outputs)]
        for p in roots:
            if not p.is_dir():
                raise BenchmarkError(f"outputs folder {os.fspath(p)!r} does not exist; expected "
                                     f"{bench.outputs_layout}")
    info["outputs"] = os.fspath(roots[0]) if len(roots) == 1 else [os.fspath(p) for p in roots]
    if judge is not None:
        info["judge"] = judge.info.to_dict()
    return info, roots


def _generate(bench: Benchmark, editor: Editor, mine: list[Sample], done: list[dict], log: ProgressLog,
              root: Path) -> Generation:
    """Edit this rank's samples that its progress log does not hold yet, in chunks of 4 editor batches, logging
    each chunk's seeds and failures; returns every seed and failure (earlier runs' included)."""
    gen = Generation(info=editor.info)
    generated = set()
    for rec in done:
        if rec.get("kind") == "generated":
            generated.update(rec["samples"])
            gen.seeds.update(rec["seeds"])
            gen.failures.update(rec["failures"])
            gen.replies.update(rec.get("replies", {}))
    todo = [s for s in mine if s.id not in generated]
    chunk = max(1, int(editor.settings.batch_size)) * 4
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        before = set(editor.seeds) | set(editor.failures)
        bench.generate(part, editor, root)
        new = (set(editor.seeds) | set(editor.failures)) - before
        seeds = {k: editor.seeds[k] for k in new if k in editor.seeds}
        failures = {k: editor.failures[k] for k in new if k in editor.failures}
        replies = {k: editor.replies[k] for k in new if k in getattr(editor, "replies", {})}
        gen.seeds.update(seeds)
        gen.failures.update(failures)
        gen.replies.update(replies)
        log.append({"kind": "generated", "samples": [s.id for s in part], "seeds": seeds, "failures": failures,
                    **({"replies": replies} if replies else {})})
    return gen


def _score_rows(bench: Benchmark, mine: list[Sample], roots: list[Path], done: list[dict], gen: Generation | None,
                ctx: Context, log: ProgressLog) -> list[SampleResult]:
    """This rank's rows: those its progress log scored OK from unchanged files are reused, the others are scored
    and logged."""
    scored = {rec["id"]: rec for rec in done if rec.get("kind") == "result" and rec.get("status") == OK}
    found = bench.find_outputs(mine, roots)
    results = bench.build_results(mine, found, roots)
    if gen is not None:
        _apply_generation(bench, results, gen)
    todo = []
    for r in results:
        rec = scored.get(r.id)
        if rec is not None and rec.get("stamp") == _stamp(r):
            _overlay(r, rec)
        else:
            todo.append(r)
    for r in tqdm(todo, desc=f"{bench.title}: scoring", unit="sample", disable=not todo):
        _score_one(bench, r, ctx)
        log.append({"kind": "result", "stamp": _stamp(r), **r.to_dict()})
    return results


def _merge_ranks(bench: Benchmark, samples: list[Sample], roots: list[Path], partial: Path, fp: str, shard: Shard,
                 editor: Editor | None, merge_timeout: float) -> list[SampleResult]:
    """Rank 0: wait for every rank, then rebuild every row from the ranks' progress logs (the single-process
    report's rows)."""
    wait_for_ranks(partial, shard, fp, timeout=merge_timeout)
    records = read_progress(partial, fp)
    gen_all = Generation(info=editor.info) if editor is not None else None
    for rec in records:
        if rec.get("kind") == "generated" and gen_all is not None:
            gen_all.seeds.update(rec["seeds"])
            gen_all.failures.update(rec["failures"])
    rows = {rec["id"]: rec for rec in records if rec.get("kind") == "result"}  # last record wins
    found = bench.find_outputs(samples, roots)
    results = bench.build_results(samples, found, roots)
    if gen_all is not None:
        _apply_generation(bench, results, gen_all)
    missing = [r.id for r in results if r.id not in rows]
    if missing:
        raise BenchmarkError(f"{len(missing)} rows have no record in {os.fspath(partial)} (e.g. {missing[:3]}); "
                             f"run every rank again, they resume")
    for r in results:
        _overlay(r, rows[r.id])
    return results


def _judge_notes(judge: Judge | None, results: list[SampleResult]) -> list[str]:
    """The judge's note, and how many of its replies could not be parsed (none without a judge)."""
    if judge is None:
        return []
    unparsed = sum(1 for r in results for q in r.meta.get("judge", []) if q.get("unparsed"))
    notes = [judge.note()]
    if unparsed:
        notes.append(f"{unparsed} judge replies could not be parsed: those scores are n/a (replies kept "
                     f"in samples.json, meta.judge)")
    return notes
