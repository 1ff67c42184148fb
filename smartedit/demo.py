"""The web demo (``smartedit demo --model DIR``): upload an image, say how to edit it, keep editing the result.

The page offers the model's own sampling settings (``pipe.sampling_defaults``) as the starting values, the model
folder's examples (``examples.json``), a brush for region edits on models with mask channels, multi-turn editing
("Edit the result", "Undo", a history strip; :class:`smartedit.pipeline.EditSession` underneath), per-step progress
and the seed of every edit. Needs the optional ``gradio`` package (``pip install -e '.[demo]'``).

Everything the buttons do is a plain function of :class:`DemoState` here (:func:`edit`, :func:`undo`), without any
UI dependency; :func:`build_app` only lays the page out and wires them to it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from .devices import CLIError
from .pipeline import EditSession, SmartEditPipeline

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.json"
MAX_SEED = 2**31 - 1
# system fonts only: the page must not fetch web fonts (the demo runs offline)
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


class DemoDependencyError(CLIError):
    """gradio is missing or broken; the message carries the real import error."""


def import_gradio():
    """``gradio``, or :class:`DemoDependencyError` naming the import error that stopped it (a missing package, or
    a broken install such as a gradio_client that does not match gradio)."""
    try:
        import gradio
    except Exception as exc:  # noqa: BLE001 - any failure while importing gradio means the same fix
        raise DemoDependencyError(
            f"the web demo cannot import gradio: {type(exc).__name__}: {exc}. Install or repair the demo extra: "
            f"pip install -e '.[demo]'") from exc
    return gradio


def load_examples(path: str | None) -> list[list[str]]:
    """``[[image path, instruction], ...]`` from an examples JSON file: a list of ``{"image": ..., "instruction":
    ...}`` with image paths relative to the file. No file → no examples; a bad entry is logged and skipped."""
    if not path or not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring the examples file %s: %s", path, exc)
        return []
    if not isinstance(entries, list):
        logger.warning("ignoring the examples file %s: it must hold a list of {image, instruction} entries", path)
        return []
    base = os.path.dirname(os.path.abspath(path))
    examples = []
    for k, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else None
        text = entry.get("instruction") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not isinstance(text, str) or not text.strip():
            logger.warning("%s entry %d: needs an 'image' path and an 'instruction'; skipped", path, k)
            continue
        image = os.path.normpath(os.path.join(base, image))
        if not os.path.isfile(image):
            logger.warning("%s entry %d: image %s does not exist; skipped", path, k, image)
            continue
        examples.append([image, text])
    return examples


def mask_from_editor(value) -> Image.Image | None:
    """The painted region of a gradio ImageEditor value (``{"background", "layers", "composite"}``) as an ``L``
    mask, white where any layer is painted; None when nothing is painted."""
    if not isinstance(value, dict):
        return None
    painted = None
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0  # [H, W]
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255, mode="L")


@dataclass
class DemoState:
    """One browser tab's editing session (None until the first edit)."""

    session: EditSession | None = None


def history(state: DemoState) -> list[tuple[Image.Image, str]]:
    """The history strip: (image, caption) per turn, the input first."""
    if state.session is None:
        return []
    return [(turn.image, "input" if turn.instruction is None else f"{k}: {turn.instruction} (seed {turn.seed})")
            for k, turn in enumerate(state.session.history)]


def settings_text(settings: dict, seed: int) -> str:
    return (f"seed {seed}, {settings['num_inference_steps']} steps, text guidance {settings['guidance_scale']:g}, "
            f"image guidance {settings['image_guidance_scale']:g}")


