"""DINO multi-crop augmentation, CPU back-end (torchvision.transforms.v2, per image in DataLoader workers).

Why a CPU back-end: it needs no accelerator, overlaps with training inside the worker processes, and works
on images of any size. ``augment_gpu`` is the batched alternative for when the workers are the bottleneck;
both follow the recipe here and share :func:`read_aug_settings` and :func:`blur_kernel_size`, so the two
produce crops with the same distribution.

The recipe (DINO): random resized crops (2 global, ``n_local`` local), horizontal flip, colour jitter,
grayscale, Gaussian blur (always-ish on global 1, rarely on global 2, half of the time on locals),
solarisation on global 2 only, then ``[0, 1]`` float and per-channel normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from ..config import Interpolation
from ..errors import UserError
from ..eval.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    interpolation_mode,
    to_uint8_image,
)


@dataclass(frozen=True)
class AugSettings:
    """Validated, plain-python copy of ``AugConfig`` (picklable into DataLoader workers)."""

    global_size: int
    local_size: int
    n_local: int
    global_scale: tuple[float, ...]  # (min, max)
    local_scale: tuple[float, ...]  # (min, max)
    interpolation: str
    flip_p: float
    jitter: tuple[float, ...]  # brightness, contrast, saturation, hue
    jitter_p: float
    grayscale_p: float
    blur_sigma: tuple[float, ...]  # (min, max)
    blur_p: tuple[float, ...]  # global 1, global 2, locals
    solarize_p: float
    mean: tuple[float, ...]  # per RGB channel
    std: tuple[float, ...]
    base_size: int


def _floats(cfg: Any, key: str, n: int) -> tuple[float, ...]:
    value = getattr(cfg, key)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"aug.{key} must be a list of {n} numbers, got {value!r}") from None
    if len(out) != n:
        raise UserError(f"aug.{key} must be a list of {n} numbers, got {list(out)}")
    return out


def _prob(cfg: Any, key: str) -> float:
    p = float(getattr(cfg, key))
    if not 0.0 <= p <= 1.0:
        raise UserError(f"aug.{key} is a probability and must lie in [0, 1], got {p}")
    return p


def _scale(cfg: Any, key: str) -> tuple[float, ...]:
    lo, hi = _floats(cfg, key, 2)
    if not 0.0 < lo <= hi <= 1.0:
        raise UserError(f"aug.{key} must be [min, max] with 0 < min <= max <= 1, got {[lo, hi]}")
    return lo, hi


def read_aug_settings(aug_cfg: Any) -> AugSettings:
    """Validate an ``AugConfig`` (OmegaConf node or dataclass, read by attribute) into :class:`AugSettings`.

    Why validate here: a wrong value (a probability of 2, an inverted scale range) would otherwise surface
    as an obscure error inside a DataLoader worker, or silently train on broken crops.
    """
    if isinstance(aug_cfg, AugSettings):
        return aug_cfg
    try:
        global_size, local_size = int(aug_cfg.global_size), int(aug_cfg.local_size)
        n_local, base_size = int(aug_cfg.n_local), int(aug_cfg.base_size)
        interpolation = Interpolation(str(aug_cfg.interpolation).lower()).value  # ValueError if not a member
    except AttributeError as e:
        raise UserError(f"augmentation settings are missing a key: {e}") from None
    if global_size <= 0 or local_size <= 0:
        raise UserError(f"aug.global_size and aug.local_size must be > 0, got {global_size} and {local_size}")
    if n_local < 0 or base_size < 0:
        raise UserError(f"aug.n_local and aug.base_size must be >= 0, got {n_local} and {base_size}")
    jitter = _floats(aug_cfg, "jitter", 4)
    if min(jitter) < 0 or jitter[3] > 0.5:
        raise UserError(f"aug.jitter [brightness, contrast, saturation, hue] must be >= 0 with hue <= 0.5, "
                        f"got {list(jitter)}")
    blur_sigma = _floats(aug_cfg, "blur_sigma", 2)
    if not 0.0 < blur_sigma[0] <= blur_sigma[1]:
        raise UserError(f"aug.blur_sigma must be [min, max] with 0 < min <= max, got {list(blur_sigma)}")
    blur_p = _floats(aug_cfg, "blur_p", 3)
    if not all(0.0 <= p <= 1.0 for p in blur_p):
        raise UserError(f"aug.blur_p [global 1, global 2, locals] are probabilities in [0, 1], "
                        f"got {list(blur_p)}")
    std = _floats(aug_cfg, "std", 3)
    if min(std) <= 0:
        raise UserError(f"aug.std must be > 0 for every channel, got {list(std)}")
    return AugSettings(
        global_size=global_size, local_size=local_size, n_local=n_local,
        global_scale=_scale(aug_cfg, "global_scale"), local_scale=_scale(aug_cfg, "local_scale"),
        interpolation=interpolation, flip_p=_prob(aug_cfg, "flip_p"), jitter=jitter,
        jitter_p=_prob(aug_cfg, "jitter_p"), grayscale_p=_prob(aug_cfg, "grayscale_p"),
        blur_sigma=blur_sigma, blur_p=blur_p, solarize_p=_prob(aug_cfg, "solarize_p"),
        mean=_floats(aug_cfg, "mean", 3), std=std, base_size=base_size,
    )


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian-blur kernel of about 10% of the crop side, at least 3.

    Why: the blur strength is given as a sigma range in pixels of the crop; a kernel of ~10% of the side
    covers +-3 sigma for the default sigma range on 224-px crops (23 taps) while staying cheap on small ones.
    """
    k = max(3, round(0.1 * crop_size))
    return k if k % 2 else k + 1


