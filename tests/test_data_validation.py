"""Bad items are skipped and reported with file and row (never a crash, never a silent drop); a wholly wrong layout
is one clear error naming what was expected."""

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from smartedit.data.io import ParquetSampleDataset, write_samples
from smartedit.data.recipes import build_parser, convert, run_recipe
from smartedit.data.schema import Sample
from smartedit.data.validate import LayoutError, Report, safe_path

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(w=12, h=10, seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def cell(data):
    return None if data is None else {"bytes": data, "path": None}


def convert_args(name: str, argv: list[str]):
    return build_parser(name).parse_args(argv)


def skips(report: Report) -> list[tuple]:
    return [(Path(s.file).name, s.row, s.reason) for s in report.skips]


def test_ip2p_corrupt_truncated_and_missing_fields_are_reported(tmp_path):
    good = png()
    truncated = good[: len(good) // 2]
    rows = {
        "original_image": [cell(good), cell(b"definitely not an image"), cell(good), cell(truncated), None, cell(good)],
        "edit_prompt": ["a", "b", None, "d", "e", "f"],
        "edited_image": [cell(png(seed=1))] * 6,
    }
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({k: pa.array(v, type=IMAGE_STRUCT if "image" in k else None) for k, v in rows.items()}),
                   path)
    out = tmp_path / "out"
    report = convert("ip2p", convert_args("ip2p", ["--data", str(tmp_path), "--out", str(out)]))
    assert report.written == 2
    assert skips(report) == [
        (path.name, 1, "not an image"),
        (path.name, 2, "missing field"),
        (path.name, 3, "truncated"),
        (path.name, 4, "missing field"),
    ]
    assert "original_image" in report.skips[0].detail
    saved = json.loads((out / "ip2p-train.report.json").read_text())
    assert saved["written"] == 2 and saved["skipped"] == 4
    assert saved["skipped_by_reason"] == {"not an image": 1, "truncated": 1, "missing field": 2}
    assert [s["row"] for s in saved["skips"]] == [1, 2, 3, 4]
    assert [s.instruction for s in ParquetSampleDataset(out)] == ["a", "f"]


def test_magicbrush_mask_of_the_wrong_size_is_skipped(tmp_path):
    mask_ok = Image.new("L", (12, 10), 0)
    mask_ok.paste(255, (0, 0, 5, 5))
    mask_bad = Image.new("L", (11, 10), 255)
    rows = {"img_id": ["1", "2"], "turn_index": [1, 1], "source_img": [cell(png()), cell(png())],
            "mask_img": [cell(_enc(mask_ok)), cell(_enc(mask_bad))], "instruction": ["x", "y"],
            "target_img": [cell(png(seed=2)), cell(png(seed=3))]}
    path = tmp_path / "train-00000-of-00001.parquet"
    types = {"turn_index": pa.int32()}
    pq.write_table(pa.table({k: pa.array(v, type=IMAGE_STRUCT if "img" in k and k != "img_id" else types.get(k))
                             for k, v in rows.items()}), path)
    report = convert("magicbrush", convert_args("magicbrush", ["--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                                               "--splits", "train"]))
    assert report.written == 1
    assert skips(report) == [(path.name, 1, "mask of the wrong size")]
    assert "11x10" in report.skips[0].detail and "12x10" in report.skips[0].detail


def test_a_layout_error_midway_leaves_no_shards(tmp_path):
    rows = {"img_id": ["1"], "turn_index": [1], "source_img": [cell(png())], "mask_img": [None],
            "instruction": ["x"], "target_img": [cell(png(seed=2))]}
    pq.write_table(pa.table({k: pa.array(v, type=IMAGE_STRUCT if k.endswith("_img") else None)
                             for k, v in rows.items()}), tmp_path / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"img_id": ["2"]}), tmp_path / "dev-00000-of-00001.parquet")
    out = tmp_path / "o"
    with pytest.raises(LayoutError, match="dev-00000-of-00001.parquet is not in the MagicBrush HF parquet layout"):
        convert("magicbrush", convert_args("magicbrush", ["--data", str(tmp_path), "--out", str(out),
                                                          "--shard-size", "1"]))
    assert not list(out.glob("*.parquet*"))  # the train shard written before the error is removed too


def _enc(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_paths_escaping_the_root_are_skipped(tmp_path):
    root = tmp_path / "syn"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(png())
    (tmp_path / "outside.png").write_bytes(png())
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    items = [
        {"origin_img_path": "images/a.png", "target_img_path": "images/a.png", "instruction": ["ok"]},
        {"origin_img_path": "../outside.png", "target_img_path": "images/a.png", "instruction": ["dotdot"]},
        {"origin_img_path": str(tmp_path / "outside.png"), "target_img_path": "images/a.png", "instruction": ["abs"]},
        {"origin_img_path": "images/link.png", "target_img_path": "images/a.png", "instruction": ["symlink"]},
        {"origin_img_path": "images/missing.png", "target_img_path": "images/a.png", "instruction": ["gone"]},
        {"origin_img_path": "images/a.png", "instruction": ["no target"]},
    ]
    (root / "data.json").write_text(json.dumps(items))
    report = convert("synthetic_reasoning", convert_args("synthetic_reasoning", [
        "--json", str(root / "data.json"), "--out", str(tmp_path / "o")]))
    assert report.written == 1
    assert skips(report) == [("data.json", 1, "path escapes the dataset root"),
                             ("data.json", 2, "path escapes the dataset root"),
                             ("data.json", 3, "path escapes the dataset root"),
                             ("data.json", 4, "file not found"),
                             ("data.json", 5, "missing field")]
    assert "'target_img_path'" in report.skips[-1].detail
    assert safe_path(root, "images/a.png").endswith("a.png")


def test_refcoco_bad_refs_are_reported_per_ref(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(png(8, 8))
    (images / "small.jpg").write_bytes(png(4, 4))
    instances = {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8},
                            {"id": 2, "file_name": "small.jpg", "width": 8, "height": 8},
                            {"id": 3, "file_name": "../escape.jpg", "width": 8, "height": 8}],
                 "annotations": [{"id": 10, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]},
                                 {"id": 11, "image_id": 2, "segmentation": [[0, 0, 4, 0, 4, 4]]},
                                 {"id": 12, "image_id": 3, "segmentation": [[0, 0, 4, 0, 4, 4]]}],
                 "categories": []}
    root = tmp_path / "refcoco"
    root.mkdir()
    (root / "instances.json").write_text(json.dumps(instances))
    sent = [{"sent": "the thing"}]
    refs = [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train", "sentences": sent},
            {"ref_id": 1, "ann_id": 99, "image_id": 1, "split": "train", "sentences": sent},
            {"ref_id": 2, "ann_id": 11, "image_id": 2, "split": "train", "sentences": sent},
            {"ref_id": 3, "ann_id": 12, "image_id": 3, "split": "train", "sentences": sent},
            {"ref_id": 4, "ann_id": 10, "image_id": 1, "split": "train", "sentences": []}]
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    report = convert("refcoco", convert_args("refcoco", ["--root", str(root), "--images", str(images),
                                                         "--out", str(tmp_path / "o")]))
    assert report.written == 1
    assert skips(report) == [("refs(unc).p", "ref 1", "missing field"),
                             ("refs(unc).p", "ref 2", "mask of the wrong size"),
                             ("refs(unc).p", "ref 3", "path escapes the dataset root"),
                             ("refs(unc).p", "ref 4", "missing field")]


def test_check_shards_reports_bad_rows(tmp_path):
    from smartedit.data.check import check_shards

    good = Sample("a/0", "a", "edit", instruction="x", source_image=png(), target_image=png(seed=1))
    bad_image = Sample("a/1", "a", "edit", instruction="x", source_image=b"junk", target_image=png())
    bad_mask = Sample("a/2", "a", "edit", instruction="x", source_image=png(), target_image=png(),
                      mask_image=png(5, 5, mode="L"))
    no_text = Sample("a/3", "a", "caption", caption=" ")
    write_samples([good, bad_image, bad_mask, no_text], tmp_path, "a-train")
    report = check_shards(tmp_path)
    assert report.written == 1
    assert [(s.row, s.reason) for s in report.skips] == [
        (1, "not an image"), (2, "mask of the wrong size"), (3, "missing caption")]


# ---- wholly wrong layouts ---------------------------------------------------------------------------------

def test_parquet_without_the_expected_columns_is_one_clear_error(tmp_path, capsys):
    pq.write_table(pa.table({"image": [b"x"], "text": ["y"]}), tmp_path / "train-00000-of-00001.parquet")
    with pytest.raises(LayoutError, match=r"not in the MagicBrush HF parquet layout: missing column\(s\) \['img_id'"):
        convert("magicbrush", convert_args("magicbrush", ["--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                                          "--splits", "train"]))
    assert run_recipe("ip2p", ["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "expected columns ['original_image', 'edited_image', 'edit_prompt']" in err
    assert not list((tmp_path / "o").glob("*.parquet"))


@pytest.mark.parametrize("name,argv,match", [
    ("ip2p", ["--data", "{tmp}/nothing_here"], r"no InstructPix2Pix HF parquet shards found .* expected train-\*"),
    ("refcoco", ["--root", "{tmp}", "--images", "{tmp}"], r"no refs\(\*\)\.p in .* expected e\.g\. refs\(unc\)\.p"),
    ("grefcoco", ["--root", "{tmp}", "--images", "{tmp}"], r"no grefs\(\*\)\.json"),
    ("cocostuff", ["--images", "{tmp}", "--labels", "{tmp}"], r"no \*\.png label maps .* 255 = unlabeled"),
    ("reasonseg", ["--root", "{tmp}"], r"no \*\.json annotations .* ReasonSeg"),
    ("synthetic_reasoning", ["--json", "{tmp}/missing.json"], r"missing\.json not found: expected a list of items"),
    ("llava_instruct", ["--json", "{tmp}/missing.json", "--images", "{tmp}"], r"expected LLaVA-Instruct"),
    ("cc12m", ["--tsv", "{tmp}/missing.tsv"], r"expected a CC12M-style TSV"),
])
def test_missing_layouts_name_what_was_expected(tmp_path, name, argv, match):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "o")]
    with pytest.raises(LayoutError, match=match):
        convert(name, convert_args(name, argv))


def test_wrong_json_layouts(tmp_path):
    (tmp_path / "llava.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(LayoutError, match="expected a list of {id, image, conversations}"):
        convert("llava_instruct", convert_args("llava_instruct", ["--json", str(tmp_path / "llava.json"), "--images",
                                                                  str(tmp_path), "--out", str(tmp_path / "o")]))
    (tmp_path / "syn.json").write_text(json.dumps([{"source": "a.png", "edit": "b"}]))
    with pytest.raises(LayoutError, match=r"no item has \['origin_img_path', 'target_img_path', 'instruction'\]"):
        convert("synthetic_reasoning", convert_args("synthetic_reasoning", ["--json", str(tmp_path / "syn.json"),
                                                                            "--out", str(tmp_path / "o")]))


def test_unsafe_refs_pickle_is_a_layout_error(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("side effect",))

    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps([Evil()], protocol=2))
    (tmp_path / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    refused = r"not a plain refs pickle: refusing to load global (__builtin__|builtins)\.print"
    with pytest.raises(LayoutError, match=refused):
        convert("refcoco", convert_args("refcoco", ["--root", str(tmp_path), "--images", str(tmp_path), "--out",
                                                    str(tmp_path / "o")]))


def test_every_item_skipped_is_one_clear_error(tmp_path):
    (tmp_path / "img").mkdir()
    labels = tmp_path / "labels"
    labels.mkdir()
    for k in range(3):
        Image.new("L", (4, 4), 0).save(labels / f"{k:012d}.png")
    with pytest.raises(LayoutError, match=r"nothing converted for cocostuff-train2017: all 3 item\(s\) were skipped; "
                                          r"most often 'file not found'"):
        convert("cocostuff", convert_args("cocostuff", ["--images", str(tmp_path / "img"), "--labels", str(labels),
                                                        "--out", str(tmp_path / "o")]))
    assert json.loads((tmp_path / "o" / "cocostuff-train2017.report.json").read_text())["skipped"] == 3


def test_existing_shards_are_not_overwritten_silently(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("u\tcap\n")
    argv = ["--tsv", str(tsv), "--out", str(tmp_path / "o")]
    assert run_recipe("cc12m", argv) == 0
    assert run_recipe("cc12m", argv) == 2
    assert run_recipe("cc12m", argv + ["--overwrite"]) == 0
    assert len(ParquetSampleDataset(tmp_path / "o")) == 1


def test_not_a_shard_folder(tmp_path):
    with pytest.raises(LayoutError, match="expected a folder of converted"):
        ParquetSampleDataset(tmp_path / "missing")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(LayoutError, match="not a converted SmartEdit shard: missing column"):
        ParquetSampleDataset(tmp_path)
