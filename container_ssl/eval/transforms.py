"""Image transforms for the evaluators (kNN, linear probe); finetuning builds its own through timm.

Why here and not in the pretraining augmentations: evaluation must be identical for every backbone and
every pretraining recipe, so it depends only on the image size and the normalisation statistics.
DINO's protocol is resize to ``size / 0.875`` then centre-crop ``size`` (256 → 224). For tiny images
(CIFAR at 32 px) that crop would throw away an eighth of an already small picture, so at ``size <= 64``
the default ratio is 1.0: images are only resized to ``size`` (32-px CIFAR at 32 keeps its pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from ..errors import UserError
from ..ssl.augment import EvalTransform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "default_crop_ratio", "eval_transform", "probe_train_transform"]


def default_crop_ratio(size: int) -> float:
    """0.875 (DINO/ImageNet) above 64 px, 1.0 (no crop) for tiny images."""
    return 0.875 if size > 64 else 1.0


def eval_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   crop_ratio: float | None = None) -> EvalTransform:
    """Resize the short side to ``size / crop_ratio`` (bicubic), centre-crop ``size``, normalise.

    The pretraining package's :class:`~container_ssl.ssl.augment.EvalTransform` does the work, so the
    online monitor and these evaluators prepare images identically.
    """
    _check(size, mean, std)
    ratio = default_crop_ratio(size) if crop_ratio is None else float(crop_ratio)
    if not 0.0 < ratio <= 1.0:
        raise UserError(f"crop ratio must be in (0, 1], got {crop_ratio}")
    resize_to = None if ratio == 1.0 else round(size / ratio)
    return EvalTransform(int(size), resize_to=resize_to, mean=tuple(mean), std=tuple(std))


def probe_train_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                          scale: Sequence[float] = (0.08, 1.0)) -> v2.Compose:
    """DINO's linear-probe augmentation: RandomResizedCrop(size, scale) + horizontal flip, normalise."""
    _check(size, mean, std)
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise UserError(f"crop scale must be two numbers 0 < lo <= hi <= 1, got {list(scale)}")
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def _check(size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if int(size) < 1:
        raise UserError(f"image size must be positive, got {size}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise UserError(f"mean/std must be three numbers each (std > 0), got mean={list(mean)} std={list(std)}")
