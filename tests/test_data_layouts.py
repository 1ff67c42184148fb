"""Every dataset of the mixture, from a tiny fixture in its public layout (built here), through its data recipe
script, to uniform-schema shards; perception targets are checked to be exactly 0.5·source + 0.5·colour inside the
mask and the source outside."""

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import load_script
from PIL import Image

from smartedit.data.choices import recipe_rng
from smartedit.data.datasets.perception import COLOURS, QUESTION_OBJECT, TEMPLATES, choose_template_and_colour
from smartedit.data.io import ParquetSampleDataset
from smartedit.data.schema import decode_image

ROOT = Path(__file__).resolve().parents[1]
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def run_script(name: str, argv: list[str]) -> int:
    """``main(argv)`` of ``data_recipes/<name>.py`` (loaded from its file: data_recipes is not installed)."""
    return load_script(f"data_recipes/{name}.py").main(argv)


def noise(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def hf_image(data: bytes | None) -> dict | None:
    return None if data is None else {"bytes": data, "path": None}


def write_parquet(path: Path, columns: dict, types: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()})
    pq.write_table(table, path)


def load(out: Path) -> list:
    return list(ParquetSampleDataset(out))


def report_of(out: Path) -> dict:
    (path,) = list(out.glob("*.report.json"))
    return json.loads(path.read_text())


