"""One code path for single-process, torchrun and SLURM/submitit runs.

Why: users launch the same trainer as a plain process, under ``torchrun``, or as a SLURM job through
submitit. All three end up exporting the torch.distributed environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); submitit's ``TorchDistributedEnvironment().export()`` does it for
SLURM. So the trainer only reads those variables: present → a process group (NCCL on GPU, gloo on CPU)
with a finite timeout so a dead peer ends the others instead of hanging them; absent → one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` = this process's GPU when CUDA is available, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from ..errors import UserError
        raise UserError(f"device={requested} but CUDA is not available here; use device=cpu or device=auto")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: int | None = None) -> DistInfo:
    """Join the process group described by the environment, or run as one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s or int(os.environ.get("CONTAINER_SSL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