def edit(pipe: SmartEditPipeline, state: DemoState, image, instruction: str, *, steps=None, text_guidance=None,
         image_guidance=None, seed=0, randomize_seed: bool = False, mask=None, continue_result: bool = False,
         progress: Callable[[int, int], None] | None = None) -> tuple[DemoState, Image.Image | None, str, int]:
    """One press of "Edit" (a new session from ``image``) or "Edit the result" (``continue_result``: a new turn on
    the session's current image). Returns (state, the image now shown, status text, the seed used). A bad input
    leaves the state as it was and returns the reason as the status."""
    current = state.session.current if state.session is not None else None
    if continue_result and state.session is None:
        return state, current, "Nothing to continue from yet: press Edit first.", seed
    if not continue_result and image is None:
        return state, current, "Upload an image first (or pick an example).", seed
    if not isinstance(instruction, str) or not instruction.strip():
        return state, current, "Type an instruction first, e.g. 'remove the red circle'.", seed
    if mask is not None and pipe.model.config.unet.mask_channels == 0:
        mask = None  # the page shows no brush for such models
    try:
        seed = random.randint(0, MAX_SEED) if randomize_seed else int(seed)
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"the seed must lie in 0..{MAX_SEED}, got {seed}")
        defaults = pipe.sampling_defaults
        settings = {"num_inference_steps": int(defaults["num_inference_steps"] if steps is None else steps),
                    "guidance_scale": float(defaults["guidance_scale"] if text_guidance is None else text_guidance),
                    "image_guidance_scale": float(defaults["image_guidance_scale"] if image_guidance is None
                                                  else image_guidance)}
    except (TypeError, ValueError) as exc:
        return state, current, f"Cannot edit: {exc}", seed

    def on_step(_pipe, step, _timestep, _tensors):
        if progress is not None:
            progress(step + 1, settings["num_inference_steps"])
        return {}

    session = state.session if continue_result else None
    try:
        if session is None:
            session = pipe.session(image, seed=seed)
        if mask is not None and mask.size != session.current.size:
            mask = mask.resize(session.current.size, Image.NEAREST)
        start = time.perf_counter()
        result = session.edit(instruction.strip(), mask=mask, seed=seed, callback_on_step_end=on_step, **settings)
    except (ValueError, TypeError, OSError) as exc:
        return state, current, f"Cannot edit: {exc}", seed
    seconds = time.perf_counter() - start
    turn = len(session.history) - 1
    status = f"Turn {turn}: {settings_text(settings, seed)}, {seconds:.1f} s" + (", region mask" if mask else "")
    reply = session.history[-1].reply
    if reply:  # a model that writes what it will do before it edits: show it, as inert text
        status += "; the model said: `" + " ".join(reply.replace("`", "'").split()) + "`"
    return DemoState(session), result, status, seed


def undo(state: DemoState) -> tuple[DemoState, Image.Image | None, str]:
    """One press of "Undo": drop the last turn. Returns (state, the image now shown, status text)."""
    if state.session is None or len(state.session.history) == 1:
        current = state.session.current if state.session is not None else None
        return state, current, "Nothing to undo."
    image = state.session.undo()
    turns = len(state.session.history) - 1
    return state, image if turns else None, f"Undone; {turns} turn(s) left."


def page_intro(pipe: SmartEditPipeline, model_name: str) -> str:
    d = pipe.sampling_defaults
    return (f"# SmartEdit\nModel `{model_name}` on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')}); "
            f"its defaults: {d['num_inference_steps']} steps, text guidance {d['guidance_scale']:g}, image guidance "
            f"{d['image_guidance_scale']:g}. Upload an image (or pick an example), type an instruction and press "
            f"**Edit**; **Edit the result** applies the next instruction to the output, **Undo** steps back.")


def _editor_value(image: Image.Image) -> dict:
    """An ImageEditor value with ``image`` as its background and nothing painted yet."""
    return {"background": image, "layers": [], "composite": image}


def build_app(pipe: SmartEditPipeline, model_name: str = "model", examples: list[list[str]] | None = None):
    """The gradio Blocks page around :func:`edit` and :func:`undo`: laid out by :func:`_lay_out`, its buttons
    wired by :func:`_wire`."""
    gr = import_gradio()
    has_mask = pipe.model.config.unet.mask_channels > 0
    with gr.Blocks(title="SmartEdit") as app:
        page = _lay_out(gr, pipe, model_name, examples, has_mask)
        _wire(gr, pipe, page, has_mask)
    return app


@dataclass
class _Page:
    """The components of the demo page that its events read or write."""

    state: Any
    source: Any
    region: Any
    """The region brush (an ImageEditor), or ``gr.State(None)`` for models without mask channels."""
    result: Any
    status: Any
    instruction: Any
    edit_btn: Any
    more_btn: Any
    undo_btn: Any
    steps: Any
    text_guidance: Any
    image_guidance: Any
    seed: Any
    randomize: Any
    strip: Any


