"""Image transforms for the evaluators (kNN, linear probe); finetuning builds its own through timm.

Why here and not in the pretraining augmentations: evaluation must be identical for every backbone and
every pretraining recipe, so it depends only on the image size and the normalisation statistics.
DINO's protocol is resize to ``size / 0.875`` then centre-crop ``size`` (256 → 224). For tiny images
(CIFAR at 32 px) that crop would throw away an eighth of an already small picture, so at ``size <= 64``
the default ratio is 1.0: images are only resized to ``size`` (32-px CIFAR at 32 keeps its pixels).

The package names the ImageNet normalisation once, here: timm's constants, which the models' pretrained
configs use too. The pretraining augmentations (``ssl`` sits above ``eval``) import them and the image
helpers (:func:`to_uint8_image`, :func:`interpolation_mode`) from this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torchvision.transforms import v2

from ..errors import UserError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "EvalTransform", "default_crop_ratio", "eval_transform",
           "interpolation_mode", "probe_train_transform", "to_uint8_image"]


def default_crop_ratio(size: int) -> float:
    """0.875 (DINO/ImageNet) above 64 px, 1.0 (no crop) for tiny images."""
    return 0.875 if size > 64 else 1.0


def eval_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   crop_ratio: float | None = None) -> EvalTransform:
    """Resize the short side to ``size / crop_ratio`` (bicubic), centre-crop ``size``, normalise.

    :class:`EvalTransform` does the work; the pretraining run's online monitor calls this function too, so
    it and these evaluators prepare images identically.
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


def interpolation_mode(name: str) -> v2.InterpolationMode:
    """torchvision's mode for one of :data:`INTERPOLATIONS`."""
    return v2.InterpolationMode[name.upper()]


def to_uint8_image(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A PIL image (any mode) or a ``[C, H, W]`` uint8 tensor as an RGB ``[3, H, W]`` uint8 tensor.

    Why uint8 tensors: torchvision v2 kernels are fastest on tensors, and uint8 keeps solarisation's
    threshold (128) and rounding identical to the PIL recipe.
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return v2.functional.pil_to_tensor(image)
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 \
            or image.shape[0] not in (1, 3):
        desc = f"{image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) \
            else type(image).__name__
        raise UserError(f"augmentation expects a PIL image or a [3, H, W] uint8 tensor, got a {desc}")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


class EvalTransform:
    """Deterministic evaluation transform: resize the shorter side, centre-crop, normalise.

    ``resize_to`` is the shorter side before the centre crop of ``size`` (e.g. 256 -> 224); ``None`` resizes
    straight to ``size``, and then an image that already is ``size`` x ``size`` (32-px CIFAR at 32) is not
    resampled: only conversion and normalisation happen, so evaluation sees the original pixels.
    """

    def __init__(self, size: int, resize_to: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, interpolation: str = "bicubic") -> None:
        resize_to = size if resize_to is None else int(resize_to)
        if size <= 0 or resize_to < size:
            raise UserError(f"eval transform needs size > 0 and resize_to >= size, "
                            f"got {size} and {resize_to}")
        if interpolation not in INTERPOLATIONS:
            raise UserError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                            f"got {interpolation!r}")
        self.size, self.resize_to = int(size), resize_to
        self.resize = v2.Compose([
            v2.Resize(resize_to, interpolation=interpolation_mode(interpolation), antialias=True),
            v2.CenterCrop(size),
        ])
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(list(mean), list(std)), v2.ToPureTensor()])

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        x = to_uint8_image(image)
        if self.resize_to != self.size or tuple(x.shape[-2:]) != (self.size, self.size):
            x = self.resize(x)
        return self.normalize(x)
