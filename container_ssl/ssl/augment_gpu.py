"""DINO multi-crop augmentation, batched on the training device (kornia.augmentation).

Why: with many local crops per image the per-image CPU pipeline can starve a fast accelerator. Here the
DataLoader only decodes, draws the crop boxes and resizes (:class:`BoxAndResize`), and
:class:`KorniaMultiCrop` makes all crops of the batch on the device, with the same recipe and random-draw
semantics as :class:`~container_ssl.ssl.augment.MultiCropTransform` (every crop of every sample draws its
own parameters).

Crop boxes: drawn in the loader on the *original* image, by the CPU back-end's own torchvision rule
(:func:`~container_ssl.ssl.augment.random_resized_crop`), so both back-ends crop from the whole image (a
centre square would never show the sides of a 3:2 photo) and the draws are seeded per sample like the rest
of the loader. The image then travels as a fixed ``S`` x ``S`` canvas so that a batch stacks: a square image
is resized (or passed through, e.g. 32-px CIFAR at ``S = 32``), a non-square one is squeezed to the square
along its long side, and its boxes, stored as fractions of the original width and height, land on the same
content. The squeeze costs detail along the long side only (``S`` pixels span it); raise ``aug.base_size``
for more. The alternative, keeping the aspect ratio and padding, would need a canvas as large as the widest
image in every batch.

Resampling choice: kornia's ``RandomResizedCrop`` (here only the box sampler of plain image batches, by
the same torchvision rule) aligns box corners to output corners and has no anti-aliasing, while the CPU
back-end resizes with torchvision's half-pixel convention and ``antialias=True``. So the boxes are
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

Randomness: the loader's box draws use the torch RNG that the trainer seeds per sample; every draw here
(colours, and the boxes of plain image batches) uses the torch global RNG of the device the module lives
on (kornia moves its samplers with ``.to(device)``), so ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import kornia.augmentation as K
import torch
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import warp_affine
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from ..errors import UserError
from ..eval.transforms import to_uint8_image
from .augment import (
    AugSettings,
    blur_kernel_size,
    random_resized_crop,
    read_aug_settings,
)

_AA_SIGMA0 = 0.4  # blur (input px) of one pixel for the anti-alias pre-filter; see the module docstring


class BoxedCanvas(NamedTuple):
    """The loader's output for the device back-end: one sample, or (collated) one batch.

    ``images``: ``[3, S, S]`` (``[B, 3, S, S]``) uint8, 4x smaller to copy to the device than float.
    ``boxes``: ``[2 + n_local, 4]`` (``[B, 2 + n_local, 4]``) float32 crop boxes in view order (global 1,
    global 2, locals) as ``(left, top, width, height)`` fractions of the original image.
    A named tuple because the DataLoader's default collate and ``pin_memory`` keep its type, so the batch
    arrives as one object with a ``.to``, like a tensor.
    """

    images: torch.Tensor
    boxes: torch.Tensor

    def to(self, *args: Any, **kwargs: Any) -> BoxedCanvas:
        return BoxedCanvas(self.images.to(*args, **kwargs), self.boxes.to(*args, **kwargs))


class BoxAndResize:
    """Loader side of the device back-end: image -> :class:`BoxedCanvas` (``S = base_size or global_size``).

    Draws every view's box on the original image (see the module docstring), then resizes the image to
    ``S`` x ``S`` (antialiased); an image that already is ``S`` x ``S`` is not resampled.
    """

    def __init__(self, aug_cfg: Any) -> None:
        s = read_aug_settings(aug_cfg)
        self.size = s.base_size or s.global_size
        self.n_local = s.n_local
        self.global_crop = random_resized_crop(s, s.global_size, s.global_scale)
        self.local_crop = random_resized_crop(s, s.local_size, s.local_scale)
        self.resize = v2.Resize((self.size, self.size),
                                interpolation=v2.InterpolationMode[s.interpolation.upper()], antialias=True)

    def __call__(self, image: Image.Image | torch.Tensor) -> BoxedCanvas:
        x = to_uint8_image(image)
        height, width = x.shape[-2:]
        params = [self.global_crop.make_params([x]) for _ in range(2)]
        params += [self.local_crop.make_params([x]) for _ in range(self.n_local)]
        boxes = torch.tensor([[p["left"] / width, p["top"] / height, p["width"] / width, p["height"] / height]
                              for p in params], dtype=torch.float32)
        if (height, width) != (self.size, self.size):
            x = self.resize(x)
        return BoxedCanvas(x.contiguous(), boxes)


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
    """``forward(batch) -> [global 1, global 2, local 1..n]`` normalised float32 views.

    ``batch`` is the loader's :class:`BoxedCanvas` (boxes drawn there), or a plain ``[B, 3, H, W]`` uint8 or
    ``[0, 1]`` float image batch, whose boxes are then drawn here, on the device, over each whole image.
    Each returned view is a ``[B, 3, size, size]`` batch; crop ``k`` of sample ``b`` has its own random box,
    flip, jitter, grayscale, blur and solarisation draws.
    """

    def __init__(self, aug_cfg: Any) -> None:
        super().__init__()
        s = read_aug_settings(aug_cfg)
        self.settings = s
        # Box samplers for plain image batches (see the module docstring for why the resampling is done here).
        self.global_boxes = K.RandomResizedCrop((s.global_size, s.global_size), scale=s.global_scale,
                                                resample=s.interpolation)
        self.local_boxes = K.RandomResizedCrop((s.local_size, s.local_size), scale=s.local_scale,
                                               resample=s.interpolation)
        self.global1 = _colour_pipeline(s, s.global_size, s.blur_p[0], 0.0)
        self.global2 = _colour_pipeline(s, s.global_size, s.blur_p[1], s.solarize_p)
        self.local = _colour_pipeline(s, s.local_size, s.blur_p[2], 0.0)

    @torch.no_grad()
    def forward(self, batch: BoxedCanvas | torch.Tensor) -> list[torch.Tensor]:
        s = self.settings
        if isinstance(batch, BoxedCanvas):
            x = _unit_float(batch.images)
            boxes = self._canvas_boxes(batch.boxes, x)
        else:
            x = _unit_float(batch)
            boxes = [_sampled_boxes(x, self.global_boxes) for _ in range(2)]
            boxes += [_sampled_boxes(x, self.local_boxes) for _ in range(s.n_local)]
        crops = [
            self.global1(self._resized_crop(x, boxes[0], s.global_size)),
            self.global2(self._resized_crop(x, boxes[1], s.global_size)),
        ]
        if s.n_local:
            # Crop each local view separately (the boxes index the shared source batch), then run the
            # colour pipeline once over all of them: fewer launches, still per-crop random draws.
            local = torch.cat([self._resized_crop(x, box, s.local_size) for box in boxes[2:]])
            crops += list(self.local(local).chunk(s.n_local))
        return crops

    def _canvas_boxes(self, boxes: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, V, 4]`` fractions of the original image -> V boxes ``[B, 4]`` in pixels of the canvas ``x``."""
        views = 2 + self.settings.n_local
        if boxes.shape != (x.shape[0], views, 4):
            raise UserError(f"device augmentation got crop boxes of shape {tuple(boxes.shape)} for "
                            f"{x.shape[0]} images, expected [{x.shape[0]}, {views}, 4] (2 + aug.n_local): build "
                            f"the loader transform and the batched module from the same aug settings")
        height, width = x.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=x.dtype, device=x.device)
        return list((boxes.to(device=x.device, dtype=x.dtype) * scale).unbind(1))

    def _resized_crop(self, x: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
        """Resample box ``[B, 4]`` = (left, top, width, height) px of ``x`` to ``size`` x ``size``.

        The box covers ``[left, left + width)`` in continuous pixel coordinates; resampling is half-pixel
        and anti-aliased (see the module docstring).
        """
        b, _, height, width = x.shape
        x0, y0, box_w, box_h = box.unbind(1)

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


def _sampled_boxes(x: torch.Tensor, sampler: K.RandomResizedCrop) -> torch.Tensor:
    """One box per image of the batch ``x`` by kornia's sampler (torchvision's rule): ``[B, 4]`` px."""
    corners = sampler.forward_parameters(x.shape)["src"].to(device=x.device, dtype=x.dtype)  # [B, 4, (x, y)]
    x0, y0 = corners[:, 0, 0], corners[:, 0, 1]  # inclusive corners: + 1 for the width and height
    return torch.stack([x0, y0, corners[:, 1, 0] - x0 + 1, corners[:, 3, 1] - y0 + 1], dim=1)


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
