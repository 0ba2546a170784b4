"""DINO multi-crop augmentation, batched on the training device (kornia.augmentation).

Why: with many local crops per image the per-image CPU pipeline can starve a fast accelerator. Here the
DataLoader only decodes and resizes every image to one square ``base_size`` (:class:`BaseResize`), and
:class:`KorniaMultiCrop` makes all crops of the batch on the device, with the same recipe and random-draw
semantics as :class:`~container_ssl.ssl.augment.MultiCropTransform` (every crop of every sample draws its
own parameters).

Resampling choice: kornia's ``RandomResizedCrop`` draws the crop boxes (torchvision's sampling rule, per
sample), but its own resampling aligns box corners to output corners and has no anti-aliasing, while the
CPU back-end resizes with torchvision's half-pixel convention and ``antialias=True``. So the boxes are
resampled here by one batched :func:`kornia.geometry.transform.warp_affine` with the half-pixel mapping,
after a per-sample, per-axis Gaussian pre-filter (no blur when upscaling). Its sigma follows Gaussian
scale-space composition: pixels that carry a blur of ``s0`` input pixels become pixels ``f`` times larger
(``f`` the crop's downscale factor along that axis) carrying ``f * s0``, which needs an extra
``s0 * sqrt(f**2 - 1)``. ``s0 = 0.4`` was calibrated against torchvision's antialiased bicubic resize on
CIFAR-10 images (best or near-best for f = 1.1-4; the textbook 0.5, and kornia's own
``resize(antialias=True)`` rule ``(f - 1) / 2``, both deviate more). The remaining gap, mostly the Gaussian
vs cubic anti-alias filter and ``grid_sample``'s bicubic coefficient (-0.75 vs -0.5), is ~0.002-0.01 mean
absolute error in ``[0, 1]`` units, far below the colour augmentations' effect. One batched blur and one
batched warp per view keep the crop free of per-sample Python loops and device syncs (kornia's "slice"
mode resizes sample by sample).

Randomness: every draw uses the torch global RNG of the device the module lives on (kornia moves its
samplers with ``.to(device)``), so ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import kornia.augmentation as K
import torch
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import warp_affine
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from ..errors import UserError
from .augment import AugSettings, blur_kernel_size, read_aug_settings, to_uint8_image

_AA_SIGMA0 = 0.4  # blur (input px) of one pixel for the anti-alias pre-filter; see the module docstring


class BaseResize:
    """Loader side of the device back-end: image -> ``[3, S, S]`` uint8, ``S = base_size or global_size``.

    Resizes the shorter side to ``S`` (antialiased) and centre-crops, so images of any size batch together;
    an image that already is ``S`` x ``S`` passes through untouched (no resampling of e.g. 32-px CIFAR).
    uint8 keeps the host-to-device copy 4x smaller than float.
    """

    def __init__(self, aug_cfg: Any) -> None:
        s = read_aug_settings(aug_cfg)
        self.size = s.base_size or s.global_size
        self.resize = v2.Compose([
            v2.Resize(self.size, interpolation=v2.InterpolationMode[s.interpolation.upper()], antialias=True),
            v2.CenterCrop(self.size),
        ])

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        x = to_uint8_image(image)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = self.resize(x)
        return x.contiguous()


def _colour_pipeline(s: AugSettings, size: int, blur_p: float, solarize_p: float) -> nn.Sequential:
    """Flip, jitter, grayscale, blur, solarise, normalise: the CPU back-end's order (zero-p steps omitted)."""
    steps: list[nn.Module] = []
    if s.flip_p > 0:
        steps.append(K.RandomHorizontalFlip(p=s.flip_p))
    if s.jitter_p > 0 and any(s.jitter):
        # ColorJitter (torchvision/PIL formulas, random order), not ColorJiggle.
        steps.append(K.ColorJitter(*s.jitter, p=s.jitter_p))
    if s.grayscale_p > 0:
        steps.append(K.RandomGrayscale(p=s.grayscale_p))
    if blur_p > 0:
        steps.append(K.RandomGaussianBlur(blur_kernel_size(size), s.blur_sigma, p=blur_p))
    if solarize_p > 0:
        # thresholds=0, additions=0: a fixed threshold of 0.5, i.e. PIL's 128 on uint8 input.
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    steps.append(K.Normalize(mean=torch.tensor(s.mean), std=torch.tensor(s.std)))
    return nn.Sequential(*steps)