def random_resized_crop(s: AugSettings, size: int, scale: tuple[float, ...]) -> v2.RandomResizedCrop:
    """The crop of one view; its ``make_params`` is the box rule of both back-ends.

    Why one rule: the boxes are torchvision's (and DINO's): an area of ``scale`` times the *whole original*
    image, a log-uniform aspect ratio in [3/4, 4/3], ten tries, then a centre crop clipped to the ratio range.
    The device back-end draws its boxes with this very object in the loader (``augment_gpu.BoxAndResize``),
    so on non-square images both back-ends crop from the same places.
    """
    return v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation_mode(s.interpolation),
                                antialias=True)


def _view_pipeline(s: AugSettings, size: int, scale: tuple[float, ...], blur_p: float,
                   solarize_p: float) -> v2.Compose:
    steps: list[Any] = [random_resized_crop(s, size, scale)]
    if s.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(s.flip_p))
    if s.jitter_p > 0 and any(s.jitter):
        steps.append(v2.RandomApply([v2.ColorJitter(*s.jitter)], p=s.jitter_p))
    if s.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(s.grayscale_p))
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=s.blur_sigma)], p=blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # the input is uint8 here
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(s.mean), list(s.std)),
              v2.ToPureTensor()]
    return v2.Compose(steps)


class MultiCropTransform:
    """``transform(image) -> [global 1, global 2, local 1, ..., local n]`` normalised float32 ``[3, h, w]``.

    Global crops are ``global_size`` px from ``global_scale`` of the image area; local crops ``local_size``
    px from ``local_scale``. Every crop draws its own random parameters.
    """

    def __init__(self, aug_cfg: Any) -> None:
        s = read_aug_settings(aug_cfg)
        self.settings = s
        self.global1 = _view_pipeline(s, s.global_size, s.global_scale, s.blur_p[0], 0.0)
        self.global2 = _view_pipeline(s, s.global_size, s.global_scale, s.blur_p[1], s.solarize_p)
        self.local = _view_pipeline(s, s.local_size, s.local_scale, s.blur_p[2], 0.0)

    def __call__(self, image: Image.Image | torch.Tensor) -> list[torch.Tensor]:
        x = to_uint8_image(image)
        crops = [self.global1(x), self.global2(x)]
        crops += [self.local(x) for _ in range(self.settings.n_local)]
        return crops

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"


def denormalize(tensor: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Undo :class:`~torchvision.transforms.v2.Normalize` for display: ``[..., 3, H, W]`` to ``[0, 1]``."""
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(shape)
    s = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(shape)
    return (tensor * s + m).clamp(0.0, 1.0)
