"""Fault injection: bad inputs and faults across batch editing, image inputs, converters, training checkpoints,
training data and weight loading. For each one: one clear error (or a skip record), no traceback, nothing else lost,
nothing written outside its place, and no code from a file runs (a pickle payload would write a marker file).

Tiny fixtures are built once per module: images, a training run with two checkpoints, a RefCOCO layout.
"""

import io
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from helpers import load_script
from PIL import Image

from smartedit.cli import main as cli
from smartedit.data.recipes import build_parser, convert
from smartedit.data.safe_pickle import load_plain_pickle
from smartedit.data.validate import LayoutError
from smartedit.image_io import ImageInputError, load_image, load_mask, probe_image
from smartedit.train.checkpoint import (RunLock, RunLockedError, read_manifest, step_folders, verify_checkpoint, write_manifest)
from smartedit.train.consolidate import main as consolidate_main

MARKER_NAME = "PAYLOAD_RAN"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """(tiny models on a shared 2-core machine)"""


class Payload:
    """Unpickling this object would run code that writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def png_bytes(w=24, h=16, colour=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), colour if mode == "RGB" else 255).save(buf, format="PNG")
    return buf.getvalue()


def huge_png_header(w=20000, h=20000) -> bytes:
    """A 70-byte PNG that declares w x h pixels (no pixel data): only a header check can refuse it cheaply."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def tree(root) -> set[str]:
    out = set()
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(base, name), root))
    return out


# ---- batch editing: one bad row each -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    jobs = root / "jobs"
    jobs.mkdir()
    (jobs / "a.png").write_bytes(png_bytes())
    (jobs / "mask.png").write_bytes(png_bytes(mode="L"))
    (jobs / "small_mask.png").write_bytes(png_bytes(4, 4, mode="L"))
    (jobs / "empty.png").write_bytes(b"")
    (jobs / "junk.png").write_bytes(b"this is not an image at all")
    (jobs / "truncated.png").write_bytes(png_bytes(64, 64)[:60])
    (jobs / "huge.png").write_bytes(huge_png_header())
    (jobs / "folder.png").mkdir()
    (root / "outside.png").write_bytes(png_bytes())
    os.symlink(root / "outside.png", jobs / "link.png")
    return root


BAD_ROWS = {
    "not-utf8": b"\xff\xfe{}",
    "invalid-json": b'{"image": "a.png", "instruction": ',
    "json-array": b'["a.png", "x"]',
    "json-string": b'"a.png"',
    "missing-image": b'{"instruction": "x"}',
    "missing-instruction": b'{"image": "a.png"}',
    "empty-instruction": b'{"image": "a.png", "instruction": "   "}',
    "instruction-not-text": b'{"image": "a.png", "instruction": 5}',
    "unknown-field": b'{"image": "a.png", "instruction": "x", "strength": 2}',
    "seed-negative": b'{"image": "a.png", "instruction": "x", "seed": -1}',
    "seed-bool": b'{"image": "a.png", "instruction": "x", "seed": true}',
    "seed-float": b'{"image": "a.png", "instruction": "x", "seed": 1.5}',
    "seed-huge": b'{"image": "a.png", "instruction": "x", "seed": 123456789012345678901234567890}',
    "image-not-text": b'{"image": 7, "instruction": "x"}',
    "image-list": b'{"image": ["a.png"], "instruction": "x"}',
    "image-missing-file": b'{"image": "nope.png", "instruction": "x"}',
    "image-folder": b'{"image": "folder.png", "instruction": "x"}',
    "image-empty-file": b'{"image": "empty.png", "instruction": "x"}',
    "image-not-an-image": b'{"image": "junk.png", "instruction": "x"}',
    "image-header-too-large": b'{"image": "huge.png", "instruction": "x"}',
    "image-absolute-outside": b'{"image": "/etc/hostname", "instruction": "x"}',
    "image-dotdot-outside": b'{"image": "../outside.png", "instruction": "x"}',
    "image-symlink-outside": b'{"image": "link.png", "instruction": "x"}',
    "image-nul-byte": b'{"image": "a.png\\u0000.png", "instruction": "x"}',
    "mask-missing-file": b'{"image": "a.png", "instruction": "x", "mask": "nope.png"}',
    "mask-wrong-size": b'{"image": "a.png", "instruction": "x", "mask": "small_mask.png"}',
    "mask-not-an-image": b'{"image": "a.png", "instruction": "x", "mask": "junk.png"}',
    "mask-outside": b'{"image": "a.png", "instruction": "x", "mask": "../outside.png"}',
    "mask-not-text": b'{"image": "a.png", "instruction": "x", "mask": 3}',
    "output-path": b'{"image": "a.png", "instruction": "x", "output": "../escape.png"}',
    "output-subfolder": b'{"image": "a.png", "instruction": "x", "output": "sub/o.png"}',
    "output-dotdot": b'{"image": "a.png", "instruction": "x", "output": ".."}',
    "output-too-long": b'{"image": "a.png", "instruction": "x", "output": "' + b"n" * 300 + b'.png"}',
    "output-not-text": b'{"image": "a.png", "instruction": "x", "output": 12}',
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_batch_bad_row_fails_alone_with_one_clear_line(case, batch_dir, tmp_path, caplog, capsys):
    jobs = batch_dir / "jobs" / f"{case}.jsonl"
    jobs.write_bytes(BAD_ROWS[case] + b"\n")
    before = tree(batch_dir)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="smartedit"):
        code = cli(["edit", "--model", "random:tiny", "--batch", str(jobs), "--output-dir", str(out), "--steps", "1"])
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("line 1: "), errors
    assert "Traceback" not in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "batch_report.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in records] == [(1, "failed")]
    assert tree(batch_dir) - before == set() and before - tree(batch_dir) == {f"jobs/{case}.jsonl"} - before
    assert sorted(os.listdir(out)) == ["batch_report.json", "batch_report.jsonl"]