class KorniaMultiCrop(nn.Module):
    """``forward(images [B, 3, S, S] uint8 or [0, 1] float) -> [global 1, global 2, local 1..n]`` float32.

    Each returned view is a normalised ``[B, 3, size, size]`` batch; crop ``k`` of sample ``b`` has its own
    random box, flip, jitter, grayscale, blur and solarisation draws.
    """

    def __init__(self, aug_cfg: Any) -> None:
        super().__init__()
        s = read_aug_settings(aug_cfg)
        self.settings = s
        # Box samplers only (see the module docstring for why the resampling is done here).
        self.global_boxes = K.RandomResizedCrop((s.global_size, s.global_size), scale=s.global_scale,
                                                resample=s.interpolation)
        self.local_boxes = K.RandomResizedCrop((s.local_size, s.local_size), scale=s.local_scale,
                                               resample=s.interpolation)
        self.global1 = _colour_pipeline(s, s.global_size, s.blur_p[0], 0.0)
        self.global2 = _colour_pipeline(s, s.global_size, s.blur_p[1], s.solarize_p)
        self.local = _colour_pipeline(s, s.local_size, s.blur_p[2], 0.0)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = _unit_float(images)
        s = self.settings
        crops = [
            self.global1(self._resized_crop(x, self.global_boxes, s.global_size)),
            self.global2(self._resized_crop(x, self.global_boxes, s.global_size)),
        ]
        if s.n_local:
            # Crop each local view separately (the boxes index the shared source batch), then run the
            # colour pipeline once over all of them: fewer launches, still per-crop random draws.
            local = torch.cat([self._resized_crop(x, self.local_boxes, s.local_size)
                               for _ in range(s.n_local)])
            crops += list(self.local(local).chunk(s.n_local))
        return crops

    def _resized_crop(self, x: torch.Tensor, sampler: K.RandomResizedCrop, size: int) -> torch.Tensor:
        """Draw one box per sample and resample it to ``size`` x ``size`` (half-pixel, anti-aliased)."""
        b, _, height, width = x.shape
        box = sampler.forward_parameters(x.shape)["src"]  # [B, 4, 2] corners as (x, y), inclusive
        box = box.to(device=x.device, dtype=x.dtype)
        x0, y0 = box[:, 0, 0], box[:, 0, 1]
        box_w, box_h = box[:, 1, 0] - x0 + 1, box[:, 3, 1] - y0 + 1

        worst = max(height, width) / size  # largest possible downscale: the kernel size needs no device sync
        if worst > 1.0:
            factor = torch.stack([box_h, box_w], dim=1) / size  # (sigma_y, sigma_x) order of gaussian_blur2d
            # A sigma of 1e-3 is the identity kernel: upscaled crops stay sharp.
            sigma = (_AA_SIGMA0 * (factor.square() - 1.0).clamp_min(0.0).sqrt()).clamp_min(1e-3)
            k = 2 * math.ceil(3 * _AA_SIGMA0 * math.sqrt(worst * worst - 1.0)) + 1  # +-3 sigma, worst case
            k = min(k, 2 * min(height, width) - 1)  # reflect padding needs pad < side
            x = gaussian_blur2d(x, k, sigma)

        # Half-pixel mapping of the box onto the output grid: u = (x - x0 + 0.5) * size / box_w - 0.5.
        sx, sy = size / box_w, size / box_h
        matrix = x.new_zeros(b, 2, 3)
        matrix[:, 0, 0] = sx
        matrix[:, 0, 2] = sx * (0.5 - x0) - 0.5
        matrix[:, 1, 1] = sy
        matrix[:, 1, 2] = sy * (0.5 - y0) - 0.5
        out = warp_affine(x, matrix, (size, size), mode=self.settings.interpolation, padding_mode="border",
                          align_corners=False)
        return out.clamp_(0.0, 1.0) if self.settings.interpolation == "bicubic" else out


def _unit_float(images: torch.Tensor) -> torch.Tensor:
    """A ``[B, 3, H, W]`` uint8 (0..255) or float (0..1) batch as float32 in ``[0, 1]``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        desc = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"device augmentation expects a [B, 3, H, W] image batch, got {desc}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise UserError(f"device augmentation expects uint8 or [0, 1] float images, got {images.dtype}")
    return images.float()