def _lay_out(gr, pipe: SmartEditPipeline, model_name: str, examples: list[list[str]] | None, has_mask: bool) -> _Page:
    """The page's components, top to bottom (inside the caller's ``gr.Blocks``)."""
    state = gr.State(DemoState())
    gr.Markdown(page_intro(pipe, model_name))
    with gr.Row():
        with gr.Column():
            source = gr.Image(type="pil", label="input", elem_id="input-image", sources=["upload", "clipboard"],
                              height=320)
            region = _region_input(gr, has_mask)
        with gr.Column():
            result = gr.Image(type="pil", label="edited", elem_id="result-image", interactive=False,
                              format="png", height=320)
            status = gr.Markdown(elem_id="status")
    instruction = gr.Textbox(label="instruction", placeholder="remove the red circle", elem_id="instruction")
    with gr.Row():
        edit_btn = gr.Button("Edit", variant="primary", elem_id="edit")
        more_btn = gr.Button("Edit the result", elem_id="edit-result")
        undo_btn = gr.Button("Undo", elem_id="undo")
    d = pipe.sampling_defaults
    with gr.Accordion("settings", open=False):
        with gr.Row():
            steps = gr.Slider(1, 150, value=d["num_inference_steps"], step=1, label="steps")
            text_guidance = gr.Slider(0, 15, value=d["guidance_scale"], step=0.1, label="text guidance")
            image_guidance = gr.Slider(0, 5, value=d["image_guidance_scale"], step=0.1, label="image guidance")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="seed", elem_id="seed")
            randomize = gr.Checkbox(value=False, label="random seed each edit")
    strip = gr.Gallery(label="history", elem_id="history", columns=8, fit_columns=False, height=200,
                       object_fit="contain", format="png")
    if examples:
        gr.Examples(examples=examples, inputs=[source, instruction], label="examples")
    return _Page(state, source, region, result, status, instruction, edit_btn, more_btn, undo_btn, steps,
                 text_guidance, image_guidance, seed, randomize, strip)


def _region_input(gr, has_mask: bool):
    """The region brush of a model with mask channels; otherwise a note, and a state that is always None."""
    if has_mask:
        return gr.ImageEditor(type="pil", label="region (optional): paint where to edit", elem_id="region",
                              sources=[], transforms=[], layers=False,
                              brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=6))
    region = gr.State(None)
    gr.Markdown("Region edits need a model with mask channels (`unet.mask_channels = 4`); this "
                "model has none, so every edit applies to the whole image.", elem_id="no-mask-note")
    return region


def _wire(gr, pipe: SmartEditPipeline, page: _Page, has_mask: bool) -> None:
    """Connect Edit / Edit the result / Enter / Undo (and, with a brush, a new input image) to :func:`edit` and
    :func:`undo`."""

    def run(continue_result, state, image, text, region_value, steps, text_guidance, image_guidance, seed,
            randomize, progress=gr.Progress()):
        progress(0, desc="encoding the instruction")
        new_state, shown, message, used = edit(
            pipe, state, image, text, steps=steps, text_guidance=text_guidance, image_guidance=image_guidance,
            seed=seed, randomize_seed=randomize, mask=mask_from_editor(region_value),
            continue_result=continue_result,
            progress=lambda k, n: progress((k, n), desc="denoising", unit="steps"))
        shown_now = (new_state, shown, message, used, history(new_state))
        # the region brush paints on the image the next "Edit the result" starts from
        return shown_now + (_editor_value(shown) if shown is not None else gr.skip(),) if has_mask else shown_now

    inputs = [page.state, page.source, page.instruction, page.region, page.steps, page.text_guidance,
              page.image_guidance, page.seed, page.randomize]
    outputs = [page.state, page.result, page.status, page.seed, page.strip] + ([page.region] if has_mask else [])
    for trigger, continue_result in ((page.edit_btn.click, False), (page.more_btn.click, True),
                                     (page.instruction.submit, False)):
        trigger(functools.partial(run, continue_result), inputs, outputs, show_progress_on=[page.result])

    def on_undo(state):
        new_state, shown, message = undo(state)
        return new_state, shown, message, history(new_state)

    page.undo_btn.click(on_undo, [page.state], [page.state, page.result, page.status, page.strip])
    if has_mask:
        page.source.change(lambda im: _editor_value(im) if im is not None else None, [page.source], [page.region])


def launch(app, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve the page (blocks until stopped); system fonts only, so the page loads offline."""
    gr = import_gradio()
    theme = gr.themes.Default(font=FONTS, font_mono=MONO_FONTS)
    app.queue().launch(server_name=host, server_port=port, share=share, theme=theme, show_error=True)
