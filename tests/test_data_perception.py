"""The segmentation-as-editing recipe (exact blend, templates, colours, absent classes) and its helpers: COCO RLE,
the restricted refs unpickler, deterministic choices."""

import datetime
import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from smartedit.data.choices import recipe_rng
from smartedit.data.datasets.coco import (annotation_mask, counts_to_string, polygons_to_mask, rle_decode,
                                          rle_encode, string_to_counts)
from smartedit.data.datasets.perception import (COLOURS, TEMPLATES, blend, choose_template_and_colour,
                                                perception_instruction, segmentation_sample)
from smartedit.data.safe_pickle import UnsafePickleError, load_plain_pickle
from smartedit.data.schema import decode_image, encode_png
from smartedit.data.validate import ItemError, Report


def test_templates_and_colours():
    assert len(TEMPLATES) == 11 and len(set(TEMPLATES)) == 11
    assert all("{object}" in t and "{color}" in t for t in TEMPLATES)
    assert list(COLOURS) == ["red", "purple", "blue", "green", "yellow", "white", "black", "gray"]
    text = perception_instruction("the  dog\non the left", 0, "red")
    assert text == TEMPLATES[0].format(object="the dog on the left", color="red")
    q = perception_instruction("ignored", 2, "blue", question="Which animal guards the house?")
    assert q.startswith("Which animal guards the house? ") and "the answer" in q and "blue" in q


@pytest.mark.parametrize("colour", list(COLOURS))
def test_blend_is_exactly_half_source_half_colour_inside_and_source_outside(colour):
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    src[0, 0] = 255  # extremes
    src[0, 1] = 0
    mask = rng.random((33, 47)) < 0.4
    mask[0, :2] = True
    out = blend(src, mask, colour)
    assert out.dtype == np.uint8
    c = np.array(COLOURS[colour], dtype=np.float64)
    expect = np.floor(0.5 * src.astype(np.float64) + 0.5 * c + 0.5)  # 0.5·s + 0.5·c, halves rounded up
    np.testing.assert_array_equal(out[mask], expect[mask])
    np.testing.assert_array_equal(out[~mask], src[~mask])
    assert np.abs(out[mask] - (0.5 * src[mask] + 0.5 * c)).max() <= 0.5
    with pytest.raises(ItemError, match="mask of the wrong size"):
        blend(src, mask[:, :-1], colour)


def test_segmentation_sample_exact_through_png_and_resizing():
    src = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    data = encode_png(src)
    mask = np.zeros((40, 60), bool)
    mask[5:30, 10:50] = True
    s = segmentation_sample("t/1", "t", data, mask, "the box", recipe_rng(0, 7, 1))
    _, colour = choose_template_and_colour(recipe_rng(0, 7, 1))
    assert s.source_image == data  # stored as given
    tgt = np.array(decode_image(s.target_image))
    np.testing.assert_array_equal(tgt, blend(np.array(src), mask, colour))
    # --max-side: source re-encoded at the new size, the blend is exact on it
    small = segmentation_sample("t/1", "t", data, mask, "the box", recipe_rng(0, 7, 1), max_side=30)
    s_src, s_tgt = np.array(decode_image(small.source_image)), np.array(decode_image(small.target_image))
    assert s_src.shape == (20, 30, 3)
    small_mask = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize((30, 20), Image.Resampling.NEAREST)) > 127
    np.testing.assert_array_equal(s_tgt, blend(s_src, small_mask, colour))
    # empty mask → no-op edit
    noop = segmentation_sample("t/2", "t", data, np.zeros((40, 60), bool), "the cat", recipe_rng(0, 8, 1))
    assert noop.target_image == noop.source_image
    with pytest.raises(ItemError, match="mask of the wrong size"):
        segmentation_sample("t/3", "t", data, np.zeros((41, 60), bool), "x", recipe_rng(0, 9, 1))


def test_choices_are_functions_of_seed_and_index():
    picks = [choose_template_and_colour(recipe_rng(4, i, 1)) for i in range(400)]
    assert picks == [choose_template_and_colour(recipe_rng(4, i, 1)) for i in range(400)]
    assert picks != [choose_template_and_colour(recipe_rng(5, i, 1)) for i in range(400)]
    assert {t for t, _ in picks} == set(range(len(TEMPLATES))) and {c for _, c in picks} == set(COLOURS)


