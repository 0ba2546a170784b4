"""The feature cache's key: other pixels under the same names, rewrites in place, transforms, hits.

Each cached result is compared with a fresh extraction of the same files (the independent reference);
the stale-cache cases fail on a key made of file names only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import MODEL
from PIL import Image

from container_ssl.data import build_dataset
from container_ssl.errors import UserError
from container_ssl.eval import features as features_mod
from container_ssl.eval.backbone import load_backbone
from container_ssl.eval.feature_key import dataset_fingerprint
from container_ssl.eval.features import cached_features, extract_features
from container_ssl.eval.transforms import eval_transform

RUN = {"batch_size": 4, "num_workers": 0, "use_amp": False}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, write_trainer_checkpoint):
    return load_backbone(write_trainer_checkpoint(tmp_path_factory.mktemp("ck"), *MODEL))


def _tree(root: Path, seed: int) -> Path:
    """2 classes x 3 BMP images: a BMP's size depends only on its dimensions, never on its pixels."""
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (root / "val" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "val" / cls / f"{i}.bmp")
    return root


def _same_times(src: Path, dst: Path) -> None:
    """Give every file of ``dst`` the access/modification times (ns) of its namesake in ``src``."""
    for f in src.rglob("*.bmp"):
        st = f.stat()
        os.utime(dst / f.relative_to(src), ns=(st.st_atime_ns, st.st_mtime_ns))


def _ds(root: Path, **transform):
    return build_dataset(str(root), "val", transform=eval_transform(32, **transform))


@pytest.fixture
def count_extractions(monkeypatch):
    calls: list[int] = []
    real = features_mod.extract_features

    def counting(model, dataset, **kwargs):
        calls.append(len(dataset))
        return real(model, dataset, **kwargs)

    monkeypatch.setattr(features_mod, "extract_features", counting)
    return calls


def test_same_layout_other_pixels_gets_its_own_features(backbone, tmp_path, count_extractions):
    model, info = backbone
    first, second = _tree(tmp_path / "first", 0), _tree(tmp_path / "second", 1)
    _same_times(first, second)  # same names, sizes and mtimes: only the pixels differ
    cache = tmp_path / "cache"
    a, _ = cached_features(model, info, _ds(first), cache, **RUN)
    b, _ = cached_features(model, info, _ds(second), cache, **RUN)
    assert count_extractions == [6, 6] and len(list(cache.glob("*.pt"))) == 2
    fresh, _ = extract_features(model, _ds(second), **RUN)
    assert torch.equal(b, fresh) and not torch.allclose(a, b)


def test_rewrite_in_place_with_same_size_and_mtime_is_detected(backbone, tmp_path, count_extractions):
    model, info = backbone
    root = _tree(tmp_path / "data", 0)
    cache = tmp_path / "cache"
    before, _ = cached_features(model, info, _ds(root), cache, **RUN)
    target = root / "val" / "b" / "1.bmp"
    st = target.stat()
    Image.new("RGB", (32, 32), (0, 255, 0)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    after, _ = cached_features(model, info, _ds(root), cache, **RUN)
    fresh, _ = extract_features(model, _ds(root), **RUN)
    assert count_extractions == [6, 6] and torch.equal(after, fresh) and not torch.equal(before[4], after[4])
    # without the content digest (large datasets), ctime still tells the rewrite apart
    stat_only = dataset_fingerprint(_ds(root), content=False)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dataset_fingerprint(_ds(root), content=False) != stat_only


def test_unchanged_files_hit_the_cache_with_the_fresh_features(backbone, tmp_path, count_extractions):
    model, info = backbone
    root = _tree(tmp_path / "data", 0)
    cache = tmp_path / "cache"
    a, ya = cached_features(model, info, _ds(root), cache, **RUN)
    b, yb = cached_features(model, info, _ds(root), cache, **RUN)
    fresh, labels = extract_features(model, _ds(root), **RUN)
    assert count_extractions == [6] and torch.equal(a, b) and torch.equal(b, fresh)
    assert ya.tolist() == yb.tolist() == labels.tolist() == [0, 0, 0, 1, 1, 1]
    # a copy of the data (same bytes, other folder) has the same content digest: still a hit
    shutil.copytree(root, tmp_path / "copy")
    c, _ = cached_features(model, info, _ds(tmp_path / "copy"), cache, **RUN)
    assert count_extractions == [6] and torch.equal(c, fresh)


def test_a_cache_file_from_other_inputs_under_the_right_name_is_recomputed(backbone, tmp_path, count_extractions):
    model, info = backbone
    first, second = _tree(tmp_path / "first", 0), _tree(tmp_path / "second", 1)
    cache = tmp_path / "cache"
    cached_features(model, info, _ds(first), cache, **RUN)
    (made,) = cache.glob("*.pt")
    cached_features(model, info, _ds(second), cache, **RUN)
    target = next(p for p in cache.glob("*.pt") if p != made)
    shutil.copy(made, target)  # the first dataset's features under the second's name
    again, _ = cached_features(model, info, _ds(second), cache, **RUN)
    fresh, _ = extract_features(model, _ds(second), **RUN)
    assert count_extractions == [6, 6, 6] and torch.equal(again, fresh)


@pytest.mark.parametrize("change", [{"size": 28}, {"crop_ratio": 0.875}, {"mean": (0.5, 0.5, 0.5)},
                                    {"std": (0.2, 0.2, 0.2)}])
def test_every_transform_setting_is_part_of_the_key(tmp_path, change):
    root = _tree(tmp_path / "data", 0)
    size = change.pop("size", 32)
    changed = build_dataset(str(root), "val", transform=eval_transform(size, **change))
    assert dataset_fingerprint(changed) != dataset_fingerprint(_ds(root))


def test_interpolation_and_feature_kind_are_part_of_the_key(tmp_path):
    from torchvision.transforms import v2

    root = _tree(tmp_path / "data", 0)
    tf = eval_transform(32, crop_ratio=0.875)
    bicubic = dataset_fingerprint(build_dataset(str(root), "val", transform=tf))
    tf.resize.transforms[0].interpolation = v2.InterpolationMode.BILINEAR
    assert dataset_fingerprint(build_dataset(str(root), "val", transform=tf)) != bicubic
    ds = _ds(root)
    assert dataset_fingerprint(ds, {"kind": "pooled"}) != dataset_fingerprint(ds, {"kind": "last2"})


def test_feature_cache_that_is_a_file_is_one_line_naming_the_option(backbone, tmp_path):
    model, info = backbone
    not_a_folder = tmp_path / "features.pt"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(UserError, match=r"^--feature-cache .*features.pt is a file, not a folder") as e:
        cached_features(model, info, _ds(_tree(tmp_path / "data", 0)), not_a_folder, **RUN)
    assert "\n" not in str(e.value)


def test_torchvision_cifar10_is_keyed_by_its_pixels():
    from types import SimpleNamespace

    from container_ssl.data.datasets import TorchvisionCIFAR10

    def fake(data: np.ndarray) -> TorchvisionCIFAR10:  # the attributes __init__ sets, without a download
        ds = TorchvisionCIFAR10.__new__(TorchvisionCIFAR10)
        ds._ds, ds.targets, ds.classes, ds.transform = SimpleNamespace(data=data), [0, 1], ["a", "b"], None
        ds.samples = [("val/00000", 0), ("val/00001", 1)]
        return ds

    pixels = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    key = dataset_fingerprint(fake(pixels))
    assert dataset_fingerprint(fake(pixels.copy())) == key
    pixels[1, 5, 5, 0] = 1
    assert dataset_fingerprint(fake(pixels)) != key
