"""Drill 1: SIGKILL a pretraining run at 10 seeded random points, resume after each, end bitwise-equal.

Why: a preempted or OOM-killed job gets no chance to clean up. The only promise that matters is that
``checkpoint.pt`` is always loadable and that resuming from it gives exactly the run that was never
interrupted. The kills land in the first iteration (before any checkpoint exists), inside checkpoint
writes (the atomic save's temp file is on disk) and at random moments between steps.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from container_ssl.checkpoint import load_checkpoint

from .figures import record, table
from .helpers import REPO, cli_command, cli_env, run_cli, temp_files, tiny_args

EXTRA = ["data.subset=128", "optim.epochs=3", "checkpoint_every_steps=1"]  # 8 iterations per epoch
TOTAL_ITERATIONS = 24
KILLS = 10
SEED = 1234
POLL_S = 0.0005
WAIT_S = 120.0


def _iteration(out: Path) -> int:
    """Iteration of the run's checkpoint (0 when none); fails the drill if the file is unreadable."""
    path = out / "checkpoint.pt"
    return int(load_checkpoint(path)["iteration"]) if path.is_file() else 0


def _last_step(log: Path) -> int:
    """Global step N of the last progress line ``epoch E/3 it N/24 loss ...`` (0 before the first)."""
    steps = [int(m.group(1)) for m in re.finditer(rf" it (\d+)/{TOTAL_ITERATIONS} ", log.read_text())]
    return max(steps, default=0)


def _wait_for(proc: subprocess.Popen, log: Path, ready, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (status {proc.returncode}) before the kill point ({what}):\n"
                                 + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"kill point not reached in {WAIT_S:.0f} s ({what})")
        time.sleep(POLL_S)


def _run_and_kill(args: list[str], out: Path, log: Path, kind: str, target: int, rng: random.Random) -> str:
    """Start the run, SIGKILL it at a point of ``kind`` once step ``target`` is done; return where it landed."""
    stale = set(out.glob(".checkpoint.pt.*.tmp"))
    with open(log, "w") as f:
        proc = subprocess.Popen(cli_command(args), stdout=f, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO)
    try:
        if kind == "first-iteration":  # metrics.jsonl opens as the last act before the loop starts
            _wait_for(proc, log, (out / "metrics.jsonl").is_file, kind)
            time.sleep(rng.uniform(0.0, 0.05))
        elif kind == "checkpoint-write":  # the first save after step `target` is done
            _wait_for(proc, log, lambda: _last_step(log) >= target, kind)
            _wait_for(proc, log, lambda: bool(set(out.glob(".checkpoint.pt.*.tmp")) - stale), kind)
        else:  # mid-step: a random moment after step `target`
            _wait_for(proc, log, lambda: _last_step(log) >= target, kind)
            time.sleep(rng.uniform(0.0, 0.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run was not killed (status {proc.returncode})"
    if kind == "checkpoint-write":
        return "inside the write" if set(out.glob(".checkpoint.pt.*.tmp")) - stale else "just after the write"
    if kind == "first-iteration":
        return "before the first checkpoint" if not (out / "checkpoint.pt").exists() else "after step 1"
    return "between/inside steps"


@pytest.mark.reliability
def test_kill9_at_random_points_then_resume_is_bitwise_exact(cifar10_small, tmp_path):
    rng = random.Random(SEED)
    reference = tmp_path / "uninterrupted"
    done = run_cli(tiny_args(cifar10_small, reference, *EXTRA))
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    args = tiny_args(cifar10_small, out, *EXTRA)
    kinds = ["first-iteration"] + rng.sample(["checkpoint-write"] * 5 + ["mid-step"] * 4, KILLS - 1)
    targets = [0] + sorted(rng.sample(range(1, TOTAL_ITERATIONS - 1), KILLS - 1))  # spread over the run
    rows, last, survived = [], 0, 0
    for n, (kind, target) in enumerate(zip(kinds, targets), 1):
        landed = _run_and_kill(args, out, tmp_path / f"kill{n}.log", kind, target, rng)
        now = _iteration(out)  # load_checkpoint after every kill: never unreadable
        assert now >= last, f"kill {n}: checkpoint went back from iteration {last} to {now}"
        rows.append((str(n), kind, f"after step {target}" if target else "step 1", landed, f"{last} -> {now}"))
        last, survived = now, survived + 1
    assert rows[0][3] == "before the first checkpoint", "the first kill did not land in the first iteration"
    assert sum(r[3] == "inside the write" for r in rows) >= 1, "no kill landed inside a checkpoint write"

    finish = run_cli(args)
    assert finish.returncode == 0, finish.stderr[-3000:]
    a, b = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == TOTAL_ITERATIONS
    differing = [f"{net}.{k}" for net in ("student", "teacher") for k in a[net] if not torch.equal(a[net][k], b[net][k])]
    equal = not differing and torch.equal(a["loss"]["center"], b["loss"]["center"])
    assert not temp_files(out), f"temp files left behind: {temp_files(out)}"
    steps = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == list(range(TOTAL_ITERATIONS)), "metrics lost or repeated steps across the kills"

    record("drill 1: kill -9 and resume",
           table(("kill", "point", "when", "landed", "checkpoint iteration"), rows)
           + f"\nkills survived: {survived}/{KILLS}, bitwise equal: {'yes' if equal else 'no'}")
    assert equal, f"weights differ from the uninterrupted run: {differing[:5]}"
