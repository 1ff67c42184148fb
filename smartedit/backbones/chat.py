"""How each MLLM family writes SmartEdit's conversations.

A conversation is a list of (prompt, reply) segments for :func:`smartedit.prompt.tokenize_conversation`: prompts are
masked from the LM loss, replies (and the tokenizer's end-of-turn token after each) are learned. The edit reply
always ends in the ``<img_0>`` … ``<img_{N-1}>`` tokens whose hidden states feed the Q-Former; its words are a stock
answer, or a sample's own ``reply`` (e.g. the instruction worked out).

* :class:`VicunaFormat` (``llava``): the LLaVA-1.1 / Vicuna-v1 prompt of :mod:`smartedit.prompt`, one ``<img>``
  placeholder per vision patch, as the reference.
* :class:`ChatTemplateFormat` (``qwen2_5_vl``): the model's own chat template (``tokenizer.apply_chat_template``),
  with its image placeholder (``<|image_pad|>``) repeated once per visual token, as its processor does.
"""

from __future__ import annotations

from ..prompt import (CAPTION_ANSWER, CAPTION_TEMPLATE, EDIT_TEMPLATES, caption_conversation, chat_conversation,
                      edit_conversation, edit_words, image_token)

__all__ = ["VicunaFormat", "ChatTemplateFormat"]


class VicunaFormat:
    """The LLaVA-1.1 / Vicuna-v1 conversation (:mod:`smartedit.prompt`)."""

    def __init__(self, num_placeholders: int, num_image_tokens: int):
        self.num_placeholders = num_placeholders
        self.num_image_tokens = num_image_tokens

    def edit(self, instruction: str, template: int = 0, answer: int = 0,
             reply: str | None = None) -> list[tuple[str, str]]:
        return [edit_conversation(instruction, self.num_placeholders, self.num_image_tokens, template, answer, reply)]

    def caption(self, caption: str) -> list[tuple[str, str]]:
        return [caption_conversation(caption, self.num_image_tokens)]

    def chat(self, turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return chat_conversation(turns, self.num_placeholders)


class ChatTemplateFormat:
    """A tokenizer's own chat template; the image is the first content item of the first user turn."""

    def __init__(self, tokenizer, num_placeholders: int, num_image_tokens: int, placeholder: str):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template (tokenizer_config.json 'chat_template', "
                             "chat_template.jinja or the processor's chat_template.json): this MLLM family writes "
                             "its conversations with it")
        self.tokenizer = tokenizer
        self.num_placeholders = num_placeholders
        self.num_image_tokens = num_image_tokens
        self.placeholder = placeholder

    def _render(self, messages: list[dict], generation: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return text.replace(self.placeholder, self.placeholder * self.num_placeholders)

    def _segments(self, turns: list[tuple[str | list, str]]) -> list[tuple[str, str]]:
        """(user content, assistant reply) turns → segments whose concatenation (with the end-of-turn token after
        each reply) is exactly the template's rendering of the whole conversation."""
        eos = self.tokenizer.eos_token or ""
        messages: list[dict] = []
        consumed, out = "", []
        for user, reply in turns:
            messages.append({"role": "user", "content": user})
            rendered = self._render(messages, generation=True)
            if not rendered.startswith(consumed):
                raise ValueError("the chat template does not render a conversation as a prefix of its continuation; "
                                 "SmartEdit cannot split it into prompt and reply segments")
            out.append((rendered[len(consumed):], reply))
            consumed = rendered + reply + eos
            messages.append({"role": "assistant", "content": reply})
        return out

    def _image_tokens(self) -> str:
        return "".join(image_token(i) for i in range(self.num_image_tokens))

    def edit(self, instruction: str, template: int = 0, answer: int = 0,
             reply: str | None = None) -> list[tuple[str, str]]:
        user = [{"type": "image"}, {"type": "text",
                                    "text": EDIT_TEMPLATES[template].format(instruction=instruction.strip())}]
        return self._segments([(user, f"{edit_words(answer, reply)} {self._image_tokens()}")])

    def caption(self, caption: str) -> list[tuple[str, str]]:
        return self._segments([(CAPTION_TEMPLATE.format(caption=caption.strip()),
                                f"{CAPTION_ANSWER} {self._image_tokens()}")])

    def chat(self, turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
        content = [([{"type": "image"}, {"type": "text", "text": q.strip()}] if k == 0 else q.strip(), a.strip())
                   for k, (q, a) in enumerate(turns)]
        return self._segments(content)
