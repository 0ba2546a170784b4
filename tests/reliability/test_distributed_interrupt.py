"""Drill 6: when one rank of a 2-process gloo run dies or hangs, the other stops in bounded time, in one line.

Why: a rank that waits forever on a dead peer holds its GPUs until someone notices. The survivor must
leave within the process-group timeout (``CONTAINER_SSL_DIST_TIMEOUT``), say which rank it is and how to
go on, and the run must then resume from its checkpoint and finish. Both ranks are real CLI processes
joined through the torch.distributed environment variables, as torchrun or SLURM would start them.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from container_ssl.checkpoint import load_checkpoint

from .figures import record, table
from .helpers import REPO, cli_command, cli_env, one_line_error, short, tiny_args

EXTRA = ["data.subset=128", "optim.epochs=2", "optim.batch_size_per_gpu=8", "checkpoint_every_steps=1"]
TOTAL_ITERATIONS = 16  # 128 images / (8 per rank x 2 ranks) = 8 per epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], folder: Path, name: str, timeout_s: int) -> list[tuple[subprocess.Popen, Path, Path]]:
    """Start ranks 0 and 1 of one run; returns (process, stdout file, stderr file) per rank."""
    port, ranks = _free_port(), []
    for rank in range(2):
        env = cli_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CONTAINER_SSL_DIST_TIMEOUT=str(timeout_s))
        out, err = folder / f"{name}.rank{rank}.out", folder / f"{name}.rank{rank}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            ranks.append((subprocess.Popen(cli_command(args), stdout=fo, stderr=fe, env=env, cwd=REPO), out, err))
    return ranks


def _wait_for_step(proc: subprocess.Popen, log: Path, step: int, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while not re.search(rf" it {step}/{TOTAL_ITERATIONS} ", log.read_text()):
        assert proc.poll() is None, f"rank 0 ended before step {step}:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"step {step} not reached in {limit_s:.0f} s"
        time.sleep(0.05)


def _stop_peer_and_time_survivor(ranks, how: signal.Signals, step: int, bound_s: float) -> tuple[float, str]:
    """Send ``how`` to rank 1 after rank 0 logged ``step``; return rank 0's exit delay and its error line."""
    (survivor, out, err), (peer, _, _) = ranks
    try:
        _wait_for_step(survivor, out, step)
        peer.send_signal(how)
        start = time.monotonic()
        try:
            survivor.wait(timeout=bound_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rank 0 still running {bound_s:.0f} s after rank 1 got {how.name}") from None
        return time.monotonic() - start, one_line_error(err.read_text(), survivor.returncode)
    finally:
        for proc, _, _ in ranks:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.mark.reliability
def test_dead_or_hung_rank_stops_the_other_then_resume_finishes(cifar10_small, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(cifar10_small, out, *EXTRA)
    rows = []
    scenarios = (("rank 1 killed (SIGKILL)", signal.SIGKILL, 3, 30, 60.0),
                 ("rank 1 hung (SIGSTOP)", signal.SIGSTOP, 9, 10, 45.0))
    for n, (kind, how, step, timeout_s, bound_s) in enumerate(scenarios):
        delay, line = _stop_peer_and_time_survivor(_launch(args, tmp_path, f"launch{n}", timeout_s), how, step,
                                                   bound_s)
        for text in ("rank 0 of 2", "lost contact with another rank", str(out / "checkpoint.pt"), "resume"):
            assert text in line, f"{text!r} not in {line!r}"
        iteration = load_checkpoint(out / "checkpoint.pt")["iteration"]  # readable, and where the run stands
        rows.append((f"{kind} after step {step}", f"{timeout_s} s", f"{delay:.1f} s", str(iteration),
                     short(line.replace(str(tmp_path), "$TMP"), 120)))

    ranks = _launch(args, tmp_path, "resume", 30)
    for proc, _, err in ranks:
        assert proc.wait(timeout=300) == 0, err.read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert summary["finished"] and ckpt["iteration"] == TOTAL_ITERATIONS and ckpt["world_size"] == 2
    rows.append(("resume with 2 ranks", "30 s", "-", str(ckpt["iteration"]), "finished"))
    record("drill 6: interrupted distributed run (2 gloo ranks)",
           table(("event", "timeout", "rank 0 exit after", "checkpoint iteration", "rank 0 says"), rows))
