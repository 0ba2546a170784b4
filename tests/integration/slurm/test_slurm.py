"""`container-ssl submit` against a real SLURM cluster (start one with tests/integration/slurm/cluster.sh up).

Tiny CPU pretraining (Container-Light-nano, 32 px, a few dozen real CIFAR-10 images, gloo) with two tasks
on one node; a time-out interrupt that must requeue the job and end with bitwise the same weights as an
uninterrupted run; a submitted kNN that must agree with a direct one; the dry-run script. Skipped when no
cluster answers, unless CONTAINER_SSL_REQUIRE_SLURM=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from container_ssl.checkpoint import load_checkpoint
from container_ssl.cli import main
from container_ssl.launch.submit import launch, plan_from_argv
from tests.tiny import TINY

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 300
# 128 images, 8 per rank x 2 ranks: 8 iterations per epoch, 48 in all (a few seconds of training)
SETTINGS = ["data.subset=128", "optim.epochs=6", "optim.batch_size_per_gpu=8"]
RESOURCES = ["--tasks-per-node", "2", "--cpus-per-task", "1", "--timeout-min", "5", "--signal-delay-s", "60"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}


def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch not on PATH (start a cluster: tests/integration/slurm/cluster.sh up)"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed: {e}"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        said = (out.stdout.strip() or out.stderr.strip() or "nothing").splitlines()[-1]
        return f"no SLURM node up (sinfo: {said}); start one with tests/integration/slurm/cluster.sh up"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    problem = _cluster_problem()
    if problem:
        if os.environ.get("CONTAINER_SSL_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM required (CONTAINER_SSL_REQUIRE_SLURM=1) but {problem}")
        pytest.skip(problem)


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], check=False,
                         capture_output=True, text=True)
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip()]
    return lines[-1].split()[0] if lines else ""


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False, capture_output=True, text=True)
    return out.stdout.strip()


class Watch:
    """Polls a job's states until it ends; keeps each change of squeue's and of sacct's state, in order."""

    def __init__(self, job: Any):
        self.job = job
        self.seen: dict[str, list[str]] = {"squeue": [], "sacct": []}

    def poll(self) -> None:
        jid = str(self.job.job_id)
        for source, state in (("squeue", _squeue_state(jid)), ("sacct", _sacct_state(jid))):
            states = self.seen[source]
            if state and (not states or states[-1] != state):
                states.append(state)

    def done(self) -> bool:
        jid = str(self.job.job_id)
        if _squeue_state(jid):
            return False
        state = _sacct_state(jid)
        if state:
            return state in FINAL_STATES
        # no accounting: the job is over once it left the queue, with a result file per task or not
        return True

    def wait(self, until=None, timeout_s: float = JOB_TIMEOUT_S) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.poll()
            if (until() if until else self.done()):
                self.poll()  # the final state
                return
            time.sleep(0.3)
        log = self.job.paths.stderr
        tail = log.read_text()[-2000:] if log.exists() else "(no log)"
        pytest.fail(f"job {self.job.job_id} did not get there in {timeout_s:.0f} s; states {self.seen}\n{tail}")


def _submit(argv: list[str]) -> tuple[Any, Watch]:
    job = launch(plan_from_argv(argv))
    return job, Watch(job)


def _pretrain_argv(data: Path, out: Path) -> list[str]:
    return ["pretrain", *TINY, f"data.path={data}", *SETTINGS, f"output_dir={out}", *RESOURCES]


def _train_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["iteration"] for r in rows if r["type"] == "train"]


@pytest.fixture(scope="module")
def straight_run(cifar10_small, tmp_path_factory) -> dict[str, Any]:
    """An uninterrupted two-task pretraining job: test 1, and the reference for the requeue test."""
    out = tmp_path_factory.mktemp("slurm") / "straight"
    start = time.time()
    job, watch = _submit(_pretrain_argv(cifar10_small, out))
    watch.wait()
    results = job.results()
    return {"job": job, "out": out, "results": results, "states": watch.seen, "wall_s": time.time() - start}


