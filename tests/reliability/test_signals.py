"""Drill 7: Ctrl-C and SIGTERM stop at a step boundary, write checkpoint.pt there, and resume exactly.

Why: with the default ``checkpoint_every_steps=0`` an interrupted run used to lose everything since the
last epoch (SIGINT raised KeyboardInterrupt mid-step, SIGTERM killed the process). Ctrl-C in a terminal
reaches the whole process group, DataLoader workers included, so SIGINT goes to the group here (workers
must neither die noisily nor stop the run); SIGTERM goes to the training process, as ``kill`` or a
scheduler sends it. The resumed run must end bitwise equal to one that was never interrupted.
"""

from __future__ import annotations

import json
import os
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
from .ranks import EXTRA as DDP_EXTRA
from .ranks import TOTAL_ITERATIONS as DDP_TOTAL
from .ranks import launch_ranks, wait_for_step

EXTRA = ["data.subset=128", "optim.epochs=2", "data.num_workers=1"]  # 8 iterations per epoch, checkpoints per epoch
TOTAL_ITERATIONS = 16
SIGNAL_AFTER = 3  # mid-epoch: the last checkpoint before the signal would be none at all
WAIT_S = 240.0
ROWS: list[tuple[str, ...]] = []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(args: list[str], log: Path, err: Path, how: signal.Signals, to_group: bool, times: int = 1) -> int:
    """Start the run, send ``how`` once step SIGNAL_AFTER is logged (``times`` in a row); return its exit status."""
    with open(log, "w") as fo, open(err, "w") as fe:
        # its own process group, as a terminal job has, with Ctrl-C's default action even when this test
        # runs in a background job (which starts with SIGINT ignored, and the run rightly keeps that)
        proc = subprocess.Popen(cli_command(args), stdout=fo, stderr=fe, env=cli_env(), cwd=REPO,
                                start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + WAIT_S
        while not re.search(rf" it {SIGNAL_AFTER}/{TOTAL_ITERATIONS} ", log.read_text()):
            assert proc.poll() is None, f"run ended before step {SIGNAL_AFTER}:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"step {SIGNAL_AFTER} not reached in {WAIT_S:.0f} s"
            time.sleep(0.02)
        for _ in range(times):
            (os.killpg if to_group else os.kill)(proc.pid, how)
            time.sleep(0.05)
        return proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _drill_table():
    """One table for the module's cases, printed once they have all run."""
    yield
    if ROWS:
        record("drill 7: Ctrl-C / SIGTERM during pretraining (checkpoint_every_steps=0)",
               table(("signal", "sent to", "when", "exit", "checkpoint.pt", "resumed run vs uninterrupted"), ROWS))


@pytest.fixture(scope="module")
def reference(cifar10_small, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(tiny_args(cifar10_small, out, *EXTRA))
    assert done.returncode == 0, done.stderr[-3000:]
    return load_checkpoint(out / "checkpoint.pt")


def _differing(a: dict, b: dict) -> list[str]:
    out = [f"{net}.{k}" for net in ("student", "teacher") for k in a[net] if not torch.equal(a[net][k], b[net][k])]
    return out + ([] if torch.equal(a["loss"]["center"], b["loss"]["center"]) else ["loss.center"])


@pytest.mark.reliability
@pytest.mark.parametrize(("how", "to_group", "status"), [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
                         ids=["ctrl-c-to-group", "sigterm"])
def test_signal_saves_at_step_boundary_and_resume_is_exact(cifar10_small, tmp_path, reference, how, to_group,
                                                           status):
    out = tmp_path / "run"
    args = tiny_args(cifar10_small, out, *EXTRA)
    code = _interrupt(args, tmp_path / "run.log", tmp_path / "run.err", how, to_group)
    stderr = (tmp_path / "run.err").read_text()
    assert code == status, f"exit status {code}, expected {status}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "worker" not in stderr.lower(), stderr[-3000:]
    line = [x for x in stderr.splitlines() if x.startswith(f"stopped by {how.name}")]
    assert len(line) == 1 and str(out / "checkpoint.pt") in line[0] and "run the same command again" in line[0], stderr
    ckpt = load_checkpoint(out / "checkpoint.pt")
    stopped_at = int(re.search(r"after iteration (\d+) of", line[0]).group(1))
    assert ckpt["iteration"] == stopped_at and SIGNAL_AFTER <= stopped_at < TOTAL_ITERATIONS // 2, (ckpt["iteration"],
                                                                                                    stopped_at)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is False and summary["stopped_by"] == how.name

    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-3000:]
    final = load_checkpoint(out / "checkpoint.pt")
    differing = _differing(reference, final)
    steps = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert final["iteration"] == reference["iteration"] == TOTAL_ITERATIONS
    assert steps == list(range(TOTAL_ITERATIONS)), "metrics lost or repeated steps across the stop"
    assert not temp_files(out)
    ROWS.append((how.name, "process group" if to_group else "training process", f"after step {SIGNAL_AFTER}",
                 str(code), f"iteration {ckpt['iteration']} (mid-epoch)",
                 "bitwise equal" if not differing else f"DIFFERS ({len(differing)} tensors)"))
    assert not differing, f"resumed run differs from the uninterrupted one: {differing[:5]}"


@pytest.mark.reliability
def test_second_ctrl_c_aborts_at_once_without_a_traceback(cifar10_small, tmp_path):
    out = tmp_path / "run"
    code = _interrupt(tiny_args(cifar10_small, out, *EXTRA), tmp_path / "run.log", tmp_path / "run.err",
                      signal.SIGINT, to_group=True, times=2)
    stderr = (tmp_path / "run.err").read_text()
    assert code == 130 and "Traceback" not in stderr, f"status {code}:\n{stderr[-3000:]}"
    assert stderr.count("caught SIGINT") == 1, stderr
    if (out / "checkpoint.pt").exists():  # the first signal's save may have finished first: then it is whole
        load_checkpoint(out / "checkpoint.pt")
    assert not temp_files(out), f"temp files left: {temp_files(out)}"
    ROWS.append(("SIGINT twice", "process group", f"after step {SIGNAL_AFTER}", str(code),
                 "aborted at once" + (" (after the save)" if (out / "checkpoint.pt").exists() else ", nothing saved"),
                 "n/a"))


@pytest.mark.reliability
def test_sigterm_to_one_rank_stops_both_at_the_same_step(cifar10_small, tmp_path):
    """DDP: the rank that caught the signal tells the others (a MAX all-reduce); all save at one boundary."""
    out = tmp_path / "ddp"
    extra = [x for x in DDP_EXTRA if not x.startswith("checkpoint_every_steps")]  # per-epoch saves only
    ranks = launch_ranks(tiny_args(cifar10_small, out, *extra), tmp_path, "ddp", 60)
    try:
        wait_for_step(ranks[0][0], ranks[0][1], SIGNAL_AFTER)
        ranks[1][0].send_signal(signal.SIGTERM)  # the rank that does not save
        codes = [proc.wait(timeout=WAIT_S) for proc, _, _ in ranks]
    finally:
        for proc, _, _ in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    errs = [err.read_text() for _, _, err in ranks]
    assert codes == [143, 143] and not any("Traceback" in e for e in errs), (codes, errs[0][-2000:], errs[1][-2000:])
    stopped = [int(re.search(r"stopped by SIGTERM after iteration (\d+) of", e).group(1)) for e in errs]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert stopped[0] == stopped[1] == ckpt["iteration"] and 0 < ckpt["iteration"] < DDP_TOTAL // 2, (stopped,
                                                                                                       ckpt["iteration"])
    ROWS.append(("SIGTERM to rank 1 of 2", "rank 1 only", f"after step {SIGNAL_AFTER}", "143, 143",
                 f"iteration {ckpt['iteration']} (both ranks stopped there)", "n/a"))
