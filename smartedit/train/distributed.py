"""Process-group set-up for the three launch modes: ``deepspeed`` (single or multi node), ``torchrun`` and plain
``python`` (one process: the rendezvous variables are filled in here).

On a machine without CUDA, DeepSpeed runs on its CPU accelerator (``DS_ACCELERATOR=cpu``) with the gloo backend,
and its shared-memory communication op is switched off (it would be JIT-compiled for about a minute on the first
run; gloo does the collectives).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "init_distributed", "barrier", "all_reduce", "is_main"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_environment() -> None:
    """Fill in the variables a one-process ``python`` launch lacks, and pick DeepSpeed's accelerator."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _skip_shm_comm_op(deepspeed) -> None:
    """Mark DeepSpeed's shared-memory comm op incompatible so that it is not JIT-built (~1 min) on CPU; gloo does
    the collectives. Seeding the table directly also skips DeepSpeed's probe of every op (it compiles test programs),
    whose only reader in DeepSpeed is this op's lookup."""
    ops = deepspeed.ops
    if "__compatible_ops__" in vars(ops):
        ops.__compatible_ops__["deepspeed_shm_comm"] = False
    else:
        ops.__compatible_ops__ = {"deepspeed_shm_comm": False}


def init_distributed() -> DistInfo:
    """Initialise (once per process) the default process group through DeepSpeed; returns this process's place."""
    _prepare_environment()
    import deepspeed
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if not cuda:
            _skip_shm_comm_op(deepspeed)
        deepspeed.init_distributed(dist_backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device,
                    backend=backend)
    logger.debug("distributed: %s", info)
    return info


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce a small CPU/GPU tensor in place across processes (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return values


def is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
