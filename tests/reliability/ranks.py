"""Two real CLI ranks of one gloo run, shared by the distributed drills (test_distributed_interrupt.py, and the
SIGTERM-to-one-rank case of test_signals.py).

Both ranks are ``python -m container_ssl`` processes joined through the torch.distributed environment
variables, as torchrun or SLURM would start them.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from .helpers import REPO, cli_command, cli_env

EXTRA = ["data.subset=128", "optim.epochs=2", "optim.batch_size_per_gpu=8", "checkpoint_every_steps=1"]
TOTAL_ITERATIONS = 16  # 128 images / (8 per rank x 2 ranks) = 8 per epoch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(args: list[str], folder: Path, name: str,
                 timeout_s: int) -> list[tuple[subprocess.Popen, Path, Path]]:
    """Start ranks 0 and 1 of one run; returns (process, stdout file, stderr file) per rank."""
    port, ranks = free_port(), []
    for rank in range(2):
        env = cli_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CONTAINER_SSL_DIST_TIMEOUT=str(timeout_s))
        out, err = folder / f"{name}.rank{rank}.out", folder / f"{name}.rank{rank}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            ranks.append((subprocess.Popen(cli_command(args), stdout=fo, stderr=fe, env=env, cwd=REPO), out, err))
    return ranks


def wait_for_step(proc: subprocess.Popen, log: Path, step: int, limit_s: float = 180) -> None:
    """Wait until rank 0's log shows ``step`` of :data:`TOTAL_ITERATIONS`; fail if it ends or ``limit_s`` passes."""
    deadline = time.monotonic() + limit_s
    while not re.search(rf" it {step}/{TOTAL_ITERATIONS} ", log.read_text()):
        assert proc.poll() is None, f"rank 0 ended before step {step}:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"step {step} not reached in {limit_s:.0f} s"
        time.sleep(0.05)
