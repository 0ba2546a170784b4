"""Robust image decoding.

Why: real folders hold grayscale, CMYK, palette and RGBA images, 0-byte files and files that are not
images at all. Colour modes are converted to RGB (never rejected). Unreadable files raise
:class:`BadImage` with the file name, so datasets can skip and count them, or stop with a clear message.
"""

from __future__ import annotations

import warnings

from PIL import Image, UnidentifiedImageError


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
        reason = "empty file" if _is_empty(path) else (str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise BadImage(f"{path}: {reason}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def _is_empty(path: str) -> bool:
    try:
        import os
        return os.path.getsize(path) == 0
    except OSError:
        return False
