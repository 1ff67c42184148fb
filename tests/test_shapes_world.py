"""ShapesWorld: exact ground truth for every edit family; determinism from (seed, index)."""

import numpy as np
import pytest

from smartedit.data.collate import sample_rng
from smartedit.shapes.world import (CATEGORIES, COLOURS, KIND_FACTS, caption, held_out_facts, knowledge_chat,
                                    perception_edit, random_scene, reasoning_edit, render, shape_mask, simple_edit,
                                    understanding_edit, vqa_chat)


def _edit(family, i):
    rng = sample_rng(0, 0, i)
    if family == "simple":
        return simple_edit(rng)
    if family == "perception":
        return perception_edit(rng)
    if family == "6-Reasoning":
        return reasoning_edit(rng)
    return understanding_edit(rng, family)


@pytest.mark.parametrize("family", ["simple", "perception", *CATEGORIES])
def test_edits_change_exactly_the_mask(family):
    for i in range(15):
        edit = _edit(family, i)
        src, tgt, mask = edit.images(64)
        assert mask.any() and edit.instruction
        outside = ~mask
        assert np.array_equal(src[outside], tgt[outside]), edit.instruction  # background preserved exactly
        changed = np.any(src != tgt, axis=-1)
        assert changed.any(), edit.instruction  # the edit really changes something
        if "make" in edit.instruction or "remove" in edit.instruction or family == "perception":
            assert changed[mask].mean() > 0.9, edit.instruction  # recolour / remove / mark: the whole region


def test_perception_target_is_the_half_blend():
    edit = perception_edit(sample_rng(3, 0, 1))
    src, tgt, mask = edit.images(64)
    colour = np.asarray(COLOURS[edit.mark_colour], dtype=np.float64)
    expected = np.floor(0.5 * src[mask].astype(np.float64) + 0.5 * colour + 0.5)  # 0.5·x + 0.5·c, halves up
    assert np.array_equal(tgt[mask], expected.astype(np.uint8))


def test_determinism_and_scene_validity():
    a, b = simple_edit(sample_rng(5, 1, 7)), simple_edit(sample_rng(5, 1, 7))
    assert a.instruction == b.instruction and np.array_equal(a.images(48)[1], b.images(48)[1])
    for i in range(30):
        scene = random_scene(sample_rng(1, 0, i))
        assert 2 <= len(scene.shapes) <= 5
        masks = [shape_mask(s, 64) for s in scene.shapes]
        total = sum(m.astype(int) for m in masks)
        assert total.max() <= 1  # shapes never overlap
        assert render(scene, 64).shape == (64, 64, 3)


def test_reasoning_uses_knowledge_not_names():
    train, test = held_out_facts(0)
    for kind in KIND_FACTS:
        assert not set(train[kind]) & set(test[kind]) or train[kind] == test[kind]
    for i in range(20):
        edit = reasoning_edit(sample_rng(2, 0, i), train)
        kind = edit.source.shapes[edit.changed[0]].kind
        assert kind not in edit.instruction
        assert any(f in edit.instruction for f in train[kind])


def test_no_sample_seed_reaches_the_held_out_facts():
    """Sources such as ``shapes:reasoning:N:7`` (another sample seed) or the test set of another seed still use the
    world's one fact split: no training reasoning edit ever names a held-out fact."""
    from smartedit.shapes.world import training_samples
    from smartedit.shapes.pretrain import edit_batch

    train, test = held_out_facts()
    trained = {f for facts in train.values() for f in facts}
    held = [f for facts in test.values() for f in facts if f not in trained]
    texts = [s.instruction for seed in (0, 3, 7) for s in training_samples("reasoning", 40, seed=seed)]
    texts += edit_batch("reasoning", 5, 0, 40, 64)[2]
    assert held and texts
    assert not [t for t in texts if any(f in t for f in held)]


def test_captions_and_chat():
    scene = random_scene(sample_rng(0, 0, 0))
    text = caption(scene)
    assert all(s.kind in text and s.colour in text for s in scene.shapes)
    chat = knowledge_chat(sample_rng(0, 0, 1))
    assert chat[0][0].endswith("?") and chat[0][1].startswith("It is")
    assert vqa_chat(sample_rng(0, 0, 2), scene)[0][1]


