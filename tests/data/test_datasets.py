"""Datasets: folders, archives, colour modes, and bad files skipped-and-counted or named."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from container_ssl.data import build_dataset, resolve_root
from container_ssl.data.archives import extract_archive
from container_ssl.errors import UserError
from container_ssl.ssl.loader import collate_views


def _image(path: Path, mode: str = "RGB", size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 10, 10), "L": 128, "CMYK": (0, 255, 255, 0), "RGBA": (0, 0, 255, 0), "P": 3}[mode]
    Image.new(mode, size, color).save(path, "PNG" if mode in ("RGBA", "P") else "JPEG")
    return path


def _tree(root: Path) -> Path:
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            for i in range(3):
                _image(root / split / cls / f"{i}.jpg")
    return root


def test_folder_and_archive_give_the_same_dataset(tmp_path):
    root = _tree(tmp_path / "data" / "tiny")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="tiny")  # one top folder: it is descended into
    a = build_dataset(str(root), "train")
    b = build_dataset(str(archive), "val", cache_dir=str(tmp_path / "cache"))
    assert a.classes == b.classes == ["cat", "dog"] and len(a) == len(b) == 6
    again = extract_archive(archive, tmp_path / "cache")  # cached by content hash: extracted once
    assert resolve_root(str(archive), str(tmp_path / "cache")) == again / "tiny"
    assert len(list((tmp_path / "cache" / "extracted").iterdir())) == 1


def test_colour_modes_are_converted_not_rejected(tmp_path):
    root = tmp_path / "d"
    for i, mode in enumerate(("L", "CMYK", "RGBA", "P")):
        _image(root / "train" / "a" / f"{i}.{'png' if mode in ('RGBA', 'P') else 'jpg'}", mode)
    ds = build_dataset(str(root), "train")
    images = [ds[i][0] for i in range(len(ds))]
    assert [im.mode for im in images] == ["RGB"] * 4
    rgba = next(im for im, (p, _) in zip(images, ds.samples) if p.endswith("2.png"))
    assert rgba.getpixel((0, 0)) == (255, 255, 255)  # fully transparent pixels go onto white


def _bad_files(root: Path) -> list[Path]:
    good = _image(root / "train" / "a" / "good.jpg")
    empty = root / "train" / "a" / "empty.jpg"
    empty.write_bytes(b"")
    text = root / "train" / "a" / "notes.jpg"
    text.write_text("not an image")
    corrupt = root / "train" / "a" / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:40])
    return [empty, text, corrupt]


def test_bad_files_are_skipped_and_counted(tmp_path):
    _bad_files(tmp_path)
    ds = build_dataset(str(tmp_path), "train", transform=pil_to_tensor)
    _views, labels, skipped = collate_views([ds[i] for i in range(len(ds))])
    assert len(skipped) == 3 and len(labels) == 1


def test_bad_file_error_mode_names_the_file(tmp_path):
    bad = _bad_files(tmp_path)
    ds = build_dataset(str(tmp_path), "train", on_bad_image="error")
    names = {Path(p).name: i for i, (p, _) in enumerate(ds.samples)}
    for path in bad:
        with pytest.raises(UserError, match=path.name):
            ds[names[path.name]]


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing", "data path not found"),
    (lambda p: (p / "x.tar.gz").write_text("no tar") and p / "x.tar.gz", "not a tar archive"),
    (lambda p: (p / "train" / "a").mkdir(parents=True) or p, "class folder .*a is empty"),
    (lambda p: _tree(p) and p / "train" / "..", "split folder 'test' not found"),
])
def test_bad_paths_give_one_line_errors(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(UserError, match=match) as e:
        build_dataset(str(path), "test" if "split" in match else "train", cache_dir=str(tmp_path / "c"))
    assert "\n" not in str(e.value)
