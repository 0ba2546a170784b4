"""Robust image decoding.

Why: real folders hold grayscale, CMYK, palette and RGBA images, 16-bit and floating-point scans,
0-byte files and files that are not images at all. Colour modes are converted to RGB (never rejected).
Unreadable files raise :class:`BadImage` with the file name, so datasets can skip and count them, or stop
with a clear message.

High bit depths are scaled, not clipped (Pillow's own ``convert("RGB")`` clips a 16-bit image to white
and truncates a [0, 1] float image to black):

* 16-bit integer modes (``I;16*``, and ``I``, which is how Pillow opens 16-bit PNG/PGM/TIFF files):
  ``round(v * 255 / 65535)``; ``I`` values outside 0..65535 are clipped.
* 32-bit float (``F``): read as intensities in [0, 1] and scaled by 255. A float image with values
  outside [0, 1] (or NaN) has no agreed scale (HDR radiance, depth, 0..255 floats…); guessing one per
  image (min-max) would silently change its contrast, so it is refused as a :class:`BadImage` and the
  dataset skips and counts it with that reason.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["BadImage", "load_rgb", "to_rgb"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImage(Exception):
    """An image file that cannot be decoded; the message names the file and the reason."""


def load_rgb(path: str) -> Image.Image:
    """Open ``path`` fully decoded as an RGB image; RGBA/LA/palette with transparency go onto white."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency / truncated-file chatter
            with Image.open(path) as img:
                img.load()
                return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        try:
            empty = os.path.getsize(path) == 0
        except OSError:
            empty = False
        reason = "empty file" if empty else (str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise BadImage(f"{path}: {reason}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB; high-bit-depth and float modes are scaled as the module docstring says.

    Raises ``ValueError`` (which :func:`load_rgb` turns into :class:`BadImage`) for a float image
    outside [0, 1].
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        return Image.fromarray(_to_uint8(img), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def _to_uint8(img: Image.Image) -> np.ndarray:
    """One channel of 16-bit integers or [0, 1] floats as uint8 (rounded to nearest)."""
    values = np.asarray(img)
    if img.mode == "F":
        values = values.astype(np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(values).all() and low >= 0.0 and high <= 1.0):
            raise ValueError(f"float image with values in [{low:g}, {high:g}], not [0, 1]; "
                             "save it as 8- or 16-bit, or scale it to [0, 1]")
        return np.rint(values * 255.0).astype(np.uint8)
    values = np.clip(values.astype(np.int64), 0, 65535)
    return ((values * 255 + 65535 // 2) // 65535).astype(np.uint8)  # round(v * 255 / 65535), exact integers