def test_two_task_pretrain_finishes_and_its_checkpoint_reloads(straight_run):
    rank0, rank1 = straight_run["results"]
    assert rank0["summary"]["finished"] and rank0["summary"]["world_size"] == 2 and rank1["launcher"] == "submitit"
    assert rank0["restart_count"] == 0 and rank0["attempt"] == 0
    ckpt = load_checkpoint(straight_run["out"] / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["iteration"] == 48
    assert _train_steps(straight_run["out"]) == list(range(48))
    assert straight_run["states"]["sacct"][-1] == "COMPLETED", straight_run["states"]


def test_timeout_requeues_and_resumes_to_identical_weights(straight_run, cifar10_small, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("slurm") / "interrupted"
    start = time.time()
    job, watch = _submit(_pretrain_argv(cifar10_small, out))
    watch.wait(until=lambda: len(_train_steps(out)) >= 5)  # training, well before its 48 steps
    job._interrupt(timeout=True)  # USR2 to every task, as SLURM sends before the time limit
    interrupted_after = len(_train_steps(out))
    watch.wait()
    results = job.results()
    restarts = subprocess.run(["scontrol", "show", "job", str(job.job_id)], check=False, capture_output=True,
                              text=True).stdout
    report = {"job": str(job.job_id), "states": watch.seen, "steps_before_interrupt": interrupted_after,
              "SLURM_RESTART_COUNT": results[0]["restart_count"], "attempt": results[0]["attempt"],
              "scontrol_restarts": next((w.split("=")[1] for w in restarts.split() if w.startswith("Restarts=")), "?"),
              "wall_s": round(time.time() - start, 1)}

    a, b = load_checkpoint(straight_run["out"] / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    same = {key: all(torch.equal(a[key][k], b[key][k]) for k in a[key]) for key in ("student", "teacher")}
    report["identical_weights"] = same
    with capsys.disabled():
        print(f"\nSLURM requeue: {json.dumps(report)}")
    assert results[0]["restart_count"] == 1 and results[0]["attempt"] == 1
    acct, queue = watch.seen["sacct"], watch.seen["squeue"]
    # states are polled, so one source can miss a short RUNNING spell: seen running twice in either will do
    ran_twice = max(acct.count("RUNNING"), queue.count("RUNNING")) >= 2
    assert "REQUEUED" in acct and ran_twice and acct[-1] == "COMPLETED", watch.seen
    log = job.paths.stdout.read_text()
    assert "stopping after the current step" in log and "resumed from" in log
    assert b["iteration"] == 48 and same == {"student": True, "teacher": True}
    assert torch.equal(a["loss"]["center"], b["loss"]["center"])
    assert _train_steps(out) == list(range(48)), "steps were lost or repeated across the requeue"


def test_submitted_knn_matches_a_direct_run(straight_run, tmp_path, capsys):
    ckpt = straight_run["out"] / "checkpoint.pt"
    common = ["--checkpoint", str(ckpt), "--k", "5", "20", "--num-workers", "0", "--batch-size", "64",
              "--device", "cpu"]
    job, watch = _submit(["knn", *common, "--output-dir", str(tmp_path / "submitted"), "--cpus-per-task", "1"])
    watch.wait()
    assert job.result()["exit_code"] == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the job ran with one thread (--cpus-per-task 1): same arithmetic
    try:
        assert main(["knn", *common, "--output-dir", str(tmp_path / "direct")]) == 0
    finally:
        torch.set_num_threads(threads)
    submitted = json.loads((tmp_path / "submitted" / "knn.json").read_text())["results"]
    direct = json.loads((tmp_path / "direct" / "knn.json").read_text())["results"]
    with capsys.disabled():
        print(f"\nSLURM knn top-1 submitted {[r['top1'] for r in submitted]} direct {[r['top1'] for r in direct]}")
    assert [r["top1"] for r in submitted] == [r["top1"] for r in direct]
    assert [r["top5"] for r in submitted] == [r["top5"] for r in direct]


def test_dry_run_prints_the_sbatch_lines(tmp_path, capsys):
    assert main(["submit", "pretrain", "device=auto", f"output_dir={tmp_path / 'run'}", "--nodes", "2",
                 "--gpus-per-node", "8", "--timeout-min", "4320", "--cluster", "auto", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "cluster: slurm" in text  # auto: sbatch is on PATH
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --time=4320", "#SBATCH --signal=USR2@120"):
        assert line in text.splitlines(), line
    assert not (tmp_path / "run").exists()
