"""Drill 6: when one rank of a 2-process gloo run dies or hangs, the other stops in bounded time, in one line.

Why: a rank that waits forever on a dead peer holds its GPUs until someone notices. The survivor must
leave within the process-group timeout (``CONTAINER_SSL_DIST_TIMEOUT``), say which rank it is and how to
go on, and the run must then resume from its checkpoint and finish. Both ranks are real CLI processes
joined through the torch.distributed environment variables, as torchrun or SLURM would start them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from container_ssl.checkpoint import load_checkpoint

from .figures import record, table
from .helpers import one_line_error, short, tiny_args
from .ranks import EXTRA, TOTAL_ITERATIONS, launch_ranks, wait_for_step


def _stop_peer_and_time_survivor(ranks, how: signal.Signals, step: int, bound_s: float) -> tuple[float, str]:
    """Send ``how`` to rank 1 after rank 0 logged ``step``; return rank 0's exit delay and its error line."""
    (survivor, out, err), (peer, _, _) = ranks
    try:
        wait_for_step(survivor, out, step)
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
        ranks = launch_ranks(args, tmp_path, f"launch{n}", timeout_s)
        delay, line = _stop_peer_and_time_survivor(ranks, how, step, bound_s)
        for text in ("rank 0 of 2", "lost contact with another rank", str(out / "checkpoint.pt"), "resume"):
            assert text in line, f"{text!r} not in {line!r}"
        iteration = load_checkpoint(out / "checkpoint.pt")["iteration"]  # readable, and where the run stands
        rows.append((f"{kind} after step {step}", f"{timeout_s} s", f"{delay:.1f} s", str(iteration),
                     short(line.replace(str(tmp_path), "$TMP"), 120)))

    ranks = launch_ranks(args, tmp_path, "resume", 30)
    for proc, _, err in ranks:
        assert proc.wait(timeout=300) == 0, err.read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert summary["finished"] and ckpt["iteration"] == TOTAL_ITERATIONS and ckpt["world_size"] == 2
    rows.append(("resume with 2 ranks", "30 s", "-", str(ckpt["iteration"]), "finished"))
    record("drill 6: interrupted distributed run (2 gloo ranks)",
           table(("event", "timeout", "rank 0 exit after", "checkpoint iteration", "rank 0 says"), rows))
