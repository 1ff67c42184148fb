"""SmartEdit's special tokens and the Vicuna-v1 editing prompt.

The conversation the MLLM sees (LLaVA-1.1 / Vicuna-v1 format)::

    {SYSTEM_PROMPT} USER: <im_start><img>…<img><im_end> {editing request with the instruction} ASSISTANT: {answer} <img_0>…<img_31></s>

``<img>`` is the image placeholder: one per vision patch (256 for ViT-L/14 at 224 px); the MLLM replaces their
embeddings by the projected patch features. The last-layer hidden states at the 32 ``<img_i>`` positions feed the
Q-Former. New tokens are appended to the base vocabulary in this order (ids 32000..32034 for LLaMA):
``<img>``, ``<im_start>``, ``<im_end>``, ``<img_0>`` … ``<img_31>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
IMAGE_TOKEN = "<img>"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"

SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

# Editing requests (user turn) and answers (assistant turn); ``{instruction}`` is the user's edit.
EDIT_TEMPLATES = (
    "Please edit the image following this instruction: {instruction}",
    "Here is an image. {instruction}",
    "Could you change the image as described? {instruction}",
    "Edit the picture: {instruction}",
)
EDIT_ANSWERS = (
    "Sure, here is the edited image",
    "Certainly, I have edited the image",
    "Here is the picture after the edit",
)
# Stage-1 alignment (text only): "create a picture of {caption}".
CAPTION_TEMPLATE = "Create a picture of {caption}"
CAPTION_ANSWER = "Here is the picture"


def image_token(i: int) -> str:
    return f"<img_{i}>"


def new_tokens(num_image_tokens: int) -> list[str]:
    return [IMAGE_TOKEN, IM_START_TOKEN, IM_END_TOKEN] + [image_token(i) for i in range(num_image_tokens)]


@dataclass(frozen=True)
class TokenIds:
    """Ids of SmartEdit's new tokens, which sit right after the base vocabulary."""

    base_vocab_size: int
    num_image_tokens: int

    @property
    def image(self) -> int:
        return self.base_vocab_size

    @property
    def im_start(self) -> int:
        return self.base_vocab_size + 1

    @property
    def im_end(self) -> int:
        return self.base_vocab_size + 2

    @property
    def img0(self) -> int:
        return self.base_vocab_size + 3

    @property
    def full_vocab_size(self) -> int:
        return self.img0 + self.num_image_tokens

    def is_output_image_token(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.img0) & (ids < self.full_vocab_size)


def add_smartedit_tokens(tokenizer, num_image_tokens: int, base_vocab_size: int | None = None) -> TokenIds:
    """Add the 3 + ``num_image_tokens`` new tokens to ``tokenizer`` (idempotent) and check their ids.

    ``base_vocab_size`` defaults to the tokenizer's size before adding; a tokenizer that already holds other
    added tokens (e.g. LLaVA's ``<im_patch>``) is rejected with a clear error because ids would not line up.
    """
    names = new_tokens(num_image_tokens)
    vocab = tokenizer.get_vocab()
    if all(n in vocab for n in names):
        base = vocab[IMAGE_TOKEN]
    else:
        base = len(tokenizer)
        if getattr(tokenizer, "smartedit_strip_added_tokens", False):  # (smartedit.backbones.llama_tokenizer)
            from tokenizers import AddedToken

            names_or_tokens = [AddedToken(n, lstrip=True, rstrip=True, normalized=False) for n in names]
        else:
            names_or_tokens = names
        tokenizer.add_tokens(names_or_tokens[:1], special_tokens=False)
        tokenizer.add_tokens(names_or_tokens[1:3], special_tokens=True)
        tokenizer.add_tokens(names_or_tokens[3:], special_tokens=False)
        vocab = tokenizer.get_vocab()
    ids = TokenIds(base, num_image_tokens)
    expected = {n: base + i for i, n in enumerate(names)}
    wrong = {n: vocab.get(n) for n, i in expected.items() if vocab.get(n) != i}
    if wrong or (base_vocab_size is not None and base != base_vocab_size):
        raise ValueError(
            f"tokenizer ids of SmartEdit's new tokens are not contiguous after the base vocabulary "
            f"(base {base}, expected {base_vocab_size}; mismatched: {wrong}). Use the base LLaMA/Vicuna "
            f"tokenizer without extra added tokens.")
    return ids


