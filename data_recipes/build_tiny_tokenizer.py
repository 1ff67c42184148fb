"""Build the byte-level BPE tokenizer shipped for the ``tiny`` preset.

The tokenizer is a stand-in for Vicuna's SentencePiece vocabulary at laptop scale: ids 0/1/2 are
``<unk>``/``<s>``/``</s>`` as in LLaMA (pad = unk), byte-level so any text tokenizes, and a fixed vocabulary
size (``MLLMConfig.vocab_size`` of the tiny preset). SmartEdit's 35 new tokens are added on top at model build
time, exactly as for the real tokenizer.

Usage: ``python -m data_recipes.build_tiny_tokenizer [--out DIR] [--vocab-size N]``
"""

from __future__ import annotations

import argparse
import logging
import os

from smartedit.prompt import SYSTEM_PROMPT, EDIT_TEMPLATES

logger = logging.getLogger(__name__)

_WORDS = """
the a an of to in on at with and or is are be it this that these those left right top bottom middle center
small smaller smallest large larger largest big bigger biggest tiny huge first second third last other
red green blue yellow purple orange pink white black gray grey brown cyan magenta golden silver
circle square triangle star heart ring cross hexagon diamond rectangle ellipse shape shapes object objects
remove delete erase replace change turn make paint color colour recolor add put move mirror reflection
into from by as for than more most less one two three four five corners corner side sides round roll
image picture photo scene background foreground sky grass water wall floor table cup knife spoon fruit
what which where how many there here please could you can edit edited instruction mark pixels leave rest
unchanged keep same new old used cut sun night day snow winter summer style dog cat horse goat person
yes no sure certainly of course here is created generate generated create caption describe described
"""


def corpus() -> list[str]:
    lines = [SYSTEM_PROMPT, *EDIT_TEMPLATES]
    words = _WORDS.split()
    lines += [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() for w in words]
    colours = words[words.index("red"):words.index("silver") + 1]
    shapes = words[words.index("circle"):words.index("objects") + 1]
    lines += [f"the {c} {s}" for c in colours for s in shapes]
    lines += [str(i) for i in range(100)]
    lines += ["USER: ASSISTANT: 0 1 2 3 4 5 6 7 8 9 . , ? ! ' \" : ; - ( )"]
    return lines


def build(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus() * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} entries, expected {vocab_size}: "
                           f"extend the corpus in {__file__}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>", model_max_length=512, padding_side="right")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = os.path.join(os.path.dirname(__file__), "..", "smartedit", "assets", "tiny_tokenizer")
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    tokenizer = build(args.vocab_size)
    tokenizer.save_pretrained(args.out)
    logger.info("wrote %s (%d tokens)", args.out, len(tokenizer))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
