"""The web demo: upload an image, type an instruction, get the edit (``smartedit demo --model DIR``).

Needs the optional ``gradio`` package (``pip install -e .[demo]``); the editing callback itself has no UI
dependency and is what the tests exercise.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def edit_callback(pipe, image, instruction: str, steps: int = 50, text_guidance: float = 7.5,
                  image_guidance: float = 1.5, seed: int = 0):
    """(edited PIL image, status text) for one upload; bad inputs return (None, the error message)."""
    if image is None:
        return None, "Upload an image first."
    try:
        out = pipe(image, instruction, num_inference_steps=int(steps), text_guidance_scale=float(text_guidance),
                   image_guidance_scale=float(image_guidance), seed=int(seed))
    except (ValueError, TypeError) as exc:
        return None, f"Cannot edit: {exc}"
    return out.images[0], f"seed {out.seeds[0]}, {int(steps)} steps, text guidance {text_guidance}, " \
                          f"image guidance {image_guidance}"


def build_app(pipe):
    """A gradio Blocks app around :func:`edit_callback`."""
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("error: the web demo needs gradio: pip install -e '.[demo]'") from None

    def run(image, instruction, steps, text_guidance, image_guidance, seed):
        return edit_callback(pipe, image, instruction, steps, text_guidance, image_guidance, seed)

    with gr.Blocks(title="SmartEdit") as app:
        gr.Markdown("# SmartEdit\nUpload an image and say how to edit it.")
        with gr.Row():
            image = gr.Image(type="pil", label="input")
            result = gr.Image(type="pil", label="edited")
        instruction = gr.Textbox(label="instruction", placeholder="remove the smaller cup")
        with gr.Row():
            steps = gr.Slider(1, 100, value=50, step=1, label="steps")
            text_guidance = gr.Slider(0, 15, value=7.5, label="text guidance")
            image_guidance = gr.Slider(0, 5, value=1.5, label="image guidance")
            seed = gr.Number(value=0, precision=0, label="seed")
        status = gr.Markdown()
        gr.Button("Edit").click(run, [image, instruction, steps, text_guidance, image_guidance, seed],
                                [result, status])
    return app
