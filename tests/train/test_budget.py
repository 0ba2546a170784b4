"""The wall-time budget (``max_minutes``): stop at a step boundary, save, say so, and resume exactly.

The trainer's clock is replaced by a fake one that advances 10 s per training step, so the budget is tested
without waiting and without asserting on real time.
"""

from __future__ import annotations

import json

import torch

from container_ssl.checkpoint import load_checkpoint
from container_ssl.ssl.trainer import DinoTrainer, pretrain
from tests.tiny import tiny_cfg

COMMON = ["data.subset=64", "optim.epochs=2"]  # 4 iterations per epoch, 8 in all
STEP_S = 10.0


def _run_with_fake_clock(cfg) -> dict:
    trainer = DinoTrainer(cfg)
    now = [0.0]
    trainer.clock = lambda: now[0]
    step = trainer.train_step

    def timed_step(*args, **kwargs):
        now[0] += STEP_S
        return step(*args, **kwargs)

    trainer.train_step = timed_step
    return trainer.train()


def test_budget_stops_at_a_step_boundary_and_resumes_exactly(cifar10_small, tmp_path, capsys):
    straight = tmp_path / "straight"
    pretrain(tiny_cfg(cifar10_small, straight, *COMMON, "max_steps=6"))

    run = tmp_path / "budget"
    # 0.5 min = 3 fake steps: stops inside epoch 0, with the checkpoint written there
    summary = _run_with_fake_clock(tiny_cfg(cifar10_small, run, *COMMON, "max_minutes=0.5"))
    assert "stopped by the wall-time budget (max_minutes=0.5) at iteration 3 of 8" in capsys.readouterr().out
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (0, 3)
    assert summary["budget_reached"] and not summary["finished"]
    assert summary["iterations_done"] == 3 and summary["epochs_done"] == 0.75
    assert json.loads((run / "summary.json").read_text())["budget_reached"] is True

    # the same budget again: already spent, so no further step
    again = _run_with_fake_clock(tiny_cfg(cifar10_small, run, *COMMON, "max_minutes=0.5"))
    assert again["iterations_done"] == 3 and load_checkpoint(run / "checkpoint.pt")["iteration"] == 3

    # a larger budget continues the same run (the spent 30 s count): 3 more steps, across the epoch boundary
    more = _run_with_fake_clock(tiny_cfg(cifar10_small, run, *COMMON, "max_minutes=1.0"))
    assert more["iterations_done"] == 6 and more["budget_reached"]
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 6
    for key in ("student", "teacher"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"{key} differs after the budget resume"


def test_no_budget_runs_all_epochs(cifar10_small, tmp_path):
    summary = _run_with_fake_clock(tiny_cfg(cifar10_small, tmp_path / "run", "data.subset=32", "optim.epochs=1"))
    assert summary["finished"] and not summary["budget_reached"] and summary["iterations_done"] == 2
