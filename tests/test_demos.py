"""The demo notebooks run top to bottom on the tiny model and ship with their outputs; the web demo's callbacks."""

import json
import os

import nbclient  # dev extra
import nbformat  # dev extra
import pytest

NOTEBOOKS = ["quickstart", "multi_turn", "guidance_sweep"]
DEMOS = os.path.join(os.path.dirname(__file__), "..", "demos")


def _outputs(notebook):
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _check_outputs(notebook):
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "<img_" not in text, "raw image tokens printed"
    noise = [o["text"] for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not noise, f"warnings or progress bars in the outputs: {noise}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_ships_its_outputs_and_uses_the_public_api(name):
    notebook = nbformat.read(os.path.join(DEMOS, f"{name}.ipynb"), as_version=4)
    assert all(cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code"), "run and save it"
    _check_outputs(notebook)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "smartedit.cli" not in code and "from_pretrained" in code


# The per-cell timeout only guards against hangs: alone a sweep cell takes ~20 s, but with training running
# beside it on 2 cores one took ~400 s.
@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    notebook = nbformat.read(os.path.join(DEMOS, f"{name}.ipynb"), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []  # what is checked below is this run's output, not the shipped one
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": DEMOS}})
    client.execute()
    _check_outputs(notebook)


# ---- the web demo's callbacks (no browser; tests/test_demo_browser.py drives the page itself) ------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "checkpoints", "smartedit-tiny")
EXAMPLE = os.path.join(ROOT, "checkpoints", "examples", "shapes.png")


@pytest.fixture(scope="module")
def tiny_pipe():
    from smartedit.pipeline import SmartEditPipeline

    return SmartEditPipeline.from_pretrained(TINY)


def test_demo_edit_continue_undo(tiny_pipe, tmp_path):
    from PIL import Image

    from smartedit.demo import DemoState, edit, history, undo

    source = Image.open(EXAMPLE)
    steps = []
    state, shown, status, seed = edit(tiny_pipe, DemoState(), source, "remove the red circle", seed=7,
                                      progress=lambda k, n: steps.append((k, n)))
    assert steps == [(k, 20) for k in range(1, 21)]  # per-step progress at the model's own 20 steps
    assert seed == 7 and status.startswith("Turn 1: seed 7, 20 steps, text guidance 1.5, image guidance 1")
    # the shipped model writes which shape it means before it edits; the page says so
    assert status.endswith("; the model said: `remove the red circle`"), status
    saved = json.loads(open(state.session.save(str(tmp_path / "session")), encoding="utf-8").read())
    assert saved[1]["reply"] == "remove the red circle"
    state, second, status, _ = edit(tiny_pipe, state, None, "remove the blue square", seed=8, continue_result=True)
    assert status.startswith("Turn 2: seed 8")
    assert [caption for _, caption in history(state)] == ["input", "1: remove the red circle (seed 7)",
                                                         "2: remove the blue square (seed 8)"]
    state, back, status = undo(state)
    assert back is shown and status == "Undone; 1 turn(s) left."
    state, back, status = undo(state)
    assert back is None and len(history(state)) == 1
    assert undo(state)[2] == "Nothing to undo."


def test_demo_edit_bad_inputs_keep_the_state(tiny_pipe):
    from PIL import Image

    from smartedit.demo import MAX_SEED, DemoState, edit

    source = Image.open(EXAMPLE)
    empty = DemoState()
    assert edit(tiny_pipe, empty, None, "remove the red circle")[2] == "Upload an image first (or pick an example)."
    assert edit(tiny_pipe, empty, source, "  ")[2].startswith("Type an instruction first")
    assert edit(tiny_pipe, empty, source, "x", continue_result=True)[2].startswith("Nothing to continue from")
    state, shown, status, _ = edit(tiny_pipe, empty, source, "remove the red circle", seed=-1)
    assert state is empty and shown is None and "seed must lie in 0.." in status
    state, _, status, _ = edit(tiny_pipe, empty, source, "remove the red circle", steps=0)
    assert state is empty and status.startswith("Cannot edit: num_inference_steps")
    _, _, status, seed = edit(tiny_pipe, empty, source, "remove the red circle", steps=1, randomize_seed=True)
    assert 0 <= seed <= MAX_SEED and status.startswith(f"Turn 1: seed {seed}, 1 steps")


def test_demo_mask_from_the_brush_reaches_a_mask_model(monkeypatch):
    import numpy as np
    import torch
    from PIL import Image

    from smartedit.config import preset
    from smartedit.demo import DemoState, edit, mask_from_editor
    from smartedit.model import SmartEditModel
    from smartedit.pipeline import SmartEditPipeline

    layer = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    assert mask_from_editor({"background": None, "layers": [layer]}) is None  # nothing painted
    layer.paste((255, 255, 255, 255), (10, 5, 20, 15))
    mask = mask_from_editor({"background": None, "layers": [layer], "composite": None})
    assert mask.mode == "L" and mask.size == (64, 48)
    assert np.asarray(mask)[5:15, 10:20].min() == 255 and np.asarray(mask).sum() == 255 * 100

    torch.manual_seed(0)
    pipe = SmartEditPipeline(SmartEditModel.from_config(preset("tiny", **{"unet.mask_channels": 4})).eval())
    masks, call = [], SmartEditPipeline.__call__

    def spy(self, *args, **kwargs):
        masks.append(kwargs.get("mask"))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(SmartEditPipeline, "__call__", spy)
    state, out, status, _ = edit(pipe, DemoState(), Image.new("RGB", (64, 48), "white"), "make it red", steps=1,
                                 mask=mask)
    assert status.endswith("region mask") and out.size == (64, 48)
    assert len(masks) == 1 and np.array_equal(np.asarray(masks[0]), np.asarray(mask))


def test_demo_examples_file(tmp_path):
    from smartedit.demo import load_examples

    shipped = load_examples(os.path.join(TINY, "examples.json"))
    assert shipped and all(os.path.samefile(image, EXAMPLE) for image, _ in shipped)
    assert ["remove the red circle"] == [text for _, text in shipped][:1]
    (tmp_path / "a.png").write_bytes(open(EXAMPLE, "rb").read())
    path = tmp_path / "examples.json"
    path.write_text('[{"image": "a.png", "instruction": "remove it"}, {"image": "missing.png", "instruction": "x"},'
                    ' {"instruction": "no image"}, 3]')
    assert load_examples(str(path)) == [[str(tmp_path / "a.png"), "remove it"]]
    path.write_text("{not json")
    assert load_examples(str(path)) == []


def test_demo_shows_the_real_gradio_import_error(tmp_path, monkeypatch, capsys):
    """A broken gradio install (here: one whose gradio_client lacks a module) is reported as it is, before the
    model loads, in one error line."""
    import sys

    from smartedit.cli import main

    fake = tmp_path / "gradio"
    fake.mkdir()
    (fake / "__init__.py").write_text("import gradio_client.serializing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n == "gradio" or n.startswith("gradio.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["demo", "--model", os.path.join(str(tmp_path), "no-such-model")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the web demo cannot import gradio: ModuleNotFoundError: No module named 'gradio_client")
    assert "pip install -e '.[demo]'" in lines[0]
