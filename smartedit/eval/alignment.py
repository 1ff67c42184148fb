"""How well a model's condition reproduces the CLIP text the UNet was trained on (the stage-1 objective), measured on
EDIT prompts — the context the editor really uses — rather than on the stage-1 training prompts.

For ``count`` edits the model's context (MLLM ``<img_i>`` states → Q-Former, BIM off) is compared with the CLIP text
encoder's last hidden state of the same instruction:

* ``mse``: mean squared error to the CLIP text (what stage 1 minimises);
* ``mse_of_mean``: the error of always answering the mean CLIP text of these instructions (the across-instruction
  variance): ``mse`` at or above it means the context carries no usable instruction information;
* ``context_variance``: how much the context itself varies across instructions (near 0: collapsed to one answer);
* ``top1_retrieval``: how often the nearest CLIP text to an edit's context is its own instruction's (chance 1/count);
* ``reply_accuracy`` (models that write their reply, ``config.mllm.writes_reply``): how often the decoded reply is
  exactly the expected one (e.g. the instruction said plainly).

It is what told the ShapesWorld recipe that the paper's text-only stage 1 does not carry over to edit prompts with a
2-layer LLM (``smartedit.shapes.recipe``).
"""

from __future__ import annotations

import torch

from ..prompt import reply_words

__all__ = ["alignment_probe"]


@torch.no_grad()
def alignment_probe(model, clip_text, images: torch.Tensor, instructions: list[str],
                    targets: list[str] | None = None, replies: list[str] | None = None) -> dict[str, float]:
    """``model``: a :class:`~smartedit.model.SmartEditModel`; ``clip_text``: a callable ``texts → [B, 77, D]`` (e.g.
    :class:`smartedit.train.clip_text.ClipTextTarget`); ``images`` [B, 3, H, W] in [0, 1], one per instruction;
    ``targets``: the texts whose CLIP text each context should match (default: the instructions themselves, e.g.
    each instruction said plainly when stage 1 aligned to that); ``replies``: what a model that writes its reply
    should write (default: the target texts)."""
    targets = instructions if targets is None else targets
    if images.ndim != 4 or images.shape[0] != len(instructions) or len(instructions) < 2 or \
            len(targets) != len(instructions):
        raise ValueError(f"need at least two images [B,3,H,W] with one instruction and one target text each, got "
                         f"images of shape {tuple(images.shape)}, {len(instructions)} instructions and "
                         f"{len(targets)} target texts")
    was_training = model.training
    model.eval()
    try:
        features = model.mllm.encode_images(model.mllm.preprocess_images(images))  # [B, P, Dv]
        states, written = model.condition_states(instructions, features)  # [B, N, H]; decoded when it writes one
        context = model.qformer(states).float()  # [B, Q, D]
    finally:
        model.train(was_training)
    target = clip_text(targets).float().to(context.device)  # [B, Q, D]
    if target.shape != context.shape:
        raise ValueError(f"the CLIP text encoder gives {tuple(target.shape)}, the model's context "
                         f"{tuple(context.shape)}: use the encoder the model was aligned to")
    distances = torch.cdist(context.flatten(1), target.flatten(1))  # [B, B]
    hits = distances.argmin(dim=1) == torch.arange(len(instructions), device=distances.device)
    out = {}
    if written is not None:  # the model writes its reply: how often it is the expected one
        expected = targets if replies is None else replies
        words = [reply_words(r) for r in written]
        out["reply_accuracy"] = sum(w == t.strip() for w, t in zip(words, expected)) / len(expected)
    return {**out, "mse": float(((context - target) ** 2).mean()),
            "mse_of_mean": float(((target - target.mean(0, keepdim=True)) ** 2).mean()),
            "context_variance": float(((context - context.mean(0, keepdim=True)) ** 2).mean()),
            "top1_retrieval": float(hits.float().mean()), "chance": 1.0 / len(instructions),
            "edits": len(instructions)}
