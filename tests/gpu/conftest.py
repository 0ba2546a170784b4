"""The GPU tests: every test in this folder is marked ``cuda``.

Why these rules: GPU time comes in short windows, so the GPU paths (bf16/fp16, kornia on CUDA, NCCL with
SyncBatchNorm, fused AdamW, faiss on the GPU, pinned memory, ``torch.compile``) must be checked by one
ready-made command (``benchmarks/gpu_check.sh``) the moment a GPU is there.

- Without CUDA the tests skip; with ``CONTAINER_SSL_REQUIRE_CUDA=1`` (set by the GPU check) they fail
  instead, so a GPU machine whose torch cannot see the GPU is not mistaken for a pass.
- ``CONTAINER_SSL_GPU_TESTS_DEVICE=cpu`` runs them on the CPU instead, with what only CUDA offers (fp16 with
  a GradScaler, NCCL + SyncBatchNorm, faiss on the GPU, pinned memory) skipped: this is how the GPU check's
  ``--smoke`` proves the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from container_ssl.cli import main

NO_CUDA = ("CUDA is not available (torch {version}, built for CUDA {cuda}); the GPU tests need a CUDA GPU: check "
           "nvidia-smi and that torch is a CUDA build")


def test_device() -> torch.device:
    """``cuda``, or the CPU when CONTAINER_SSL_GPU_TESTS_DEVICE=cpu asks to prove the tests without a GPU."""
    return torch.device("cpu" if os.environ.get("CONTAINER_SSL_GPU_TESTS_DEVICE") == "cpu" else "cuda")


test_device.__test__ = False  # a helper, not a test


def pytest_runtest_setup(item):
    """Skip (or fail) before any fixture runs: module fixtures here start CUDA runs and CPU references."""
    if item.get_closest_marker("cuda") is None or test_device().type == "cpu":
        return
    if not torch.cuda.is_available():
        msg = NO_CUDA.format(version=torch.__version__, cuda=torch.version.cuda)
        if os.environ.get("CONTAINER_SSL_REQUIRE_CUDA") == "1":
            pytest.fail(msg + " (CONTAINER_SSL_REQUIRE_CUDA=1)")
        pytest.skip(msg)


@pytest.fixture
def device() -> torch.device:
    return test_device()


def cuda_only(device: torch.device, what: str) -> None:
    """Skip a CUDA-only check when the GPU tests run on the CPU."""
    if device.type != "cuda":
        pytest.skip(f"{what} exists only on CUDA")


# A DINO run small enough for seconds on a GPU (and about a minute on a CPU): Container-Light-nano at 32/16 px.
TINY = ["model.name=container_light_nano", "model.img_size=32", "model.patch_size=2", "model.out_dim=256",
        "model.hidden_dim=64", "model.bottleneck_dim=32", "model.drop_path_rate=0.0", "aug.global_size=32",
        "aug.local_size=16", "aug.n_local=2", "data.num_workers=0", "optim.batch_size_per_gpu=16",
        "optim.epochs=1", "optim.warmup_epochs=0", "optim.base_lr=0.005", "monitor.log_every=1",
        "monitor.log_images=false", "checkpoint_every_epochs=0"]


def tiny_overrides(data: Path, out: Path, device: torch.device, steps: int, *extra: str) -> list[str]:
    return [*TINY, f"data.path={data}", f"output_dir={out}", f"device={device.type}", f"max_steps={steps}", *extra]


def train_losses(run_dir: Path) -> dict[int, float]:
    """iteration -> logged loss, from the run's metrics.jsonl."""
    import json

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["iteration"]: r["loss"] for r in lines if r["type"] == "train"}


def pretrain_cli(overrides: list[str], *flags: str) -> None:
    assert main(["pretrain", *flags, *overrides]) == 0
