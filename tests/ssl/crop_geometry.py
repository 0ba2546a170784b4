"""Measure where crops come from, black-box: the crop boxes of either back-end in original-image pixels.

Why black-box: the check must not trust the code under test to report its own boxes. The source image is a
coordinate ramp (red rises linearly with x, green with y), every colour augmentation is switched off, and
each crop's box is read back from its pixels: resampling (bicubic, anti-aliased or not) reproduces a linear
function, so along the middle half of a crop (away from clamped borders) the red value at output column
``i`` is ``(x0 + (i + 0.5) * w / size) * 255 / W``; a straight-line fit gives the box's left edge ``x0``
and width ``w``, and the green channel gives ``y0`` and ``h`` likewise. uint8 rounding costs well under a
pixel after the fit.

Used by tests/ssl/test_augment_parity.py and ``benchmarks/augment_bench.py --coverage``.
"""

from __future__ import annotations

import numpy as np
import torch

from container_ssl.config import AugConfig
from container_ssl.ssl.augment import denormalize
from container_ssl.ssl.loader import build_augmentation, collate_views

# (name, height, width): landscape, portrait, very wide, square
SHAPES = (("3:2", 64, 96), ("2:3", 96, 64), ("4:1", 32, 128), ("1:1", 64, 64))
N_LOCAL = 2


def geometry_cfg(backend: str, **kw) -> AugConfig:
    """Real crop scales and sizes, every colour step and the flip off (they would scramble the ramp)."""
    return AugConfig(backend=backend, global_size=32, local_size=16, n_local=N_LOCAL, flip_p=0.0, jitter_p=0.0,
                     grayscale_p=0.0, blur_p=[0.0, 0.0, 0.0], solarize_p=0.0, **kw)


def ramp_image(height: int, width: int) -> torch.Tensor:
    """``[3, H, W]`` uint8: red = (x + 0.5) * 255 / W, green = (y + 0.5) * 255 / H, blue constant."""
    x = (torch.arange(width, dtype=torch.float64) + 0.5) * 255 / width
    y = (torch.arange(height, dtype=torch.float64) + 0.5) * 255 / height
    red = x.expand(height, width)
    green = y[:, None].expand(height, width)
    return torch.stack([red, green, torch.full_like(red, 128.0)]).round().to(torch.uint8)


def _fit(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """values ``[N, size]`` (one profile per crop) -> (intercept, slope) against pixel centres i + 0.5."""
    lo, hi = size // 4, size - size // 4
    t = np.arange(lo, hi) + 0.5
    v = values[:, lo:hi]
    slope = ((t - t.mean()) * (v - v.mean(axis=1, keepdims=True))).sum(axis=1) / ((t - t.mean()) ** 2).sum()
    return v.mean(axis=1) - slope * t.mean(), slope


def boxes_from_crops(crops: torch.Tensor, cfg: AugConfig, height: int, width: int) -> np.ndarray:
    """Normalised crops ``[N, 3, s, s]`` of a :func:`ramp_image` -> boxes ``[N, 4]`` (x0, y0, w, h) in pixels."""
    size = crops.shape[-1]
    rgb = denormalize(crops.double(), cfg.mean, cfg.std).numpy() * 255
    mid = slice(size // 4, size - size // 4)
    c_x, m_x = _fit(rgb[:, 0, mid, :].mean(axis=1), size)  # red along columns
    c_y, m_y = _fit(rgb[:, 1, :, mid].mean(axis=2), size)  # green along rows
    return np.stack([c_x * width / 255, c_y * height / 255, m_x * size * width / 255,
                     m_y * size * height / 255], axis=1)


def crop_boxes(backend: str, height: int, width: int, draws: int, seed: int = 0,
               **cfg_kw) -> tuple[np.ndarray, np.ndarray]:
    """(global boxes, local boxes) of ``draws`` augmentations of one ramp image, through the trainer's path.

    The trainer's path: ``build_augmentation``'s per-image transform, the loader's collate, then the batched
    module if the back-end has one, exactly as ``train_step`` runs them.
    """
    cfg = geometry_cfg(backend, **cfg_kw)
    image = ramp_image(height, width)
    torch.manual_seed(seed)
    transform, batched = build_augmentation(cfg, torch.device("cpu"))
    views, _, _ = collate_views([(transform(image), 0) for _ in range(draws)])
    if batched is not None:
        views = batched(views)
    boxes = [boxes_from_crops(v, cfg, height, width) for v in views]
    return np.concatenate(boxes[:2]), np.concatenate(boxes[2:])


def box_stats(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """Per box: area fraction, log aspect ratio (w / h), centre (fractions), touches the left / top sixth.

    "Touches" means the left (top) edge lies at least half a pixel inside the leftmost (topmost) sixth, so that
    a box starting exactly on the sixth's boundary is not counted through the fit's ~0.1-0.3 px error.
    """
    x0, y0, w, h = boxes.T
    return {"area": w * h / (width * height), "log_aspect": np.log(w / h),
            "cx": (x0 + w / 2) / width, "cy": (y0 + h / 2) / height,
            "left": x0 + 0.5 < width / 6, "top": y0 + 0.5 < height / 6}
