"""Inside a submitted job: stop-at-step-boundary preemption, requeue hand-over, resume flags, local runs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from container_ssl.checkpoint import load_checkpoint
from container_ssl.launch.jobs import (
    CommandJob,
    PreemptionGuard,
    export_distributed_env,
)
from container_ssl.ssl.trainer import pretrain
from tests.tiny import REFERENCE, tiny_cfg

SIG = signal.SIGUSR2


class FakeSubmititHandler:
    """Stands in for submitit's USR2 handler: records the call and exits like it does after a requeue."""

    def __init__(self, out: Path | None = None):
        self.calls: list[dict] = []
        self.out = out

    def __call__(self, signum, frame):
        ckpt = self.out / "checkpoint.pt" if self.out else None
        self.calls.append({"signum": signum, "iteration": load_checkpoint(ckpt)["iteration"] if ckpt else None})
        raise SystemExit(-1)


@pytest.fixture
def fake_handler():
    previous = signal.getsignal(SIG)
    yield
    signal.signal(SIG, previous)


def test_signal_stops_at_a_step_boundary_and_requeues_after_the_save(cifar10_small, tmp_path, fake_handler,
                                                                       reference_run):
    common, straight = REFERENCE, reference_run  # 4 iterations per epoch, 8 in all; the uninterrupted run

    out = tmp_path / "split"
    handler = FakeSubmititHandler(out)
    signal.signal(SIG, handler)
    polls = []
    with PreemptionGuard(grace_s=60) as guard:
        assert guard.active

        def stop_requested() -> bool:
            polls.append(len(polls) + 1)
            if len(polls) == 3:       # the signal lands while the third step finishes
                os.kill(os.getpid(), SIG)
                time.sleep(0.05)      # let the interpreter run the (Python-level) handler
            return guard.stop_requested()

        summary = pretrain(tiny_cfg(cifar10_small, out, *common), stop_requested=stop_requested)
        assert not summary["finished"] and guard.stopped and not handler.calls
        with pytest.raises(SystemExit):
            guard.finish()
    # submitit's handler ran only after the trainer had written the checkpoint at exactly that step
    assert handler.calls == [{"signum": SIG, "iteration": 3}]
    assert signal.getsignal(SIG) is handler  # the guard gave the signal back

    pretrain(tiny_cfg(cifar10_small, out, *common))  # the requeued job: auto-resume from checkpoint.pt
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for key in ("student", "teacher"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"{key} differs after the requeue"
    iters = [r["iteration"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "train"]
    assert iters == list(range(8)), "steps were lost or repeated"


def test_fallback_requeues_when_no_step_boundary_comes(fake_handler):
    handler = FakeSubmititHandler()
    signal.signal(SIG, handler)
    exits = []
    with PreemptionGuard(grace_s=0.2) as guard:
        guard._exit_process = exits.append
        os.kill(os.getpid(), SIG)
        deadline = time.time() + 10
        while not exits and time.time() < deadline:  # the loop is "stuck": stop_requested is never polled
            time.sleep(0.05)
    assert len(handler.calls) == 1 and exits == [255]  # submitit's sys.exit(-1), as a process exit status
    assert guard.requested and not guard.stopped


def test_guard_is_inert_outside_a_submitit_job():
    previous = signal.getsignal(SIG)
    signal.signal(SIG, signal.SIG_DFL)
    try:
        with PreemptionGuard(grace_s=1) as guard:
            assert not guard.active and not guard.stop_requested()
            guard.finish()  # nothing to hand over
    finally:
        signal.signal(SIG, previous)


def test_requeue_resumes_from_this_jobs_checkpoint_only(tmp_path):
    latest = tmp_path / "checkpoint.pt"
    latest.write_bytes(b"old run")
    job = CommandJob("pretrain", ["--no-resume"], cwd=str(tmp_path), config={}, resume=None, auto_resume=False)
    assert job._resume_flags(latest) == (None, False)   # first start: the user's --no-resume
    again = job.checkpoint().function
    assert again.attempt == 1 and again.argv == ["--no-resume"] and again is not job
    assert again._resume_flags(latest) == (None, False)  # preempted before its first save: still afresh
    time.sleep(0.01)
    tmp = tmp_path / "new.pt"
    tmp.write_bytes(b"this job's save")
    tmp.replace(latest)                                   # written atomically by the trainer
    assert again._resume_flags(latest) == (None, True)   # requeued after a save: continue from it


def test_launcher_detection(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    assert export_distributed_env() == "single"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert export_distributed_env() == "torchrun"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    env = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "77", "SUBMITIT_LOCAL_NTASKS": "2",
           "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_GLOBALID": "1",
           "SUBMITIT_LOCAL_LOCALID": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.setenv(k, "stale")  # overwritten: the job environment is authoritative
    monkeypatch.setenv("MASTER_PORT", "29512")  # a port chosen by the user is kept
    assert export_distributed_env() == "submitit"
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["MASTER_PORT"] == "29512" and os.environ["MASTER_ADDR"] != "stale"


@pytest.mark.slow
def test_local_cluster_runs_a_two_process_pretrain(cifar10_small, tmp_path):
    from container_ssl.launch.submit import launch, plan_from_argv
    from tests.tiny import TINY

    out = tmp_path / "run"
    p = plan_from_argv(["pretrain", *TINY, f"data.path={cifar10_small}", "data.subset=64", "optim.epochs=1",
                        "optim.batch_size_per_gpu=8", f"output_dir={out}", "--cluster", "local",
                        "--tasks-per-node", "2", "--timeout-min", "10"])
    job = launch(p)
    result, other = job.results()  # waits (the CLI itself never does); one result per task
    assert result["launcher"] == "submitit" and result["summary"]["world_size"] == 2
    assert result["summary"]["finished"] and result["attempt"] == 0 and other["summary"]["world_size"] == 2
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 4  # 64 images / (8 per rank x 2 ranks)
    assert job.paths.stdout.is_file() and "attempt 1" in job.paths.stdout.read_text()
