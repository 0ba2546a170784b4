"""Backbone loading from the accepted checkpoint formats, feature kinds, and the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import MODEL
from torch.utils.data import Dataset

from container_ssl.checkpoint import load_checkpoint, save_atomic
from container_ssl.errors import UserError
from container_ssl.eval import features as features_mod
from container_ssl.eval.backbone import load_backbone
from container_ssl.eval.features import (
    cached_features,
    default_n_last_blocks,
    extract_features,
    feature_fn,
)
from container_ssl.models import create_backbone

OFFICIAL_KEYS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "container_light_official_keys.json"


class TensorImages(Dataset):
    """An ImageFolder look-alike over random 32-px tensors (no decoding: fast)."""

    def __init__(self, n: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.targets = [i % 3 for i in range(n)]
        self.classes = ["a", "b", "c"]
        self.samples = [(f"/x/{self.classes[t]}/{i}.png", t) for i, t in enumerate(self.targets)]
        self.transform = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, write_trainer_checkpoint) -> Path:
    return write_trainer_checkpoint(tmp_path_factory.mktemp("ck"), *MODEL, "seed=1", epoch=2)


def test_load_pretrain_checkpoint(ckpt):
    model, info = load_backbone(ckpt)
    saved = load_checkpoint(ckpt)["teacher"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[f"backbone.{k}"])
    assert info["format"] == "pretrain" and info["model"] == "container_light_nano"
    assert info["img_size"] == 32 and info["patch_size"] == 1 and info["epoch"] == 2
    assert len(info["sha256"]) == 64 and info["checkpoint_key"] == "teacher"
    assert not model.training
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    _, student_info = load_backbone(ckpt, "student")
    assert student_info["checkpoint_key"] == "student"


def test_pretrain_checkpoint_errors(ckpt, tmp_path):
    raw = load_checkpoint(ckpt)
    with pytest.raises(UserError, match="no 'ema' weights .*teacher, student"):
        load_backbone(ckpt, "ema")
    broken = dict(raw)
    broken["teacher"] = {k: v for k, v in raw["teacher"].items() if k != "backbone.norm.weight"}
    broken["teacher"]["backbone.extra.weight"] = torch.zeros(1)
    save_atomic(broken, tmp_path / "broken.pt")
    with pytest.raises(UserError, match=r"1 missing keys \(norm.weight\); 1 unexpected keys \(extra.weight\)"):
        load_backbone(tmp_path / "broken.pt")
    with pytest.raises(UserError, match="does not fit model 'container_light_nano'.*shape mismatches"):
        load_backbone(ckpt, patch_size=2)  # another stem: different shapes
    with pytest.raises(UserError, match="not found"):
        load_backbone(tmp_path / "absent.pt")


def test_plain_timm_state_dict(tmp_path):
    torch.manual_seed(0)
    net = create_backbone("container_light_nano", img_size=32, patch_size=1, num_classes=10)
    save_atomic({"model": net.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="pass --model"):
        load_backbone(tmp_path / "plain.pt")
    model, info = load_backbone(tmp_path / "plain.pt", model="container_light_nano", img_size=32, patch_size=1)
    assert info["format"] == "timm"  # the 10-class head was dropped, everything else loaded strictly
    assert torch.equal(model.state_dict()["norm.weight"], net.state_dict()["norm.weight"])


@pytest.mark.skipif(not OFFICIAL_KEYS.is_file(), reason="released Container-Light key list not found")
def test_released_container_light_keys(tmp_path):
    shapes = json.loads(OFFICIAL_KEYS.read_text())["state_dict"]
    state = {k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.randn(s) * 0.02)
             for k, s in shapes.items()}
    save_atomic({"model": state}, tmp_path / "released.pt")
    model, info = load_backbone(tmp_path / "released.pt")
    assert info["format"] == "released" and info["model"] == "container_light_small"
    assert model.num_features == 512


def test_deit_pos_embed_resampled(tmp_path):
    net = create_backbone("deit_tiny", img_size=32, patch_size=8)
    save_atomic({"state_dict": net.state_dict()}, tmp_path / "deit.pt")
    model, _ = load_backbone(tmp_path / "deit.pt", model="deit_tiny", img_size=64, patch_size=8)
    assert model.pos_embed.shape[1] == 1 + 64
    feats = feature_fn(model, 4, avgpool=True)(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 5 * 192) and default_n_last_blocks(model) == 4
    last = feature_fn(model, 1)(torch.randn(2, 3, 64, 64))
    assert last.shape == (2, 192)


def test_feature_kinds_container(ckpt):
    model, _ = load_backbone(ckpt)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(feature_fn(model, 0)(x), model(x))
        two = feature_fn(model, default_n_last_blocks(model))(x)
        assert two.shape == (3, 64 + 128)
        assert torch.allclose(two[:, 64:], model(x), atol=1e-5)  # stage 4 pooled after the final norm = pooled output
    with pytest.raises(UserError, match="ViT"):
        feature_fn(model, 2, avgpool=True)


def test_extract_and_cache(ckpt, tmp_path, monkeypatch):
    model, info = load_backbone(ckpt)
    ds = TensorImages()
    feats, labels = extract_features(model, ds, batch_size=5, num_workers=0)
    assert feats.dtype == torch.float32 and feats.shape == (12, 128) and labels.tolist() == ds.targets
    calls = []
    real = features_mod.extract_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("n_last_blocks"))
        return real(*args, **kwargs)

    monkeypatch.setattr(features_mod, "extract_features", counting)
    a = cached_features(model, info, ds, tmp_path, batch_size=4, num_workers=0)
    b = cached_features(model, info, ds, tmp_path, batch_size=4, num_workers=0)
    c = cached_features(model, info, ds, tmp_path, batch_size=4, num_workers=0, n_last_blocks=2)
    assert calls == [0, 2] and torch.equal(a[0], b[0]) and torch.allclose(a[0], feats, atol=1e-5)
    assert c[0].shape == (12, 192)
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert len(names) == 2 and all(n.startswith(info["sha256"][:12] + "_teacher_") for n in names)
    assert {n.rsplit("_", 1)[1] for n in names} == {"pooled.pt", "last2.pt"}
    (tmp_path / names[0]).write_bytes(b"truncated")  # a damaged cache file is recomputed, not trusted
    cached_features(model, info, ds, tmp_path, batch_size=4, num_workers=0, n_last_blocks=2)
    cached_features(model, info, ds, tmp_path, batch_size=4, num_workers=0)
    assert len(calls) == 3
