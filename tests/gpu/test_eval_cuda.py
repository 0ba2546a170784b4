"""The evaluators with ``--device cuda`` on a checkpoint that a CUDA pretraining run wrote.

Reference: the same command on the CPU. Features in fp32 (``--no-amp``) differ from the CPU's only by
rounding, so the kNN top-1 over 100 real CIFAR-10 val images may move by at most one image; in bf16 by a
few. The linear probe (cached features, seeded) and the 10%-finetune (its augmentation draws on the
device's generator) are compared on their figures with a few points of slack.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_ssl.cli import main

from .conftest import pretrain_cli, tiny_overrides

pytestmark = pytest.mark.cuda

FAST = ["--num-workers", "0"]


@pytest.fixture(scope="module")
def checkpoint(cifar10_small, tmp_path_factory) -> Path:
    from .conftest import test_device

    out = tmp_path_factory.mktemp("eval_run")
    pretrain_cli(tiny_overrides(cifar10_small, out, test_device(), 4, "optim.amp=bf16"))
    return out / "checkpoint.pt"


def _eval(command: list[str], out: Path, device: str, batch: int = 100) -> Path:
    assert main([*command, "--device", device, "--output-dir", str(out), "--batch-size", str(batch), *FAST]) == 0
    return out


def test_knn_on_the_device(checkpoint, device, tmp_path):
    args = ["knn", "--checkpoint", str(checkpoint), "--k", "5", "20"]
    ref = json.loads((_eval(args, tmp_path / "cpu", "cpu") / "knn.json").read_text())["results"]
    fp32 = json.loads((_eval([*args, "--no-amp"], tmp_path / "fp32", device.type) / "knn.json").read_text())
    bf16 = json.loads((_eval(args, tmp_path / "bf16", device.type) / "knn.json").read_text())["results"]
    for r, a, b in zip(ref, fp32["results"], bf16):
        assert r["top1"] > 12.0  # real images: even these features beat chance (10%)
        assert abs(a["top1"] - r["top1"]) <= 1.0, (ref, fp32["results"])
        assert abs(b["top1"] - r["top1"]) <= 5.0, (ref, bf16)


def test_linear_on_the_device(checkpoint, device, tmp_path):
    args = ["linear", "--checkpoint", str(checkpoint), "--cached-features", "--lrs", "0.1", "--epochs", "10"]
    ref = json.loads((_eval(args, tmp_path / "cpu", "cpu") / "linear.json").read_text())
    run = json.loads((_eval(args, tmp_path / "dev", device.type) / "linear.json").read_text())
    assert ref["top1"] > 15.0 and abs(run["top1"] - ref["top1"]) <= 5.0, (ref["top1"], run["top1"])


def test_finetune_with_amp_on_the_device(checkpoint, device, tmp_path):
    args = ["finetune", "--checkpoint", str(checkpoint), "--label-fraction", "0.1", "--epochs", "2",
            "--warmup-epochs", "1"]
    # batch 16: the 30-image subset (10%) must give whole batches (the loader drops the last partial one)
    ref = json.loads((_eval(args, tmp_path / "cpu", "cpu", 16) / "finetune_0.1.json").read_text())
    run = json.loads((_eval(args, tmp_path / "dev", device.type, 16) / "finetune_0.1.json").read_text())
    assert len(run["history"]) == 2 and run["top1"] == max(h["val_top1"] for h in run["history"])
    for a, b in zip(run["history"], ref["history"]):  # same weights, same subset: the same loss level
        assert abs(a["train_loss"] - b["train_loss"]) < 0.15 * b["train_loss"], (run["history"], ref["history"])
