"""Listing an ImageFolder split: symlinked folders followed once, loops and repeats skipped and recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from container_ssl.data import build_dataset, left_out_record
from container_ssl.data.listing import REPEATED_FOLDER
from container_ssl.errors import UserError


def _images(folder: Path, n: int, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{i}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(p)
    return paths


def _names(ds) -> list[tuple[str, int]]:
    return [(os.path.relpath(p, ds.root), label) for p, label in ds.samples]


def test_symlink_loop_lists_each_image_once_and_is_recorded(tmp_path):
    split = tmp_path / "train"
    _images(split / "cat", 3)
    _images(split / "cat" / "sub", 1)
    _images(split / "dog", 2)
    os.symlink("..", split / "cat" / "loop")
    os.symlink("../..", split / "cat" / "sub" / "up")
    ds = build_dataset(str(tmp_path), "train")
    assert _names(ds) == [("cat/0.png", 0), ("cat/1.png", 0), ("cat/2.png", 0), ("cat/sub/0.png", 0),
                          ("dog/0.png", 1), ("dog/1.png", 1)]
    record = left_out_record(ds)
    assert record["count"] == 2 and record["by_reason"] == {REPEATED_FOLDER: 2}
    assert sorted(Path(f["path"]).name for f in record["files"]) == ["loop", "up"]
    json.dumps(record)  # goes into summary.json as it is


def test_symlink_to_a_sibling_class_keeps_its_images_under_their_own_class(tmp_path):
    split = tmp_path / "train"
    _images(split / "cat", 2)
    _images(split / "dog", 2)
    os.symlink("../dog", split / "cat" / "dogs")  # listed first, alphabetically, but never under 'cat'
    os.symlink(split / "cat", split / "dog" / "cats")
    ds = build_dataset(str(tmp_path), "train")
    assert _names(ds) == [("cat/0.png", 0), ("cat/1.png", 0), ("dog/0.png", 1), ("dog/1.png", 1)]
    assert sorted((os.path.relpath(i.path, ds.root), i.reason) for i in ds.left_out) == [
        ("cat/dogs", REPEATED_FOLDER), ("dog/cats", REPEATED_FOLDER)]


def test_link_to_images_elsewhere_is_followed_once(tmp_path):
    split = tmp_path / "data" / "train"
    _images(split / "cat", 1)
    _images(tmp_path / "elsewhere", 2, prefix="x")
    os.symlink(tmp_path / "elsewhere", split / "cat" / "more")
    os.symlink(tmp_path / "elsewhere", split / "cat" / "again")
    os.symlink(tmp_path / "nowhere", split / "cat" / "broken")
    ds = build_dataset(str(tmp_path / "data"), "train")
    assert _names(ds) == [("cat/0.png", 0), ("cat/again/x0.png", 0), ("cat/again/x1.png", 0)]
    assert sorted((Path(i.path).name, i.reason) for i in ds.left_out) == [
        ("broken", "broken symlink"), ("more", REPEATED_FOLDER)]


def test_class_folder_linked_to_another_class_is_refused(tmp_path):
    split = tmp_path / "train"
    _images(split / "cat", 1)
    os.symlink("cat", split / "kitty")
    with pytest.raises(UserError, match=r"class folders .*cat and .*kitty are the same folder"):
        build_dataset(str(tmp_path), "train")


def test_class_folder_without_images_names_what_it_holds(tmp_path):
    _images(tmp_path / "train" / "cat", 1)
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "readme.md").write_text("x")
    with pytest.raises(UserError, match=r"class folder .*dog is empty \(1 file\(s\) left out: not an image type"):
        build_dataset(str(tmp_path), "train")