def rect_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The pixels a filled axis-aligned polygon with these corners covers (bounds inclusive)."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def assert_blend(sample, mask: np.ndarray, colour: str) -> None:
    """target == (source + colour + 1) // 2 inside the mask, == source outside, exactly."""
    src = np.array(decode_image(sample.source_image), dtype=np.int32)
    tgt = np.array(decode_image(sample.target_image), dtype=np.int32)
    c = np.array(COLOURS[colour], dtype=np.int32)
    assert src.shape == tgt.shape and mask.shape == src.shape[:2]
    np.testing.assert_array_equal(tgt[~mask], src[~mask])
    np.testing.assert_array_equal(tgt[mask], (src[mask] + c + 1) // 2)
    # the float definition, 0.5·s + 0.5·c, rounded half up
    np.testing.assert_array_equal(tgt[mask], np.floor(0.5 * src[mask] + 0.5 * c + 0.5).astype(np.int32))


def expected_instruction(seed: int, index: int, sub: int, obj: str, question: str | None = None) -> tuple[str, str]:
    template, colour = choose_template_and_colour(recipe_rng(seed, index, sub))
    text = TEMPLATES[template].format(object=QUESTION_OBJECT if question else obj, color=colour)
    return (f"{question} {text}" if question else text), colour


# ---- editing datasets (HF parquet) ----------------------------------------------------------------------

def test_ip2p_parquet_to_edit_samples(tmp_path):
    src = [encoded(noise(20, 16, i)) for i in range(3)]
    tgt = [encoded(noise(20, 16, 10 + i), "JPEG") for i in range(3)]
    write_parquet(tmp_path / "ip2p" / "data" / "train-00000-of-00001.parquet", {
        "original_prompt": ["a cat", "a dog", "a car"],
        "original_image": [hf_image(b) for b in src],
        "edit_prompt": ["make it a tiger", "turn it into a wolf", "paint it red"],
        "edited_prompt": ["a tiger", "a wolf", "a red car"],
        "edited_image": [hf_image(b) for b in tgt],
    }, {"original_image": IMAGE_STRUCT, "edited_image": IMAGE_STRUCT})
    out = tmp_path / "out"
    assert run_script("ip2p", ["--data", str(tmp_path / "ip2p"), "--out", str(out), "--shard-size", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.parquet")) == ["ip2p-train-00000.parquet", "ip2p-train-00001.parquet"]
    samples = load(out)
    assert [s.instruction for s in samples] == ["make it a tiger", "turn it into a wolf", "paint it red"]
    assert all(s.task == "edit" and s.dataset == "ip2p" and s.mask_image is None for s in samples)
    assert [s.source_image for s in samples] == src and [s.target_image for s in samples] == tgt  # stored as shipped
    assert len({s.id for s in samples}) == 3
    assert report_of(out)["written"] == 3 and report_of(out)["skipped"] == 0


def test_magicbrush_train_and_dev_keep_sessions_turns_and_masks(tmp_path):
    def rows(split, n_sessions):
        cols = {k: [] for k in ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")}
        for s in range(n_sessions):
            prev = encoded(noise(24, 16, 100 + s))
            for turn in (1, 2):
                target = encoded(noise(24, 16, 200 + 10 * s + turn))
                mask = Image.new("L", (24, 16), 0)
                mask.paste(255, (2 * turn, 2, 10, 12))
                if turn == 2:  # RGBA cut-out style: transparent = edit region
                    rgba = noise(24, 16, 7).convert("RGBA")
                    alpha = np.full((16, 24), 255, np.uint8)
                    alpha[2:13, 4:11] = 0
                    rgba.putalpha(Image.fromarray(alpha))
                    mask = rgba
                cols["img_id"].append(f"{split}{s}")
                cols["turn_index"].append(turn)
                cols["source_img"].append(hf_image(prev))
                cols["mask_img"].append(hf_image(encoded(mask)))
                cols["instruction"].append(f"{split} session {s} turn {turn}")
                cols["target_img"].append(hf_image(target))
                prev = target
        return cols

    types = {"turn_index": pa.int32(), "source_img": IMAGE_STRUCT, "mask_img": IMAGE_STRUCT,
             "target_img": IMAGE_STRUCT}
    write_parquet(tmp_path / "mb" / "data" / "train-00000-of-00001.parquet", rows("train", 2), types)
    write_parquet(tmp_path / "mb" / "data" / "dev-00000-of-00001.parquet", rows("dev", 1), types)
    out = tmp_path / "out"
    assert run_script("magicbrush", ["--data", str(tmp_path / "mb"), "--out", str(out)]) == 0
    samples = {s.id: s for s in load(out)}
    assert sorted(samples) == ["magicbrush/dev/dev0-1", "magicbrush/dev/dev0-2", "magicbrush/train/train0-1",
                               "magicbrush/train/train0-2", "magicbrush/train/train1-1", "magicbrush/train/train1-2"]
    # turn 2's source is turn 1's target: the session chain survives
    assert samples["magicbrush/train/train1-2"].source_image == samples["magicbrush/train/train1-1"].target_image
    m1 = np.array(decode_image(samples["magicbrush/train/train0-1"].mask_image, "L"))
    assert m1.shape == (16, 24) and set(np.unique(m1)) == {0, 255}
    assert (m1 == 255).sum() == 8 * 10 and m1[2:12, 2:10].min() == 255
    m2 = np.array(decode_image(samples["magicbrush/train/train0-2"].mask_image, "L"))
    assert (m2 == 255).sum() == 11 * 7 and m2[2:13, 4:11].min() == 255


def test_ultraedit_free_form_and_region_based(tmp_path):
    types = {"source_image": IMAGE_STRUCT, "edited_image": IMAGE_STRUCT, "mask_image": IMAGE_STRUCT}
    soft = np.zeros((16, 16), np.uint8)
    soft[4:12, 4:12] = 255
    soft[3, 4:12] = 128
    base = {"clip_sim_source": [0.3, 0.3], "source_caption": ["a", "b"], "target_caption": ["c", "d"],
            "edit_object": ["x", "y"], "edit_prompt": ["add a hat", "make it snowy"],
            "source_image": [hf_image(encoded(noise(16, 16, i))) for i in range(2)],
            "edited_image": [hf_image(encoded(noise(16, 16, 5 + i))) for i in range(2)]}
    write_parquet(tmp_path / "ue" / "FreeForm_0-00000-of-00001.parquet",
                  {**base, "idx": [1, 2], "mask_image": [None, None]}, types)
    write_parquet(tmp_path / "ue" / "RegionBase-00000-of-00001.parquet",
                  {**base, "idx": [3, 4], "mask_image": [hf_image(encoded(Image.fromarray(soft, "L")))] * 2}, types)
    out = tmp_path / "out"
    assert run_script("ultraedit", ["--data", str(tmp_path / "ue"), "--out", str(out)]) == 0
    samples = {s.id: s for s in load(out)}
    assert sorted(samples) == ["ultraedit/1", "ultraedit/2", "ultraedit/3", "ultraedit/4"]
    assert samples["ultraedit/1"].mask_image is None  # free-form: the collator uses a blank mask
    mask = np.array(decode_image(samples["ultraedit/3"].mask_image, "L"))
    np.testing.assert_array_equal(mask, soft)  # soft region edges kept
    assert report_of(out)["notes"] == {"free-form (no mask)": 2, "region-based (with mask)": 2}
    # the published region split, converted as region data into the same folder: its own prefix, nothing replaced
    assert run_script("ultraedit", ["--data", str(tmp_path / "ue"), "--out", str(out), "--split", "RegionBase",
                                    "--kind", "region"]) == 0
    assert sorted(p.name for p in out.glob("*.parquet")) == ["ultraedit-all-00000.parquet",
                                                             "ultraedit-region-RegionBase-00000.parquet"]


# ---- segmentation as editing ------------------------------------------------------------------------------

def _coco_fixture(tmp_path, images_dir: Path):
    """Two COCO images and three annotations: two rectangles (polygons) and a crowd RLE."""
    from smartedit.data.datasets.coco import counts_to_string, rle_encode

    images_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (w, h) in enumerate([(32, 24), (28, 20)]):
        name = f"COCO_train2014_{k + 1:012d}.jpg"
        (images_dir / name).write_bytes(encoded(noise(w, h, 50 + k), "JPEG"))
        records.append({"id": k + 1, "file_name": name, "width": w, "height": h})
    crowd = rect_mask(20, 28, 10, 5, 20, 15)
    rle = rle_encode(crowd)
    rle["counts"] = counts_to_string(rle["counts"])  # compressed RLE string, as COCO ships crowd masks
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 10, 2, 10]]},
        {"id": 12, "image_id": 1, "category_id": 18, "iscrowd": 0, "segmentation": [[20, 5, 30, 5, 30, 20, 20, 20]]},
        {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 1, "segmentation": rle},
    ]
    instances = {"images": records, "annotations": annotations,
                 "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}
    masks = {11: rect_mask(24, 32, 2, 3, 12, 10), 12: rect_mask(24, 32, 20, 5, 30, 20), 13: crowd}
    return instances, masks


def test_refcoco_refs_pickle_to_perception_samples(tmp_path):
    images = tmp_path / "coco" / "train2014"
    instances, masks = _coco_fixture(tmp_path, images)
    root = tmp_path / "refer" / "refcoco"
    root.mkdir(parents=True)
    (root / "instances.json").write_text(json.dumps(instances))
    refs = [  # as the refer toolkit pickles them (Python 2 protocol), incl. a test-split ref that is left out
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1, "sent_ids": [0, 1],
         "file_name": "COCO_train2014_000000000001_11.jpg",
         "sentences": [{"sent_id": 0, "sent": "man on the left", "raw": "Man on the left.", "tokens": ["man"]},
                       {"sent_id": 1, "sent": "left guy", "raw": "left guy", "tokens": ["left", "guy"]}]},
        {"ref_id": 1, "ann_id": 12, "image_id": 1, "split": "train", "category_id": 18, "sent_ids": [2],
         "sentences": [{"sent_id": 2, "sent": "dog on the right", "raw": "dog on the right"}]},
        {"ref_id": 2, "ann_id": 13, "image_id": 2, "split": "train", "category_id": 1, "sent_ids": [3],
         "sentences": [{"sent_id": 3, "sent": "crowd in the middle", "raw": "crowd in the middle"}]},
        {"ref_id": 3, "ann_id": 13, "image_id": 2, "split": "testA", "category_id": 1, "sent_ids": [4],
         "sentences": [{"sent_id": 4, "sent": "not in train", "raw": "not in train"}]},
    ]
    with open(root / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    out = tmp_path / "out"
    assert run_script("refcoco", ["--root", str(root), "--images", str(images), "--out", str(out),
                                  "--seed", "3"]) == 0
    samples = load(out)
    assert [s.id for s in samples] == ["refcoco/0", "refcoco/1", "refcoco/2"]
    for index, (s, ann) in enumerate(zip(samples, (11, 12, 13))):
        assert s.task == "perception" and s.dataset == "refcoco" and s.mask_image is None
        sentences = [x["sent"] for x in refs[index]["sentences"]]
        chosen = sentences[int(recipe_rng(3, index, 0).integers(len(sentences)))]
        instruction, colour = expected_instruction(3, index, 1, chosen)
        assert s.instruction == instruction  # template, colour and sentence: functions of (seed, index)
        assert_blend(s, masks[ann], colour)
    # same input and seed → the same shards
    again = tmp_path / "again"
    assert run_script("refcoco", ["--root", str(root), "--images", str(images), "--out", str(again),
                                  "--seed", "3"]) == 0
    assert [(s.instruction, s.target_image) for s in load(again)] == [(s.instruction, s.target_image) for s in samples]
    # with --all-sentences every expression is a sample
    out2 = tmp_path / "out2"
    assert run_script("refcoco", ["--root", str(root), "--images", str(images), "--out", str(out2),
                                  "--all-sentences", "--split", "all"]) == 0
    assert [s.id for s in load(out2)] == ["refcoco/0-0", "refcoco/0-1", "refcoco/1-2", "refcoco/2-3", "refcoco/3-4"]


def test_grefcoco_multi_and_no_target_expressions(tmp_path):
    images = tmp_path / "coco" / "train2014"
    instances, masks = _coco_fixture(tmp_path, images)
    root = tmp_path / "grefcoco"
    root.mkdir()
    (root / "instances.json").write_text(json.dumps(instances))
    grefs = [
        {"ref_id": 0, "image_id": 1, "ann_id": [11, 12], "category_id": [1, 18], "split": "train", "no_target": False,
         "sentences": [{"sent_id": 0, "sent": "both of them", "raw": "both of them"}]},
        {"ref_id": 1, "image_id": 1, "ann_id": [-1], "category_id": [-1], "split": "train", "no_target": True,
         "sentences": [{"sent_id": 1, "sent": "the giraffe", "raw": "the giraffe"}]},
    ]
    (root / "grefs(unc).json").write_text(json.dumps(grefs))
    out = tmp_path / "out"
    assert run_script("grefcoco", ["--root", str(root), "--images", str(images), "--out", str(out)]) == 0
    both, none = load(out)
    _, colour = expected_instruction(0, 0, 1, "both of them")
    assert_blend(both, masks[11] | masks[12], colour)
    assert "the giraffe" in none.instruction and none.target_image == none.source_image  # no-op edit
    assert report_of(out)["notes"] == {"no-target expression (no-op edit)": 1}


def test_cocostuff_label_maps_with_ignore_and_absent_classes(tmp_path):
    from smartedit.data.datasets.cocostuff import CLASS_NAMES, class_phrase

    images, labels = tmp_path / "train2017", tmp_path / "stuffthingmaps" / "train2017"
    images.mkdir()
    labels.mkdir(parents=True)
    maps = {}
    for k in range(12):
        label = np.full((16, 20), 123, np.uint8)  # grass (id 124)
        label[3:10, 2:9] = 0  # person (id 1)
        label[:, 18:] = 255  # unlabeled border: never part of a mask
        stem = f"{k:012d}"
        Image.fromarray(label, "L").save(labels / f"{stem}.png")
        (images / f"{stem}.jpg").write_bytes(encoded(noise(20, 16, 300 + k), "JPEG"))
        maps[stem] = label
    out = tmp_path / "out"
    assert run_script("cocostuff", ["--images", str(images), "--labels", str(labels), "--out", str(out),
                                    "--samples-per-image", "3"]) == 0
    samples = load(out)
    assert len(samples) == 36
    absent = 0
    for s in samples:
        stem, k = s.id.split("/")[1].rsplit("-", 1)
        label = maps[stem]
        named = [v for v, n in enumerate(CLASS_NAMES) if f" {class_phrase(n)} " in f" {s.instruction} "]
        assert named, s.instruction
        if s.target_image == s.source_image:
            absent += 1
            assert not any(v in (0, 123) for v in named)  # the class named is not in the image
        else:
            cls = 0 if any(v == 0 for v in named) else 123
            index = sorted(maps).index(stem)
            rng = recipe_rng(0, index, int(k))
            rng.random(), rng.integers(2)  # the absent draw and the class pick come first
            _, colour = choose_template_and_colour(rng)
            assert_blend(s, label == cls, colour)
    assert 0 < absent < 36
    assert report_of(out)["notes"]["absent-class no-op edit"] == absent


def test_reasonseg_question_prepended(tmp_path):
    split = tmp_path / "ReasonSeg" / "train"
    split.mkdir(parents=True)
    (split / "q1.jpg").write_bytes(encoded(noise(30, 20, 1), "JPEG"))
    question = "What part of this kitchen would you use to wash dishes?"
    (split / "q1.json").write_text(json.dumps({
        "text": [question], "is_sentence": True,
        "shapes": [{"label": "target", "points": [[2, 2], [20, 2], [20, 15], [2, 15]], "shape_type": "polygon"},
                   {"label": "ignore", "points": [[5, 5], [8, 5], [8, 8], [5, 8]], "shape_type": "polygon"},
                   {"label": "flag", "points": [[0, 0], [29, 0], [29, 19]], "shape_type": "polygon"}]}))
    (split / "q2.jpg").write_bytes(encoded(noise(16, 16, 2), "JPEG"))
    (split / "q2.json").write_text(json.dumps({
        "text": ["the sink"], "is_sentence": False,
        "shapes": [{"label": "target", "points": [[1, 1], [6, 1], [6, 6], [1, 6]]}]}))
    out = tmp_path / "out"
    assert run_script("reasonseg", ["--root", str(split), "--out", str(out)]) == 0
    s1, s2 = load(out)
    assert s1.task == s2.task == "reasoning"
    instruction, colour = expected_instruction(0, 0, 1, "", question)
    assert s1.instruction == instruction and s1.instruction.startswith(question)
    mask = rect_mask(20, 30, 2, 2, 20, 15) & ~rect_mask(20, 30, 5, 5, 8, 8)  # ignore cut out, flag skipped
    assert_blend(s1, mask, colour)
    instruction2, colour2 = expected_instruction(0, 1, 1, "the sink")
    assert s2.instruction == instruction2
    assert_blend(s2, rect_mask(16, 16, 1, 1, 6, 6), colour2)


# ---- reasoning, chat and captions -----------------------------------------------------------------------

def test_synthetic_reasoning_json(tmp_path):
    (tmp_path / "syn" / "images").mkdir(parents=True)
    items = []
    for k in range(3):
        (tmp_path / "syn" / "images" / f"{k}_src.png").write_bytes(encoded(noise(12, 12, k)))
        (tmp_path / "syn" / "images" / f"{k}_tgt.png").write_bytes(encoded(noise(12, 12, 9 + k)))
        items.append({"origin_img_path": f"images/{k}_src.png", "target_img_path": f"images/{k}_tgt.png",
                      "instruction": [f"remove the thing used to cut fruit {k}", f"take away the slicer {k}"]})
    (tmp_path / "syn" / "data.json").write_text(json.dumps(items))
    out = tmp_path / "out"
    assert run_script("synthetic_reasoning", ["--json", str(tmp_path / "syn" / "data.json"), "--out", str(out),
                                              "--seed", "5"]) == 0
    samples = load(out)
    assert [s.task for s in samples] == ["reasoning"] * 3
    for k, s in enumerate(samples):
        assert s.instruction == items[k]["instruction"][int(recipe_rng(5, k).integers(2))]
        assert s.source_image == (tmp_path / "syn" / "images" / f"{k}_src.png").read_bytes()
    out2 = tmp_path / "out2"
    assert run_script("synthetic_reasoning", ["--json", str(tmp_path / "syn" / "data.json"), "--out", str(out2),
                                              "--all-instructions"]) == 0
    assert len(load(out2)) == 6


def test_llava_instruct_conversations(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "000000033471.jpg").write_bytes(encoded(noise(16, 12, 3), "JPEG"))
    data = [{"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "An advertisement."}]}]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert run_script("llava_instruct", ["--json", str(tmp_path / "llava.json"), "--images", str(tmp_path / "coco"),
                                         "--out", str(out)]) == 0
    (s,) = load(out)
    assert s.task == "chat" and s.instruction is None and s.target_image is None
    assert s.conversation == [["What are the colors of the bus in the image?", "The bus is white and red."],
                              ["What feature can be seen on the back of the bus?", "An advertisement."]]
    assert s.source_image == (tmp_path / "coco" / "000000033471.jpg").read_bytes()


def test_cc12m_tsv_captions(tmp_path):
    tsv = tmp_path / "cc12m.tsv"
    tsv.write_text("http://a/1.jpg\tA photo of <PERSON> riding a horse.\n"
                   "http://a/2.jpg\tred circle on a white   background\n"
                   "http://a/3.jpg\n"
                   "http://a/4.jpg\t  \n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_script("cc12m", ["--tsv", str(tsv), "--out", str(out)]) == 0
    samples = load(out)
    assert [s.caption for s in samples] == ["A photo of a person riding a horse.", "red circle on a white background"]
    assert all(s.task == "caption" and s.source_image is None for s in samples)
    rep = report_of(out)
    assert rep["skipped_by_reason"] == {"malformed line": 1, "missing field": 1}
    assert [(r["row"], r["reason"]) for r in rep["skips"]] == [(3, "malformed line"), (4, "missing field")]


def test_converted_shards_feed_the_collator(tmp_path):
    """Perception, chat and caption rows from the recipes become one training batch."""
    from smartedit.config import preset
    from smartedit.data.collate import SampleCollator
    from smartedit.model import TINY_TOKENIZER, load_tokenizer
    from smartedit.prompt import add_smartedit_tokens

    tsv = tmp_path / "cc.tsv"
    tsv.write_text("u\ta red circle\n")
    assert run_script("cc12m", ["--tsv", str(tsv), "--out", str(tmp_path / "cc")]) == 0
    split = tmp_path / "rs"
    split.mkdir()
    (split / "a.jpg").write_bytes(encoded(noise(16, 16, 1), "JPEG"))
    (split / "a.json").write_text(json.dumps({"text": ["the circle"], "is_sentence": False,
                                              "shapes": [{"label": "target", "points": [[1, 1], [9, 1], [9, 9]]}]}))
    assert run_script("reasonseg", ["--root", str(split), "--out", str(tmp_path / "rs_out")]) == 0
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "1.jpg").write_bytes(encoded(noise(16, 12, 3), "JPEG"))
    (tmp_path / "llava.json").write_text(json.dumps([{"id": "1", "image": "1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A circle."}]}]))
    assert run_script("llava_instruct", ["--json", str(tmp_path / "llava.json"), "--images", str(tmp_path / "coco"),
                                         "--out", str(tmp_path / "chat")]) == 0
    samples = load(tmp_path / "cc") + load(tmp_path / "rs_out") + load(tmp_path / "chat")
    config = preset("tiny")
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    ids = add_smartedit_tokens(tokenizer, config.mllm.num_image_tokens, config.mllm.vocab_size)
    batch = SampleCollator(config, tokenizer)(samples, [(0, 0, i) for i in range(3)])
    assert batch["is_edit"].tolist() == [0.0, 1.0, 0.0]
    assert batch["source_images"].shape == (3, 3, config.resolution, config.resolution)
    assert batch["source_images"][0].abs().max() == 0  # caption rows have no image
    assert ((batch["input_ids"] == ids.image).sum(1) > 0).tolist() == [False, True, True]