def test_cocostuff_absent_class_share_is_twenty_percent(tmp_path):
    from smartedit.data.datasets.cocostuff import cocostuff_samples

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    label = np.full((6, 6), 5, np.uint8)
    label[:3] = 255
    Image.fromarray(label, "L").save(tmp_path / "lab" / "a.png")
    Image.new("RGB", (6, 6), (10, 20, 30)).save(tmp_path / "img" / "a.jpg")
    report = Report("cocostuff")
    samples = list(cocostuff_samples(str(tmp_path / "img"), str(tmp_path / "lab"), report, seed=1,
                                     samples_per_image=1500))
    noop = sum(s.target_image == s.source_image for s in samples)
    assert abs(noop / len(samples) - 0.2) < 0.03
    assert report.notes["absent-class no-op edit"] == noop
    again = list(cocostuff_samples(str(tmp_path / "img"), str(tmp_path / "lab"), Report("c"), seed=1,
                                   samples_per_image=20))
    assert [s.instruction for s in again] == [s.instruction for s in samples[:20]]


def test_rle_codecs_round_trip():
    rng = np.random.default_rng(3)
    for shape in [(7, 5), (1, 1), (13, 29)]:
        m = rng.random(shape) < 0.5
        rle = rle_encode(m)
        np.testing.assert_array_equal(rle_decode(rle), m)
        compressed = {"size": rle["size"], "counts": counts_to_string(rle["counts"])}
        assert string_to_counts(compressed["counts"]) == rle["counts"]
        np.testing.assert_array_equal(annotation_mask(compressed, *shape), m)
    # a known COCO string: 3x3 image, centre pixel set → runs [4, 1, 4]
    assert counts_to_string([4, 1, 4]) == "414" and string_to_counts("414") == [4, 1, 4]
    assert rle_decode({"size": [3, 3], "counts": "414"}).nonzero() == (np.array([1]), np.array([1]))
    with pytest.raises(ItemError, match="covers"):
        rle_decode({"size": [3, 3], "counts": [4, 1]})
    with pytest.raises(ItemError, match="wrong size"):
        annotation_mask({"size": [3, 3], "counts": [9]}, 4, 3)
    poly = polygons_to_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 6, 6)
    assert poly.sum() == 4 * 3 and poly[1:4, 1:5].all()


def test_restricted_unpickler_loads_plain_refs_and_refuses_code(tmp_path):
    plain = [{"ref_id": 1, "sentences": [{"sent": "left man", "tokens": ["left", "man"]}], "bbox": (1.5, 2.0),
              "flag": True, "none": None}]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(plain, protocol=2))
    assert load_plain_pickle(path) == plain
    # Python 2 pickles carry byte strings: they come out as text
    py2 = b"(lp0\n(dp1\nS'sent'\np2\nS'caf\\xc3\\xa9 table'\np3\nsa."
    (tmp_path / "py2.p").write_bytes(py2)
    assert load_plain_pickle(tmp_path / "py2.p") == [{"sent": "café table"}]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.p").write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        load_plain_pickle(tmp_path / "evil.p")
    assert not (tmp_path / "pwned").exists()

    (tmp_path / "obj.p").write_bytes(pickle.dumps(datetime.date(2020, 1, 1), protocol=4))
    with pytest.raises(UnsafePickleError):
        load_plain_pickle(tmp_path / "obj.p")


def test_mask_conventions():
    from smartedit.data.datasets.masks import edit_region_mask

    bw = Image.new("L", (8, 8), 0)
    bw.paste(255, (2, 2, 5, 5))
    assert edit_region_mask(bw).sum() == 9
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 200, (8, 8, 3), dtype=np.uint8))
    photo.paste((255, 255, 255), (0, 0, 4, 2))  # white strokes painted over the photo
    assert edit_region_mask(photo).sum() == 8
    rgba = photo.convert("RGBA")
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[4:, 4:] = 0
    rgba.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert edit_region_mask(Image.open(io.BytesIO(buf.getvalue()))).sum() == 16