BAD_BATCH_ARGS = {
    "batch-size-negative": (["--batch-size", "-1"], "--batch-size must be a positive integer"),
    "batch-size-zero": (["--batch-size", "0"], "--batch-size must be a positive integer"),
    "max-pixels-zero": (["--max-pixels", "0"], "--max-pixels must be a positive integer"),
    "seed-negative": (["--seed", "-3"], "--seed must be >= 0"),
    "batch-file-missing": (["--batch", "MISSING"], "does not exist"),
    "batch-file-folder": (["--batch", "FOLDER"], "is a folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCH_ARGS))
def test_batch_bad_arguments_are_one_error(case, batch_dir, tmp_path):
    extra, message = BAD_BATCH_ARGS[case]
    good = batch_dir / "jobs" / "good.jsonl"
    good.write_text(json.dumps({"image": "a.png", "instruction": "x"}) + "\n")
    extra = [{"MISSING": str(tmp_path / "none.jsonl"), "FOLDER": str(tmp_path)}.get(a, a) for a in extra]
    argv = ["edit", "--model", "random:tiny", "--batch", str(good), "--output-dir", str(tmp_path / "out")]
    if "--batch" in extra:
        argv = argv[:4] + argv[6:]
    with pytest.raises(SystemExit) as exc:
        cli(argv + extra)
    text = str(exc.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text
    assert not (tmp_path / "out").exists()


class _Stop(BaseException):
    """Stands in for a kill in the middle of a batch (not an Exception: nothing catches it)."""


def test_batch_killed_midway_keeps_finished_rows_and_a_rerun_skips_them(batch_dir, tmp_path, monkeypatch):
    from smartedit.pipeline import SmartEditPipeline

    jobs = batch_dir / "jobs" / "three.jsonl"
    jobs.write_text("".join(json.dumps({"image": "a.png", "instruction": f"edit {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    argv = ["edit", "--model", "random:tiny", "--batch", str(jobs), "--output-dir", str(out), "--steps", "1",
            "--batch-size", "1"]
    real_call, calls = SmartEditPipeline.__call__, []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise _Stop()
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(SmartEditPipeline, "__call__", dying)
    with pytest.raises(_Stop):
        cli(argv)
    assert sorted(os.listdir(out)) == ["00001_a.png", "00002_a.png", "batch_report.jsonl"]  # no partial file
    monkeypatch.setattr(SmartEditPipeline, "__call__", real_call)
    assert cli(argv) == 0
    summary = json.loads((out / "batch_report.json").read_text())
    assert summary["skipped_already_done"] == [1, 2] and [d["line"] for d in summary["done"]] == [1, 2, 3]


# ---- image inputs (CLI, pipeline, batch, training and converters all read through these) ---------------------
BAD_IMAGES = {
    "empty-bytes": (b"", "empty file"),
    "junk-bytes": (b"GIF89a but not really", "not an image"),
    "truncated-png": (png_bytes(64, 64)[:70], "truncated"),
    "header-too-large": (huge_png_header(), "too large"),
    "header-zero-width": (huge_png_header(0, 10), "not an image"),
    "array-4d": (np.zeros((2, 2, 2, 3), np.uint8), "bad input"),
    "array-5-channels": (np.zeros((4, 4, 5), np.uint8), "bad input"),
    "array-nan": (np.full((4, 4, 3), np.nan, np.float32), "bad input"),
    "array-out-of-range": (np.full((4, 4, 3), 3.0, np.float32), "bad input"),
    "array-int64": (np.zeros((4, 4, 3), np.int64), "bad input"),
    "tensor-2d": (torch.zeros(4, 4), "bad input"),
    "tensor-5-channels": (torch.zeros(5, 4, 4), "bad input"),
    "pil-too-large-for-budget": (Image.new("RGB", (300, 300)), "too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_inputs_are_one_clear_error(case, monkeypatch):
    source, reason = BAD_IMAGES[case]
    if case == "pil-too-large-for-budget":
        monkeypatch.setenv("SMARTEDIT_MAX_PIXELS", "50000")
    with pytest.raises(ImageInputError) as exc:
        load_image(source, "input image")
    assert exc.value.reason == reason and "\n" not in str(exc.value)


@pytest.mark.parametrize("case", ["missing-file", "folder", "empty-file", "bad-budget-env"])
def test_bad_image_files_are_one_clear_error(case, tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    if case == "folder":
        path.mkdir()
    elif case == "empty-file":
        path.write_bytes(b"")
    elif case == "bad-budget-env":
        path.write_bytes(png_bytes())
        monkeypatch.setenv("SMARTEDIT_MAX_PIXELS", "lots")
    with pytest.raises(ImageInputError) as exc:
        probe_image(str(path))
    assert "\n" not in str(exc.value)
    with pytest.raises(ImageInputError):
        load_image(str(path))


def test_mask_of_the_wrong_size_and_budget_from_the_header_without_decoding():
    with pytest.raises(ImageInputError, match="give a mask with the image's size"):
        load_mask(png_bytes(4, 4, mode="L"), (24, 16))
    assert probe_image(png_bytes(24, 16)) == (24, 16)


# ---- converters ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def refcoco_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcoco")
    images = root / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(png_bytes(8, 8))
    (images / "empty.jpg").write_bytes(b"")
    (images / "junk.jpg").write_bytes(b"not an image")
    (images / "huge.jpg").write_bytes(huge_png_header())
    (images / "trunc.jpg").write_bytes(png_bytes(64, 64)[:80])
    records = {1: ("a.jpg", 8, 8), 2: ("empty.jpg", 8, 8), 3: ("junk.jpg", 8, 8), 4: ("huge.jpg", 8, 8),
               5: ("a.jpg", 200000, 200000), 6: ("a.jpg", 0, 8), 7: ("missing.jpg", 8, 8), 8: ("../a.jpg", 8, 8),
               9: ("trunc.jpg", 8, 8)}
    instances = {"images": [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in records.items()],
                 "annotations": [{"id": 10 + i, "image_id": i, "segmentation": [[0, 0, 4, 0, 4, 4]]}
                                 for i in records],
                 "categories": []}
    ann = root / "refcoco"
    ann.mkdir()
    (ann / "instances.json").write_text(json.dumps(instances))
    return root


REF_ITEMS = {  # image id → (reason, whether the skip record names the image file itself)
    2: ("empty file", "empty.jpg"),
    3: ("not an image", "junk.jpg"),
    4: ("too large", "huge.jpg"),
    5: ("too large", None),
    6: ("malformed item", None),
    7: ("file not found", None),
    8: ("path escapes the dataset root", None),
    9: ("truncated", "trunc.jpg"),
}


@pytest.mark.parametrize("image_id", sorted(REF_ITEMS))
def test_refcoco_bad_item_is_skipped_with_the_right_reason_and_file(image_id, refcoco_layout, tmp_path):
    ann = tmp_path / "refcoco"
    shutil.copytree(refcoco_layout / "refcoco", ann)
    sent = [{"sent": "the thing"}]
    refs = [{"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "sentences": sent},
            {"ref_id": 1, "ann_id": 10 + image_id, "image_id": image_id, "split": "train", "sentences": sent}]
    (ann / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    out = tmp_path / "out"
    report = convert("refcoco", build_parser("refcoco").parse_args(
        ["--root", str(ann), "--images", str(refcoco_layout / "images"), "--out", str(out)]))
    assert report.written == 1 and len(report.skips) == 1
    skip = report.skips[0]
    reason, file = REF_ITEMS[image_id]
    assert skip.reason == reason, skip
    if file:
        assert os.path.basename(skip.file) == file and "ref 1" in skip.detail
    else:
        assert os.path.basename(skip.file) == "refs(unc).p" and skip.row == "ref 1"
    assert sorted(os.listdir(out)) == ["refcoco-train-00000.parquet", "refcoco-train.report.json"]


def _deep_pickle(n: int) -> bytes:
    return b"\x80\x04" + b"]" * n + b"a" * (n - 1) + b"."


def _exponential_pickle(levels: int) -> bytes:
    a: list = [1]
    for _ in range(levels):
        a = [a, a]
    return pickle.dumps(a, protocol=4)


def _self_pickle() -> bytes:
    a: list = []
    a.append(a)
    return pickle.dumps(a, protocol=4)


BAD_REFS = {
    "payload": lambda marker: pickle.dumps([{"ref_id": Payload(marker)}], protocol=2),
    "payload-os-system": lambda marker: b"cos\nsystem\n(S'touch " + marker.encode() + b"'\ntR.",
    "persistent-id": lambda marker: b"\x80\x02P0\n.",
    "exponential": lambda marker: _exponential_pickle(60),
    "self-referencing": lambda marker: _self_pickle(),
    "very-deep": lambda marker: _deep_pickle(100000),
    "truncated": lambda marker: pickle.dumps([{"ref_id": 1}] * 10, protocol=2)[:30],
    "empty": lambda marker: b"",
    "not-a-pickle": lambda marker: b"just some text",
    "not-a-list": lambda marker: pickle.dumps({"refs": []}, protocol=2),
    "list-of-numbers": lambda marker: pickle.dumps([1, 2, 3], protocol=2),
}


@pytest.mark.parametrize("case", sorted(BAD_REFS))
def test_refs_pickle_that_is_not_plain_bounded_data_is_one_layout_error(case, refcoco_layout, tmp_path):
    marker = str(tmp_path / MARKER_NAME)
    ann = tmp_path / "refcoco"
    shutil.copytree(refcoco_layout / "refcoco", ann)
    (ann / "refs(unc).p").write_bytes(BAD_REFS[case](marker))
    out = tmp_path / "out"
    with pytest.raises(LayoutError) as exc:
        convert("refcoco", build_parser("refcoco").parse_args(
            ["--root", str(ann), "--images", str(refcoco_layout / "images"), "--out", str(out)]))
    assert "refs(unc).p" in str(exc.value)
    assert not os.path.exists(marker)
    assert not out.exists() or not any(p.endswith(".parquet") for p in os.listdir(out))


def test_plain_pickle_limits_hold_without_a_layout(tmp_path):
    path = tmp_path / "x.p"
    path.write_bytes(_deep_pickle(5000))
    with pytest.raises(pickle.UnpicklingError, match="deeper"):
        load_plain_pickle(path)


@pytest.mark.parametrize("case", ["not-json", "deeply-nested", "not-utf8"])
def test_bad_instances_json_is_one_layout_error(case, refcoco_layout, tmp_path):
    ann = tmp_path / "refcoco"
    shutil.copytree(refcoco_layout / "refcoco", ann)
    (ann / "refs(unc).p").write_bytes(pickle.dumps([], protocol=2))
    body = {"not-json": b"{images: oops", "deeply-nested": b"[" * 200000 + b"]" * 200000,
            "not-utf8": b"\x81\x8d\x8f\x90\x9d"}[case]
    (ann / "instances.json").write_bytes(body)
    with pytest.raises(LayoutError) as exc:
        convert("refcoco", build_parser("refcoco").parse_args(
            ["--root", str(ann), "--images", str(refcoco_layout / "images"), "--out", str(tmp_path / "out")]))
    assert "instances.json" in str(exc.value)


# ---- training checkpoints ------------------------------------------------------------------------------------
STAGE = "train/stage2_mllmsd.py"


def _train_args(output, *extra):
    return ["--preset", "tiny", "--init", "random:tiny", "--output", str(output), "--set", "checkpoint.every=2",
            "--set", "checkpoint.keep_last=2", "--set", "log.progress=false", "--log-level", "WARNING", *extra]


@pytest.fixture(scope="module")
def stage_main():
    return load_script(STAGE).main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, stage_main):
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert stage_main(_train_args(out, "--max-steps", "4")) == 0
    assert [s for s, _ in step_folders(os.path.join(out, "checkpoints"))] == [2, 4]
    return out


def _ckpt(run, step):
    return os.path.join(run, "checkpoints", f"step-{step:08d}")


def _rehash(ckpt):
    """Rewrite the manifest so it matches tampered files (what an attacker would do)."""
    m = read_manifest(ckpt)
    write_manifest(ckpt, {k: v for k, v in m.items() if k not in ("format", "version", "created", "files",
                                                                  "required")}, required=tuple(m["required"]))


def _payload_in(path, marker, key="evil"):
    state = torch.load(path, weights_only=False)  # (our own test file)
    state[key] = Payload(marker)
    torch.save(state, path)


def _mutate(run, case, marker):
    newest, older = _ckpt(run, 4), _ckpt(run, 2)
    ds = os.path.join(newest, "deepspeed", "ds")
    if case in ("payload-model-states", "payload-optimizer-states"):
        name = "mp_rank_00_model_states.pt" if case == "payload-model-states" else \
            "zero_pp_rank_0_mp_rank_00_optim_states.pt"
        for ck in (newest, older):
            _payload_in(os.path.join(ck, "deepspeed", "ds", name), marker)
            _rehash(ck)
    elif case == "same-size-corruption-newest":
        path = os.path.join(ds, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    elif case in ("all-corrupt", "all-corrupt-with-restart"):
        for ck in (newest, older):
            with open(os.path.join(ck, "trainer_state.json"), "a") as f:
                f.write(" ")
    elif case == "manifest-written-first":
        for ck in (newest, older):
            m = read_manifest(ck)
            m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("rng/")}
            json.dump(m, open(os.path.join(ck, "manifest.json"), "w"))
    elif case == "manifest-not-json":
        for ck in (newest, older):
            open(os.path.join(ck, "manifest.json"), "w").write("{not json")
    elif case == "trainer-state-malformed":
        for ck in (newest, older):
            json.dump({"step": "four"}, open(os.path.join(ck, "trainer_state.json"), "w"))
            _rehash(ck)
    elif case == "rng-of-another-rank":
        for ck in (newest, older):
            path = os.path.join(ck, "rng", "rank-00000.json")
            data = json.load(open(path))
            data["rank"] = 1
            json.dump(data, open(path, "w"))
            _rehash(ck)
    elif case == "rng-of-another-step":
        shutil.copy(os.path.join(older, "rng", "rank-00000.json"), os.path.join(newest, "rng", "rank-00000.json"))
        _rehash(newest)
        shutil.rmtree(older)
    elif case == "truncated-model-states":
        for ck in (newest, older):
            path = os.path.join(ck, "deepspeed", "ds", "mp_rank_00_model_states.pt")
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 3])
            _rehash(ck)


RESUME_CASES = {  # case → (extra arguments, exit status, text of the one error line, or None when it recovers)
    "payload-model-states": ([], 2, "refusing to load"),
    "payload-optimizer-states": ([], 2, "refusing to load"),
    "same-size-corruption-newest": ([], 0, None),
    "all-corrupt": ([], 2, "pass --restart"),
    "all-corrupt-with-restart": (["--restart"], 0, None),
    "manifest-written-first": ([], 2, "written before that file"),
    "manifest-not-json": ([], 2, "none of the 2 checkpoint(s)"),
    "trainer-state-malformed": ([], 2, "trainer_state.json is malformed"),
    "rng-of-another-rank": ([], 2, "belongs to rank 1"),
    "rng-of-another-step": ([], 2, "belongs to step 2"),
    "truncated-model-states": ([], 2, "truncated or not a torch checkpoint"),
    "resume-and-restart": (["--restart"], 2, "not both"),
    "resume-missing-folder": ([], 2, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_faults(case, trained_run, stage_main, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = str(tmp_path / MARKER_NAME)
    _mutate(str(run), case, marker)
    extra, status, message = RESUME_CASES[case]
    resume = ["--resume", str(tmp_path / "nowhere") if case == "resume-missing-folder" else "latest"]
    if case == "all-corrupt-with-restart":
        resume = []
    metrics_before = (run / "metrics.jsonl").read_text()
    with caplog.at_level(logging.WARNING):
        code = stage_main(_train_args(run, "--max-steps", "6", *resume, *extra))
    assert code == status, caplog.text[-2000:]
    assert not os.path.exists(marker)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if message is None:
        assert errors == []
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 6 and steps == sorted(set(steps))
        assert os.path.isdir(_ckpt(run, 6))
    else:
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in errors[0], errors
        assert (run / "metrics.jsonl").read_text() == metrics_before  # nothing lost or overwritten
        assert sorted(os.listdir(run / "checkpoints")) == sorted(os.listdir(trained_run / "checkpoints")) or \
            case == "rng-of-another-step"


@pytest.mark.parametrize("case", ["payload-model-states", "payload-optimizer-states", "same-size-corruption-newest",
                                  "truncated-model-states"])
def test_consolidate_faults(case, trained_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = str(tmp_path / MARKER_NAME)
    _mutate(str(run), case, marker)
    with caplog.at_level(logging.ERROR):
        code = consolidate_main([_ckpt(run, 4), str(tmp_path / "exported")])
    assert code == 2 and not os.path.exists(marker)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and ("refusing" in errors[0] or "corrupt" in errors[0] or "truncated" in errors[0])
    assert not (tmp_path / "exported").exists()


def test_manifest_lists_every_file_with_its_hash_and_is_written_last(trained_run):
    for step in (2, 4):
        ck = _ckpt(trained_run, step)
        manifest = read_manifest(ck)
        files = {os.path.relpath(os.path.join(b, n), ck) for b, _, names in os.walk(ck) for n in names}
        assert set(manifest["files"]) == files - {"manifest.json"}
        assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())
        newest_other = max(os.stat(os.path.join(ck, f)).st_mtime_ns for f in files - {"manifest.json"})
        assert os.stat(os.path.join(ck, "manifest.json")).st_mtime_ns >= newest_other
        assert verify_checkpoint(ck) == []
        rng = json.load(open(os.path.join(ck, "rng", "rank-00000.json")))
        assert (rng["rank"], rng["step"]) == (0, step)


def test_resume_restores_the_random_state_of_its_own_rank_and_step(trained_run, tmp_path):
    from smartedit.train.distributed import DistInfo
    from smartedit.train.rng import capture_rng, save_rng, seed_everything
    from smartedit.train.trainer import Trainer

    ck = tmp_path / "ck"
    (ck / "rng").mkdir(parents=True)
    states = {}
    for rank in (0, 1, 2):
        seed_everything(100 + rank)
        save_rng(str(ck / "rng" / f"rank-{rank:05d}.json"), rank=rank, step=6)
        states[rank] = capture_rng()
    trainer = Trainer.__new__(Trainer)
    trainer.step = 6
    for rank in (2, 1, 0):
        trainer.dist = DistInfo(rank=rank, world_size=3, local_rank=rank, device=torch.device("cpu"), backend="gloo")
        seed_everything(0)
        trainer._restore_rng(str(ck))
        assert capture_rng() == states[rank]
    trainer.step = 8
    with pytest.raises(ValueError, match="belongs to step 6"):
        trainer._restore_rng(str(ck))


# ---- training runs: the output folder, the data ------------------------------------------------------------
def test_second_run_into_a_locked_output_folder_is_refused(trained_run, stage_main, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "metrics.jsonl").read_text()
    with RunLock(str(run)):
        with caplog.at_level(logging.ERROR):
            assert stage_main(_train_args(run, "--max-steps", "6", "--resume", "latest")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0] and "in use by another training run" in errors[0]
    assert (run / "metrics.jsonl").read_text() == before


def test_a_killed_runs_forked_worker_does_not_keep_its_folder_locked(tmp_path):
    """A DataLoader worker is a forked child: it must not hold the run's lock after the run is killed."""
    holder = (f"import os, sys, time\nfrom smartedit.train.checkpoint import RunLock\n"
              f"RunLock({str(tmp_path)!r}).acquire()\n"
              f"if os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n"
              f"print('locked', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError):
            RunLock(str(tmp_path)).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with RunLock(str(tmp_path)):  # the forked child is still alive here
            pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def corrupt_data(tmp_path_factory):
    import dataclasses

    from smartedit.data.io import write_samples
    from smartedit.shapes.world import training_samples

    root = tmp_path_factory.mktemp("data")
    samples = list(training_samples("simple", 20, seed=4))
    write_samples([dataclasses.replace(s, source_image=b"") for s in samples], root / "allbad", "bad-train")
    write_samples([dataclasses.replace(s, target_image=huge_png_header()) if i % 2 else s
                   for i, s in enumerate(samples)], root / "half", "half-train")
    return root


TRAIN_DATA_CASES = {
    "source-without-ratio": (["--source", "mine=HALF"], "gives them no ratio"),
    "data-root-ignored": (["--data-root", "ROOT"], "the root would be ignored"),
    "all-rows-corrupt": (["--set", "data.sources={\"mine\": \"ALLBAD\"}", "--set", "data.ratios={\"mine\": 1}"],
                         "unreadable"),
    "skip-budget-spent": (["--set", "data.sources={\"mine\": \"HALF\"}", "--set", "data.ratios={\"mine\": 1}",
                           "--set", "data.max_skipped_fraction=0.01"], "data.max_skipped_fraction"),
    "bad-skip-budget": (["--set", "data.max_skipped_fraction=2"], "max_skipped_fraction must lie in [0, 1]"),
    "missing-source-folder": (["--source", "mine=NOWHERE", "--set", "data.ratios.mine=1"], "not found"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_DATA_CASES))
def test_training_data_faults_stop_with_a_reason(case, corrupt_data, stage_main, tmp_path, caplog):
    extra, message = TRAIN_DATA_CASES[case]
    paths = {"HALF": corrupt_data / "half", "ALLBAD": corrupt_data / "allbad", "ROOT": corrupt_data,
             "NOWHERE": tmp_path / "nowhere"}
    extra = [a.replace(k, str(v)) for a in extra for k, v in [next(((k, v) for k, v in paths.items() if k in a),
                                                                   ("", ""))]]
    with caplog.at_level(logging.ERROR):
        assert stage_main(_train_args(tmp_path / "run", "--max-steps", "3", *extra)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in errors[0], errors


# ---- weight loading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["payload-bin", "truncated-safetensors", "not-json-config", "missing-folder"])
def test_weight_loading_faults(case, tmp_path):
    from smartedit.weights import read_state_dict
    from smartedit.model import SmartEditModel

    marker = str(tmp_path / MARKER_NAME)
    folder = tmp_path / "weights"
    folder.mkdir()
    if case == "payload-bin":
        torch.save({"w": torch.zeros(2), "x": Payload(marker)}, folder / "pytorch_model.bin")
        with pytest.raises(ValueError) as exc:
            read_state_dict(str(folder))
    elif case == "truncated-safetensors":
        (folder / "config.json").write_text(json.dumps({}))
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
        with pytest.raises((ValueError, OSError)) as exc:
            SmartEditModel.from_pretrained(str(folder))
    elif case == "not-json-config":
        (folder / "config.json").write_text("{oops")
        with pytest.raises((ValueError, OSError)) as exc:
            SmartEditModel.from_pretrained(str(folder))
    else:
        with pytest.raises((ValueError, OSError)) as exc:
            SmartEditModel.from_pretrained(str(tmp_path / "nowhere"))
    assert str(exc.value) and not os.path.exists(marker)
