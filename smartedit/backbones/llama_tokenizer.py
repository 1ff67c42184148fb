"""LLaVA-1.1 / Vicuna tokenizers as the reference used them.

Those folders ship only a SentencePiece ``tokenizer.model``, and the reference tokenized with transformers 4.28's
slow ``LlamaTokenizer``: the text is split at added tokens, whitespace next to an added token is dropped, and every
text piece is SentencePiece-encoded on its own (so each starts with SentencePiece's dummy-prefix ``▁``). The fast
tokenizer transformers converts from ``tokenizer.model`` today keeps that whitespace (a lone ``▁`` before
``<im_start>`` and before ``<img_0>``) and prefixes only the first piece, so the ids the released weights were trained
on would shift. :func:`use_reference_spacing` makes the converted tokenizer reproduce the slow one; the new tokens
are then added with ``lstrip`` / ``rstrip`` (:func:`smartedit.prompt.add_smartedit_tokens`). Saved with the model,
the behaviour travels in tokenizer.json.
"""

from __future__ import annotations

__all__ = ["use_reference_spacing", "STRIP_ATTR"]

STRIP_ATTR = "smartedit_strip_added_tokens"
"""Tokenizer attribute telling :func:`~smartedit.prompt.add_smartedit_tokens` to add tokens that eat the whitespace
around them (the slow tokenizer's default for added tokens)."""


def use_reference_spacing(tokenizer):
    """``tokenizer`` (a fast LLaMA tokenizer converted from a SentencePiece ``tokenizer.model``, Metaspace
    pre-tokenizer) with the slow tokenizer's spacing around added tokens; other tokenizers are returned as they
    are."""
    from tokenizers import normalizers, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if not isinstance(pre, pre_tokenizers.Metaspace) or backend.normalizer is not None:
        return tokenizer
    # SentencePiece's own normalisation, applied to each piece between added tokens: a dummy-prefix ▁, spaces → ▁
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(pre.replacement),
                                               normalizers.Replace(" ", pre.replacement)])
    backend.pre_tokenizer = None
    # a plain fast tokenizer over that backend: saved and loaded again, tokenizer.json is used as it is (the LLaMA
    # tokenizer class would rebuild its own normaliser)
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=tokenizer.bos_token,
                                   eos_token=tokenizer.eos_token, unk_token=tokenizer.unk_token,
                                   pad_token=tokenizer.pad_token, model_max_length=tokenizer.model_max_length,
                                   clean_up_tokenization_spaces=False)
    fast.name_or_path = tokenizer.name_or_path
    setattr(fast, STRIP_ATTR, True)
    return fast
