"""Exact resume with the batched (kornia) augmentation back-end, whose loader now draws the crop boxes.

Why here as well as in tests/train: those drills run the per-image back-end. With ``aug.backend=gpu`` the
boxes come from the loader (seeded per sample, also inside workers) and the colour draws from the training
process's RNG (saved in the checkpoint); a run stopped mid-epoch and resumed with a loader worker must end
bitwise equal to the run that was never stopped.
"""

from __future__ import annotations

import torch

from container_ssl.checkpoint import load_checkpoint
from container_ssl.ssl.trainer import pretrain
from tests.tiny import tiny_cfg


def test_batched_backend_resumes_exactly(cifar10_small, tmp_path):
    common = ["aug.backend=gpu", "data.subset=48", "optim.epochs=2"]  # 3 iterations per epoch, 6 in all
    straight = tmp_path / "straight"
    pretrain(tiny_cfg(cifar10_small, straight, *common))
    split = tmp_path / "split"
    pretrain(tiny_cfg(cifar10_small, split, *common, "max_steps=2"))  # stops inside epoch 0
    assert load_checkpoint(split / "checkpoint.pt")["iteration"] == 2
    pretrain(tiny_cfg(cifar10_small, split, *common, "data.num_workers=1"))

    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 6
    for key in ("student", "teacher"):
        differ = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert not differ, f"{key} differs after resume: {differ[:3]}"
    assert torch.equal(a["loss"]["center"], b["loss"]["center"])
