"""Decoding of high-bit-depth and float images, and every extension Pillow opens.

The expected 8-bit values are computed here with numpy from the pixels written, independently of the
loader's integer arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from container_ssl.data import build_dataset
from container_ssl.data.images import BadImage, load_rgb


def _channels(path: Path) -> np.ndarray:
    rgb = np.asarray(load_rgb(str(path)))
    assert rgb.dtype == np.uint8 and (rgb == rgb[..., :1]).all()  # grey stays grey
    return rgb[..., 0]


def test_16_bit_png_gradient_scales_by_the_bit_depth(tmp_path):
    gradient = np.linspace(0, 65535, 16 * 64).round().astype(np.uint16).reshape(16, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(gradient).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    expected = np.rint(gradient.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(_channels(path), expected)


def test_float_tiff_in_unit_range_scales_by_255(tmp_path):
    ramp = np.linspace(0.0, 1.0, 8 * 50, dtype=np.float32).reshape(8, 50)
    path = tmp_path / "float.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    expected = np.rint(ramp.astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(_channels(path), expected)


@pytest.mark.parametrize("values", [[0.0, 2.5], [-1.0, 0.5], [0.0, float("nan")]])
def test_float_tiff_without_a_known_scale_is_a_named_bad_image(tmp_path, values):
    path = tmp_path / "hdr.tiff"
    Image.fromarray(np.array([values * 4], dtype=np.float32), mode="F").save(path)
    with pytest.raises(BadImage, match=r"hdr.tiff: float image with values in .*not \[0, 1\]"):
        load_rgb(str(path))


def test_gif_is_listed_and_decoded_and_a_text_file_is_counted(tmp_path):
    folder = tmp_path / "train" / "shapes"
    folder.mkdir(parents=True)
    pixels = np.zeros((12, 20, 3), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0)
    pixels[4:, 5:] = (0, 128, 255)  # three colours: a GIF palette holds them exactly
    Image.fromarray(pixels).save(folder / "anim.gif")
    Image.fromarray(pixels).save(folder / "still.png")
    (folder / "notes.txt").write_text("not an image")
    ds = build_dataset(str(tmp_path), "train")
    assert [Path(p).name for p, _ in ds.samples] == ["anim.gif", "still.png"]
    assert np.array_equal(np.asarray(ds[0][0]), pixels)
    assert [(Path(i.path).name, i.reason) for i in ds.left_out] == [
        ("notes.txt", "not an image type Pillow reads (.txt)")]