def test_recipe_writes_training_shards_and_a_scorable_testset(tmp_path, capsys):
    import json

    from data_recipes.shapes_world import main
    from smartedit.data.io import ParquetSampleDataset
    from smartedit.eval.reason_edit import read_reason_edit

    assert main(["--out", str(tmp_path), "--side", "32", "--simple", "6", "--perception", "3", "--understanding",
                 "4", "--reasoning", "3", "--caption", "5", "--chat", "4", "--test-per-category", "2",
                 "--test-simple", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["simple"]["samples"] == 6 and summary["test"]["6-Reasoning"] == 2
    data = ParquetSampleDataset(str(tmp_path / "train"))
    assert len(data) == 25
    tasks = {s.dataset: s.task for s in data}
    assert tasks["shapes_perception"] == "perception" and tasks["shapes_captions"] == "caption"
    assert all(not s.problems() for s in data)
    samples, problems = read_reason_edit(str(tmp_path / "test" / "reason_edit"))
    # six benchmark categories × 2, plus the optional 7-Simple folder of plain edits (scored, never in the totals)
    assert len(samples) == 14 and not problems and all(s.problem is None for s in samples)
    assert sum(s.category == "7-Simple" for s in samples) == 2
    assert (tmp_path / "test" / "targets" / "3-Mirror" / "001.png").exists()
    # the same samples told plainly: the same images, each instruction said plainly where a plainer wording exists
    plain, problems = read_reason_edit(str(tmp_path / "test" / "reason_edit_plain"))
    assert not problems and [s.id for s in plain] == [s.id for s in samples]
    for given, told in zip(samples, plain):
        assert given.input_path.read_bytes() == told.input_path.read_bytes()
        if given.category in ("1-Left-Right", "6-Reasoning"):
            assert told.instruction != given.instruction and " on the " not in told.instruction
            assert "shape" not in told.instruction.split(), told.instruction
        elif given.category in ("3-Mirror", "4-Color", "5-Multiple-Objects", "7-Simple"):
            assert told.instruction == given.instruction


def test_the_shipped_example_is_the_example_scene_with_exact_edits():
    from PIL import Image

    from smartedit.shapes.world import EXAMPLE_SCENE, example_edit, render

    shipped = np.asarray(Image.open("checkpoints/examples/shapes.png").convert("RGB"))
    assert np.array_equal(shipped, render(EXAMPLE_SCENE, 128))
    src, tgt, mask = example_edit("remove the red circle").images(128)
    assert np.array_equal(src, shipped) and mask.any() and not mask.all()
    assert (tgt[mask] == EXAMPLE_SCENE.background).all() and np.array_equal(tgt[~mask], src[~mask])
    _, tgt, mask = example_edit("make the blue square yellow").images(64)
    assert (tgt[mask] == (235, 210, 40)).all()
    with pytest.raises(ValueError, match="exactly one shape"):
        example_edit("remove the red square")
    with pytest.raises(ValueError, match="not a simple edit"):
        example_edit("paint the red circle with stripes")


def test_patch_labels_name_the_shape_on_each_patch():
    """A large red square centred on patch (2, 5) of an 8×8 grid and a small blue circle on patch (6, 0): the
    square's patches carry square / red / large / second from the left, the circle's circle / blue / small /
    first, the rest 0."""
    from smartedit.shapes import world

    scene = world.Scene((world.Shape("square", "red", "large", 5.5 / 8, 2.5 / 8),
                         world.Shape("circle", "blue", "small", 0.5 / 8, 6.5 / 8)), (230, 230, 230), "plain", False)
    labels = world.patch_labels(scene, 64, 8).reshape(len(world.PATCH_LABELS), 8, 8)
    kind, colour, size, rank = labels
    square = (world.KINDS.index("square") + 1, list(world.COLOURS).index("red") + 1, 3, 2)
    circle = (world.KINDS.index("circle") + 1, list(world.COLOURS).index("blue") + 1, 1, 1)
    assert tuple(int(x[2, 5]) for x in labels) == square
    assert tuple(int(x[6, 0]) for x in labels) == circle
    assert int(kind[0, 0]) == 0 and int(kind[7, 7]) == 0
    assert set(kind.flatten().tolist()) == {0, square[0], circle[0]}
    with pytest.raises(ValueError, match="multiple of the patch grid"):
        world.patch_labels(scene, 60, 8)


def test_an_instruction_said_plainly_names_the_same_shape_as_a_simple_edit_would():
    """``Edit.explicit``: Left-Right and Reasoning edits become "<op> the <colour> <kind>", which the simple-edit
    reader takes back to the very same target; Relative-Size edits name size, colour and kind (its two shapes share
    a colour) and that names one shape; Mirror, Multiple-Objects, Color, simple and perception edits keep their
    instruction."""
    from collections import Counter

    from smartedit.shapes.world import SIZES, edit_for, example_edit

    train_facts, _ = held_out_facts()
    kept, plain = Counter(), Counter()
    for i in range(400):
        edit = edit_for(("simple", "perception", "understanding", "reasoning")[i % 4], sample_rng(2, 0, i, 3),
                        train_facts)
        said = edit.explicit
        key = edit.category or edit.family
        if said == edit.instruction:
            kept[key] += 1
            continue
        plain[key] += 1
        words = said.split()
        if any(w in SIZES for w in words):
            size, colour, kind = words[words.index("the") + 1:words.index("the") + 4]
            assert sum((s.size, s.colour, s.kind) == (size, colour, kind) for s in edit.source.shapes) == 1
        else:
            assert example_edit(said, edit.source).target == edit.target, (edit.instruction, said)
    assert plain["6-Reasoning"] == 100 and plain["1-Left-Right"] >= 15 and plain["2-Relative-Size"] >= 15
    assert set(kept) >= {"simple", "perception", "3-Mirror", "4-Color", "5-Multiple-Objects"}
    assert not set(plain) & {"simple", "perception", "3-Mirror", "5-Multiple-Objects"}


def test_a_reference_by_colour_names_one_shape():
    """"the white star" in a Color edit or a colour-reference question names one shape: the second shape of a kind
    that Left-Right and Color scenes add takes a colour no shape of that kind has (it once took any other colour than
    the first shape's, and 2 % of Color edits then named two shapes)."""
    from smartedit.shapes import world

    for i in range(600):
        category = ("1-Left-Right", "4-Color")[i % 2]
        edit = world.understanding_edit(sample_rng(4, 0, i, 3), category)
        (k,) = edit.changed
        shape = edit.source.shapes[k]
        assert sum((s.kind, s.colour) == (shape.kind, shape.colour) for s in edit.source.shapes) == 1, edit.instruction
    rng = np.random.default_rng(9)
    for _ in range(300):
        built = world.skill_chat(rng, "colour-reference")
        if built is None:
            continue
        scene, [[question, _]] = built
        colour, kind = question[len("Where is the "):-1].split()
        assert sum((s.kind, s.colour) == (kind, colour) for s in scene.shapes) == 1, question


def test_a_stage1_source_can_draw_one_kind_of_edit_alone():
    """``shapes:explicit_instruction/1-Left-Right:N`` (the recipe's ``stage1_focus``): every prompt is a Left-Right
    edit with its scene, aligned to the instruction said plainly; ``/reasoning`` draws one edit family; without the
    suffix the three stage-1 families are unchanged. A kind after another family, or an unknown kind, is refused."""
    from smartedit.shapes.world import training_samples

    left_right = list(training_samples("explicit_instruction/1-Left-Right", 40, seed=3))
    assert all(s.source_image is not None and " on the " in s.instruction for s in left_right)
    assert sum(s.caption != s.instruction for s in left_right) >= 20  # said plainly: "the red circle"
    reasoning = list(training_samples("grounded_instruction/reasoning", 10, seed=3))
    assert all(s.instruction is None and s.source_image is not None and "the shape " in s.caption for s in reasoning)
    uniform = [s.instruction for s in training_samples("explicit_instruction", 40, seed=3)]
    assert [s.instruction for s in left_right] != uniform and sum(" on the " in t for t in uniform) < 20
    for bad in ("simple/1-Left-Right", "explicit_instruction/6-Reasoning", "explicit_instruction/left"):
        with pytest.raises(ValueError, match="take an edit kind after '/'"):
            list(training_samples(bad, 1))


def test_a_source_can_answer_each_edit_with_its_instruction_said_plainly():
    """``shapes:FAMILY:N:SEED:reply`` (the recipe's ``edit_reply``): every edit prompt, stage 1's and stage 2's,
    carries the instruction said plainly as its reply, with the very same samples otherwise; families with no edit
    prompt with its scene (chat, captions, text-only instructions) and any other suffix are refused."""
    from smartedit.data.sources import open_source
    from smartedit.shapes.world import training_samples

    for family in ("understanding", "reasoning", "explicit_instruction/1-Left-Right", "grounded_instruction"):
        plain = open_source(f"shapes:{family}:12:5")
        replied = open_source(f"shapes:{family}:12:5:reply")
        assert [s.reply for s in plain] == [None] * 12
        assert [{**s.__dict__, "reply": None} for s in replied] == [s.__dict__ for s in plain]
        assert all(not s.problems() and s.reply for s in replied)
    left_right = open_source("shapes:explicit_instruction/1-Left-Right:40:3:reply")
    assert all(s.reply == s.caption for s in left_right)  # stage 1: the words its <img_i> states align to
    assert sum(s.reply != s.instruction for s in left_right) >= 20  # "remove the red circle", not "... on the left"
    for family in ("chat", "caption", "instruction"):
        with pytest.raises(ValueError, match="only edit prompts with their scene write a reply"):
            list(training_samples(family, 1, reply=True))
    with pytest.raises(ValueError, match="shapes:FAMILY:N:SEED:reply"):
        open_source("shapes:simple:2:0:replies")
