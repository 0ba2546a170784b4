"""The kornia back-end on the device draws crops with the same distribution as the CPU (torchvision) one.

The CPU parity test (tests/ssl/test_augment_parity.py) with its images, draws, statistics and tolerances,
with the kornia side on the device: kornia's random parameters and colour ops run on CUDA there, which
is what ``aug.backend=gpu`` does in a GPU run.
"""

from __future__ import annotations

import pytest
import torch

from tests.ssl.augment_stats import (
    assert_same_distribution,
    kornia_stats,
    load_train_images,
    small_aug_config,
    torchvision_stats,
)

pytestmark = pytest.mark.cuda


def test_kornia_on_the_device_matches_the_cpu_backend(cifar10_archive_path, device):
    images = load_train_images(cifar10_archive_path)
    torch.manual_seed(0)
    cpu_stats = torchvision_stats(images, small_aug_config())
    torch.manual_seed(0)
    device_stats = kornia_stats(images, small_aug_config(), device=device)
    print("\n" + assert_same_distribution(cpu_stats, device_stats, label=f"kornia/{device.type}"))