@pytest.mark.parametrize("row_group_size", [1, 3])
def test_parquet_dataset_random_access_matches_sequential(tmp_path, row_group_size):
    from smartedit.data.io import write_samples
    from smartedit.data.schema import Sample

    samples = [Sample(f"x/{i}", "x", "caption", caption=f"caption {i}") for i in range(10)]
    write_samples(samples, tmp_path, "x-train", shard_size=4, row_group_size=row_group_size)
    ds = ParquetSampleDataset(tmp_path)
    assert len(ds) == 10 and len(ds.files) == 3
    order = [7, 0, 9, 3, 3, -1, 5]
    assert [ds[i].id for i in order] == [f"x/{i % 10}" for i in order]
    assert [s.id for s in ds] == [s.id for s in samples]
    with pytest.raises(IndexError):
        ds[10]
    assert pickle.loads(pickle.dumps(ds))[4].caption == "caption 4"  # picklable for DataLoader workers
    few = ParquetSampleDataset(tmp_path, cache_row_groups=1)
    few.max_open_files = 1  # shards are closed least-recently-used first
    assert [few[i].id for i in (9, 0, 5, 9)] == ["x/9", "x/0", "x/5", "x/9"] and len(few._handles) == 1


def test_converted_shards_load_in_hugging_face_datasets(tmp_path):
    """A converted folder is plain parquet: 🤗 ``datasets`` reads it as it is (every row, the encoded images byte for
    byte), streamed or not, so users can inspect or re-mix converted data with their own tools."""
    from datasets import load_dataset

    from smartedit.data.io import write_samples
    from smartedit.shapes.world import training_samples

    samples = list(training_samples("simple", 12, seed=4))
    write_samples(samples, tmp_path / "shapes", "shapes-train", shard_size=5, row_group_size=2)
    files = sorted(str(p) for p in (tmp_path / "shapes").glob("*.parquet"))
    assert len(files) == 3
    table = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert table.num_rows == 12 and table["id"] == [s.id for s in samples]
    assert table[3]["source_image"] == samples[3].source_image and table[3]["instruction"] == samples[3].instruction
    streamed = load_dataset("parquet", data_files=files, split="train", streaming=True)
    assert [row["target_image"] for row in streamed] == [s.target_image for s in samples]
