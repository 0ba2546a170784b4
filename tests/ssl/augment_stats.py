"""Statistics shared by the augmentation parity tests (CPU here, CUDA in tests/gpu/).

Why a module: the kornia back-end must match the torchvision one on every device it runs on, with the same
images, draws and tolerances; keeping the sampling and comparison in one place means the CUDA check cannot
drift from the CPU one. The tolerances are explained in tests/ssl/test_augment_parity.py.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from container_ssl.config import AugConfig
from container_ssl.ssl.augment import MultiCropTransform
from container_ssl.ssl.augment_gpu import KorniaMultiCrop

PER_CLASS, REPEATS, N_LOCAL = 10, 8, 2
MEAN_TOL, STD_REL_TOL = 0.1, 0.1
VIEWS = {"global1": [0], "global2": [1], "local": list(range(2, 2 + N_LOCAL))}

Stats = dict[str, tuple[np.ndarray, np.ndarray]]


def load_train_images(archive: Path, per_class: int = PER_CLASS) -> torch.Tensor:
    """The first ``per_class`` training JPEGs of every class of the CIFAR-10 archive: [N, 3, 32, 32] uint8."""
    buckets: dict[str, list[torch.Tensor]] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] != "train" or not parts[3].endswith(".jpg"):
                continue
            bucket = buckets.setdefault(parts[2], [])
            if len(bucket) < per_class:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    bucket.append(v2.functional.pil_to_tensor(im.convert("RGB")))
            if len(buckets) == 10 and all(len(b) == per_class for b in buckets.values()):
                break
    x = torch.stack([im for bucket in buckets.values() for im in bucket])
    assert x.shape == (10 * per_class, 3, 32, 32)
    return x


def small_aug_config(**kw) -> AugConfig:
    return AugConfig(global_size=32, local_size=16, n_local=N_LOCAL, **kw)


def view_stats(crops: list[torch.Tensor]) -> Stats:
    """crops: one [N, 3, h, w] tensor per view index -> per view type (channel means, channel stds)."""
    out = {}
    for name, idx in VIEWS.items():
        x = torch.cat([crops[i] for i in idx]).double().cpu()
        out[name] = (x.mean(dim=(0, 2, 3)).numpy(), x.std(dim=(0, 2, 3)).numpy())
    return out


def torchvision_stats(images: torch.Tensor, cfg: AugConfig, repeats: int = REPEATS) -> Stats:
    """Statistics of ``repeats`` per-image CPU multi-crop draws of every image."""
    cpu = MultiCropTransform(cfg)
    views: list[list[torch.Tensor]] = [[] for _ in range(2 + cfg.n_local)]
    for _ in range(repeats):
        for image in images:
            for v, crop in enumerate(cpu(image)):
                views[v].append(crop)
    return view_stats([torch.stack(v) for v in views])


def kornia_stats(images: torch.Tensor, cfg: AugConfig, repeats: int = REPEATS,
                 device: torch.device | str = "cpu") -> Stats:
    """Statistics of ``repeats`` batched kornia draws of the whole batch on ``device``."""
    aug = KorniaMultiCrop(cfg).to(device)
    batch = images.to(device)
    views: list[list[torch.Tensor]] = [[] for _ in range(2 + cfg.n_local)]
    for _ in range(repeats):
        for v, crop in enumerate(aug(batch)):
            assert crop.device.type == torch.device(device).type
            views[v].append(crop)
    return view_stats([torch.cat(v) for v in views])


def assert_same_distribution(cpu_stats: Stats, other: Stats, label: str = "kornia") -> str:
    """Channel means within MEAN_TOL and stds within STD_REL_TOL for every view type; returns the report."""
    report = []
    for name in VIEWS:
        (cm, cs), (gm, gs) = cpu_stats[name], other[name]
        report.append(f"{name:8s} mean cpu {np.round(cm, 3)} {label} {np.round(gm, 3)} | "
                      f"std cpu {np.round(cs, 3)} {label} {np.round(gs, 3)}")
    text = "\n".join(report)
    for name in VIEWS:
        (cm, cs), (gm, gs) = cpu_stats[name], other[name]
        assert np.all(np.abs(cm - gm) < MEAN_TOL), text
        assert np.all(np.abs(gs / cs - 1.0) < STD_REL_TOL), text
    # Sanity: the statistics are not trivially equal (global 2 is solarised, global 1 always blurred).
    assert np.abs(cpu_stats["global1"][0] - cpu_stats["global2"][0]).max() > 0.05, text
    return text
