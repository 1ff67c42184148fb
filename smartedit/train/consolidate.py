"""ZeRO checkpoint → model folder (safetensors, ``save_pretrained`` format), on CPU, without the training run.

    python -m smartedit.train.consolidate OUTPUT/checkpoints/step-00001000 exported_model/ [--dtype float32]

Reads the DeepSpeed shards of a training checkpoint (:mod:`smartedit.train.checkpoint`) with DeepSpeed's
``zero_to_fp32`` (fp32 master weights of the trained parameters, the saved values of the frozen ones and the
buffers), the model config and tokenizer stored beside them, and writes a folder that
``SmartEditModel.from_pretrained`` loads. The checkpoint must verify against its manifest (sizes and SHA-256), and
every shard is read with ``weights_only=True`` and a short allow-list (:mod:`smartedit.train.safe_load`): a shard
that asks for anything else is refused, so no code from the files runs. Works for ZeRO-2 and ZeRO-3 checkpoints written by any number of processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

logger = logging.getLogger(__name__)

__all__ = ["consolidate", "main"]


def consolidate(checkpoint: str, output: str, dtype: str = "float32") -> str:
    """Write the model of ``checkpoint`` (a ``step-N`` folder) to ``output``; returns ``output``."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from ..config import SmartEditConfig
    from ..model import TOKENIZER_DIR, load_tokenizer
    from .checkpoint import verify_checkpoint
    from .export import strip_prefix, write_model
    from .safe_load import safe_torch_load

    problems = verify_checkpoint(checkpoint)
    if problems:
        raise ValueError(f"{checkpoint} is not a complete training checkpoint: " + "; ".join(problems))
    model_dir = os.path.join(checkpoint, "model")
    config = SmartEditConfig.load(model_dir)
    tok_dir = os.path.join(model_dir, TOKENIZER_DIR)
    tokenizer = load_tokenizer(tok_dir) if os.path.isdir(tok_dir) else None
    with safe_torch_load():  # zero_to_fp32's torch.load calls read weights only: no code runs from the shards
        state = get_fp32_state_dict_from_zero_checkpoint(os.path.join(checkpoint, "deepspeed"), tag="ds")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    return write_model(strip_prefix(dict(state)), config, tokenizer, output, dtype=torch_dtype,
                       info={"consolidated_from": os.path.abspath(checkpoint)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartedit.train.consolidate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a training checkpoint folder (OUTPUT/checkpoints/step-N)")
    parser.add_argument("output", help="the model folder to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        consolidate(args.checkpoint, args.output, args.dtype)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
