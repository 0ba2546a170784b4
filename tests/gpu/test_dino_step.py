"""The DINO training step on CUDA through the real trainer: both augmentation back-ends, bf16 and fp16
(GradScaler), channels_last, ``torch.compile``, a one-rank NCCL group with SyncBatchNorm, and resume.

Reference: the same tiny run (Container-Light-nano, real CIFAR-10 images, 3 steps) on the CPU in fp32.
With ``aug.backend=cpu`` every crop is drawn per image from (seed, epoch, index), so the CUDA run sees the
very same crops and must log the same losses: fp32 within 1e-3 (TF32 convolutions and reordered
reductions only), autocast within 2%. The loss alone sits near ln(out_dim) for any weights, so the
student's update (its weights after 3 steps minus its initial weights) must also point the same way as the
reference's: cosine > 0.99 in fp32, > 0.9 with autocast. Each test prints its measured gap and cosine
(on the CPU, CONTAINER_SSL_GPU_TESTS_DEVICE=cpu: fp32 gap 1.6e-7, bf16 and bf16 + channels_last gap
1.3e-3, cosine 1.000 for all: AdamW's first steps follow the gradients' signs).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from container_ssl.checkpoint import load_checkpoint
from container_ssl.config import load_config
from container_ssl.distributed import DistInfo
from container_ssl.ssl import trainer as trainer_mod
from container_ssl.ssl.dino import build_models

from .conftest import cuda_only, pretrain_cli, tiny_overrides, train_losses

pytestmark = pytest.mark.cuda

STEPS = 3
FP32_RTOL, AMP_RTOL, FP32_COS, AMP_COS = 1e-3, 2e-2, 0.99, 0.9


@dataclass
class Run:
    losses: dict[int, float]
    student: dict[str, torch.Tensor]
    initial: dict[str, torch.Tensor]
    ckpt: dict


def _initial_student(data: Path, out: Path) -> dict[str, torch.Tensor]:
    cfg = load_config(overrides=tiny_overrides(data, out, torch.device("cpu"), STEPS))
    torch.manual_seed(cfg.seed)
    student, _ = build_models(cfg)
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def _run(data: Path, out: Path, device: torch.device, *extra: str, steps: int = STEPS) -> Run:
    pretrain_cli(tiny_overrides(data, out, device, steps, *extra))
    ckpt = load_checkpoint(out / "checkpoint.pt")
    student = {k: v.float().cpu() for k, v in ckpt["student"].items()}
    return Run(train_losses(out), student, _initial_student(data, out.parent / "init"), ckpt)


def _update_cosine(run: Run, ref: Run) -> float:
    keys = [k for k, v in ref.student.items() if v.is_floating_point() and "running" not in k]
    a = torch.cat([(run.student[k] - run.initial[k]).flatten() for k in keys])
    b = torch.cat([(ref.student[k] - ref.initial[k]).flatten() for k in keys])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _assert_close_to(run: Run, ref: Run, rtol: float, min_cos: float) -> None:
    assert sorted(run.losses) == list(range(STEPS)), run.losses
    cos = _update_cosine(run, ref)
    worst = max(abs(run.losses[it] - loss) / abs(loss) for it, loss in ref.losses.items())
    print(f"\nlosses {[round(run.losses[i], 5) for i in range(STEPS)]} vs reference "
          f"{[round(ref.losses[i], 5) for i in range(STEPS)]}: worst relative gap {worst:.2e}; update cosine {cos:.4f}")
    for it, loss in ref.losses.items():
        assert abs(run.losses[it] - loss) <= rtol * abs(loss), (it, run.losses, ref.losses)
    assert all(torch.isfinite(v).all() for v in run.student.values() if v.is_floating_point())
    assert cos > min_cos, f"student update points elsewhere than the fp32 CPU reference: cosine {cos:.4f}"


@pytest.fixture(scope="module")
def data(cifar10_small) -> Path:
    return cifar10_small


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Run:
    """The fp32 CPU run: same crops, same initial weights."""
    return _run(data, tmp_path_factory.mktemp("ref"), torch.device("cpu"), "optim.amp=none")


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_step_with_cpu_augmentation_matches_the_cpu_reference(data, reference, device, tmp_path, amp):
    run = _run(data, tmp_path / "run", device, f"optim.amp={amp}")
    _assert_close_to(run, reference, FP32_RTOL if amp == "none" else AMP_RTOL,
                     FP32_COS if amp == "none" else AMP_COS)


def test_fp16_with_grad_scaler(data, reference, device, tmp_path):
    cuda_only(device, "fp16 autocast with a GradScaler")
    run = _run(data, tmp_path / "run", device, "optim.amp=fp16")
    _assert_close_to(run, reference, AMP_RTOL, AMP_COS)
    scaler = run.ckpt["scaler"]
    assert scaler is not None and 0 < scaler["scale"] <= 2.0 ** 16, scaler  # the scaler ran and is saved


def test_channels_last_bf16(data, reference, device, tmp_path):
    run = _run(data, tmp_path / "run", device, "optim.amp=bf16", "channels_last=true")
    _assert_close_to(run, reference, AMP_RTOL, AMP_COS)


def test_compile_bf16(data, reference, device, tmp_path):
    run = _run(data, tmp_path / "run", device, "optim.amp=bf16", "compile=true")
    _assert_close_to(run, reference, AMP_RTOL, AMP_COS)
    # compiled in place: the checkpoint keeps the eager model's keys, so evaluators and resume can read it
    assert not any("_orig_mod" in k for k in run.ckpt["student"])


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_kornia_augmentation_on_the_device(data, reference, device, tmp_path, amp):
    """aug.backend=gpu: other crops than the reference (kornia draws on the device), so only the loss level."""
    run = _run(data, tmp_path / "run", device, "aug.backend=gpu", f"optim.amp={amp}")
    assert sorted(run.losses) == list(range(STEPS)), run.losses
    for it, loss in reference.losses.items():  # same weights, same kind of crops: the same loss level
        assert abs(run.losses[it] - loss) < 0.1 * loss, (run.losses, reference.losses)
    moved = [float((run.student[k] - run.initial[k]).abs().max()) for k in run.student if "running" not in k
             and run.student[k].is_floating_point()]
    assert all(torch.isfinite(v).all() for v in run.student.values() if v.is_floating_point())
    assert max(moved) > 0, "the student did not move"


def test_optimizer_is_fused_adamw_on_cuda(data, device, tmp_path):
    cuda_only(device, "fused AdamW")
    cfg = load_config(overrides=tiny_overrides(data, tmp_path / "run", device, STEPS))
    trainer = trainer_mod.DinoTrainer(cfg, auto_resume=False)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["fused"] is True
    assert trainer.loader.pin_memory is True


def test_resume_on_the_device_continues_the_same_step(data, device, tmp_path):
    """3 steps straight vs 2 steps, a stop, and a resume for the 3rd: same losses, close weights (not bitwise)."""
    straight = _run(data, tmp_path / "straight", device, "optim.amp=none")
    _run(data, tmp_path / "resumed", device, "optim.amp=none", steps=2)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["batch_in_epoch"] == 2
    resumed = _run(data, tmp_path / "resumed", device, "optim.amp=none")
    assert resumed.ckpt["batch_in_epoch"] == STEPS
    assert sorted(resumed.losses) == list(range(STEPS))
    for it in range(STEPS):
        assert resumed.losses[it] == pytest.approx(straight.losses[it], rel=1e-4)
    for k, v in straight.student.items():
        torch.testing.assert_close(resumed.student[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------------------- one-rank NCCL group
@dataclass(frozen=True)
class _GroupOfOne(DistInfo):
    """A process group of one rank that the trainer treats as distributed: the DDP + SyncBatchNorm path."""

    @property
    def distributed(self) -> bool:
        return True


def test_one_rank_nccl_group_with_sync_batchnorm(data, reference, device, tmp_path, monkeypatch):
    """With one rank, SyncBatchNorm normalises like BatchNorm and DDP averages one gradient: the same run."""
    cuda_only(device, "NCCL with SyncBatchNorm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(trainer_mod, "init_distributed", lambda *_a, **_k: _GroupOfOne(device=device))
        cfg = load_config(overrides=tiny_overrides(data, tmp_path / "run", device, STEPS, "optim.amp=none"))
        trainer = trainer_mod.DinoTrainer(cfg, auto_resume=False)
        assert isinstance(trainer.dino.student_ddp, torch.nn.parallel.DistributedDataParallel)
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.dino.student.modules())
        assert not any(type(m) is torch.nn.BatchNorm2d for m in trainer.dino.student.modules())
        trainer.train()
    finally:
        dist.destroy_process_group()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    run = Run(train_losses(tmp_path / "run"), {k: v.float().cpu() for k, v in ckpt["student"].items()},
              _initial_student(data, tmp_path / "init"), ckpt)
    _assert_close_to(run, reference, FP32_RTOL, FP32_COS)
