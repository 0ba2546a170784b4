"""Distributed DINO on CPU (gloo): 2 processes behave like 1 process on the concatenated batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from container_ssl.checkpoint import load_checkpoint
from container_ssl.ssl.loss import DINOLoss
from container_ssl.ssl.schedules import teacher_temp_schedule

OUT_DIM, NCROPS, BATCH = 16, 4, 6
TEMP = float(teacher_temp_schedule(0.04, 0.07, 30, 10)[3])  # epoch 3 of 10 under the default warm-up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(NCROPS, BATCH, OUT_DIM, generator=g)   # crop-major, as the wrapper concatenates
    teacher = torch.randn(2, BATCH, OUT_DIM, generator=g)
    return student, teacher


def _loss_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    student, teacher = _inputs()
    half = BATCH // world
    mine = slice(rank * half, (rank + 1) * half)
    loss_fn = DINOLoss(OUT_DIM, NCROPS)
    loss = loss_fn(student[:, mine].reshape(-1, OUT_DIM), teacher[:, mine].reshape(-1, OUT_DIM), TEMP)
    torch.save({"loss": loss.detach(), "center": loss_fn.center.clone()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_loss_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    student, teacher = _inputs()
    single = DINOLoss(OUT_DIM, NCROPS)
    ref_loss = single(student.reshape(-1, OUT_DIM), teacher.reshape(-1, OUT_DIM), TEMP)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # DDP averages gradients over ranks: the objective is the mean of the per-rank losses
    assert torch.allclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, ref_loss, atol=1e-6)
    for r in ranks:  # the centre is all-reduced: identical on every rank, equal to the single-process one
        assert torch.allclose(r["center"], single.center, atol=1e-7)


def _pretrain_worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from container_ssl.config import load_config
    from container_ssl.distributed import cleanup
    from container_ssl.ssl.trainer import pretrain

    torch.set_num_threads(1)
    pretrain(load_config(overrides=overrides))
    cleanup()


def _counting_worker(rank: int, world: int, port: int, overrides: list[str], out_dir: str) -> None:
    """``_pretrain_worker`` with every ``torch.distributed.all_reduce`` call counted (written to a file)."""
    calls = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        _pretrain_worker(rank, world, port, overrides)
    finally:
        dist.all_reduce = real
    with open(os.path.join(out_dir, f"all_reduce{rank}.json"), "w") as f:
        json.dump(calls, f)


@pytest.mark.slow
def test_pretrain_runs_under_two_gloo_ranks(cifar10_small, tmp_path):
    from tests.tiny import TINY

    out = tmp_path / "ddp"
    overrides = TINY + [f"data.path={cifar10_small}", f"output_dir={out}", "data.subset=64", "optim.epochs=1",
                        "optim.batch_size_per_gpu=8"]
    mp.spawn(_pretrain_worker, args=(2, _free_port(), overrides), nprocs=2, join=True)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["iteration"] == 4  # 64 images / (8 per rank x 2 ranks)
    # SyncBatchNorm keeps plain BatchNorm keys, so the checkpoint loads into a single-process model
    assert any(k.endswith("running_mean") for k in ckpt["student"])


@pytest.mark.slow
def test_stop_signals_and_the_budget_share_one_collective_per_step(cifar10_small, tmp_path):
    """Under DDP each step ends with one decision all ranks share: a caught signal or the wall-time budget.

    Both travel in one MAX all-reduce; a per-decision collective would add a round trip between the ranks
    to every step. With a budget set (never reached), 4 steps in 1 epoch make: 1 decision before the epoch,
    per step the loss centre and the finite-loss check, a decision after each step but the last (which
    ends the run), and the epoch's sample counts.
    """
    from tests.tiny import TINY

    out, steps = tmp_path / "ddp", 4
    overrides = TINY + [f"data.path={cifar10_small}", f"output_dir={out}", "data.subset=64", "optim.epochs=1",
                        "optim.batch_size_per_gpu=8", "max_minutes=1000"]
    mp.spawn(_counting_worker, args=(2, _free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == steps
    for rank in range(2):
        calls = json.loads((tmp_path / f"all_reduce{rank}.json").read_text())
        assert len(calls) == 1 + 2 * steps + (steps - 1) + 1, calls