def edit_conversation(instruction: str, num_image_patches: int, num_image_tokens: int,
                      template: int = 0, answer: int = 0, reply: str | None = None) -> tuple[str, str]:
    """(prompt up to and including ``ASSISTANT:``, assistant answer ending in the ``<img_i>`` tokens). The answer's
    words are ``reply`` (e.g. the instruction worked out) when given, else the stock answer ``EDIT_ANSWERS[answer]``."""
    image = IM_START_TOKEN + IMAGE_TOKEN * num_image_patches + IM_END_TOKEN
    user = f"{image} {EDIT_TEMPLATES[template].format(instruction=instruction.strip())}"
    prompt = f"{SYSTEM_PROMPT} USER: {user} ASSISTANT:"
    return prompt, f" {edit_words(answer, reply)} " + "".join(image_token(i) for i in range(num_image_tokens))


def reply_words(decoded: str) -> str:
    """A decoded edit reply (``Condition.replies``) → its words, without the ``<img_i>`` tokens that end it."""
    return decoded.split(image_token(0))[0].strip()


def edit_words(answer: int = 0, reply: str | None = None) -> str:
    """What the assistant says before its ``<img_i>`` tokens: ``reply`` when given, else a stock answer."""
    return EDIT_ANSWERS[answer] if reply is None else reply.strip()


def caption_conversation(caption: str, num_image_tokens: int) -> tuple[str, str]:
    """Stage-1 (text only) conversation: "create a picture of {caption}" → ``<img_0..31>``."""
    prompt = f"{SYSTEM_PROMPT} USER: {CAPTION_TEMPLATE.format(caption=caption.strip())} ASSISTANT:"
    reply = f" {CAPTION_ANSWER} " + "".join(image_token(i) for i in range(num_image_tokens))
    return prompt, reply


def chat_conversation(turns: list[tuple[str, str]], num_image_patches: int) -> list[tuple[str, str]]:
    """Multi-turn LLaVA-style chat (no image tokens in the answers); the image is spliced into the first turn."""
    image = IM_START_TOKEN + IMAGE_TOKEN * num_image_patches + IM_END_TOKEN
    out, history = [], f"{SYSTEM_PROMPT}"
    for k, (question, answer) in enumerate(turns):
        user = f"{image} {question.strip()}" if k == 0 else question.strip()
        out.append((f"{history} USER: {user} ASSISTANT:", f" {answer.strip()}"))
        history = ""
    return out


def tokenize_conversation(tokenizer, segments: list[tuple[str, str]], eos: bool = True,
                          max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Token ids and labels for [(prompt, reply), …]: prompts are masked with ``IGNORE_INDEX``, replies
    (and ``</s>`` after each) are learned. Prompt and reply are tokenized separately so the boundary is exact."""
    ids: list[int] = []
    labels: list[int] = []
    for k, (prompt, reply) in enumerate(segments):
        p = tokenizer(prompt, add_special_tokens=(k == 0))["input_ids"]
        r = tokenizer(reply, add_special_tokens=False)["input_ids"]
        if eos:
            r = r + [tokenizer.eos_token_id]
        ids += p + r
        labels += [IGNORE_INDEX] * len(p) + r
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"conversation is {len(ids)} tokens, longer than the model's limit of {max_length}: "
                         f"shorten the instruction")
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


def pad_batch(items: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of ``tokenize_conversation`` outputs into a batch with an attention mask."""
    length = max(len(it["input_ids"]) for it in items)
    input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for b, it in enumerate(items):
        n = len(it["input_ids"])
        input_ids[b, :n] = it["input_ids"]
        labels[b, :n] = it["labels"]
        attention_mask[b, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
