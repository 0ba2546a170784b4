"""One code path for single-process, torchrun and SLURM/submitit runs.

Why: users launch the same trainer as a plain process, under ``torchrun``, or as a SLURM job through
submitit. All three end up exporting the torch.distributed environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); submitit's ``TorchDistributedEnvironment().export()`` does it for
SLURM. So the trainer only reads those variables: present → a process group (NCCL on GPU, gloo on CPU)
with a finite timeout so a dead peer ends the others instead of hanging them; absent → one process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Self

import torch
import torch.distributed as dist

from .errors import UserError

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


def max_over_ranks(values: Sequence[int], device: torch.device) -> list[int]:
    """The element-wise largest ``values`` over all ranks (one MAX all-reduce; ``values`` itself outside DDP).

    Why: a decision one rank makes alone (a signal it caught, its clock passing the budget) must be taken
    by every rank at the same step, or the others block in the next collective. Several decisions travel
    in one tensor: the loop asks after every step, and each collective costs a round trip between ranks.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [int(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


_PEER_FAILURE_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                         "timeout", "gloo", "nccl", "processgroup", "c10d", "socket")


def peer_failure_line(e: BaseException) -> str | None:
    """The gist of an error of a torch.distributed collective (a peer rank died, hung or became unreachable)
    in one short line; None for any other error."""
    if not (isinstance(e, dist.DistError) or any(m in str(e).lower() for m in _PEER_FAILURE_MARKERS)):
        return None
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    if line.startswith("[") and "] " in line:  # drop gloo's "[.../pair.cc:561] " source location
        line = line.split("] ", 1)[1]
    return line.split(". ", 1)[0][:160]


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM ask the training loop to stop at the next step boundary.

    Why: by default SIGINT raises KeyboardInterrupt wherever the loop happens to be and SIGTERM ends the
    process at once, so every step since the last save (up to an epoch) is lost. Inside this context the
    handler only records the signal; the trainer polls :attr:`received` after every step (all ranks agree
    through :func:`max_over_ranks`), writes ``checkpoint.pt`` at that boundary and exits 128 + the signal number.
    A second signal aborts at once (KeyboardInterrupt for SIGINT, the default action for SIGTERM).

    Only signals that still have Python's default disposition are taken over: a launcher that installed
    its own handler (submitit bypasses SIGTERM so that its USR2 requeue can finish) keeps it. DataLoader
    workers are forked with this handler and ignore the signal (a terminal's Ctrl-C reaches its whole
    process group): the training process stops them cleanly once it has saved.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        self._pid = os.getpid()
        for signum in self.SIGNALS:
            current = signal.getsignal(signum)
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            if current is default:
                self._previous[signum] = current
                signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the training process decides
            return
        if self.received is not None:  # the second one: abort at once
            self.__exit__()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum)
        # os.write, not print: the handler may interrupt a print to the same buffered stream (re-entry error)
        try:
            os.write(2, (f"caught {self.received.name}: stopping after the current step to write the checkpoint "
                         "(send it again to abort at once)\n").encode())
        except OSError:
            pass


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
