"""``container-ssl export``: the files reload through plain timm and onnxruntime with the same features."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import timm
import torch

import container_ssl
from container_ssl.checkpoint import load_checkpoint, save_atomic
from container_ssl.cli import main
from container_ssl.errors import UserError
from container_ssl.export import export_backbone
from container_ssl.models import backbone_names, create_backbone

FAST = ["container_light_nano", "deit_tiny"]


def _backbone(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_backbone(name, img_size=32, patch_size=4 if name.startswith("deit") else 1).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics: a lost buffer must show in the features
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def _check_export(name: str, tmp_path) -> None:
    net = _backbone(name)
    out = tmp_path / name
    export_backbone(net, out, 32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), onnx=True)
    cfg = json.loads((out / "config.json").read_text())
    pre = cfg["pretrained_cfg"]
    assert cfg["num_features"] == net.num_features
    assert pre["input_size"] == [3, 32, 32] and pre["mean"] == [0.4, 0.5, 0.6] and pre["crop_pct"] == 1.0

    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = net(x)
        # exactly what a timm user writes
        plain = timm.create_model(cfg["architecture"], pretrained=True,
                                  pretrained_cfg_overlay={"file": str(out / "model.safetensors")},
                                  num_classes=0, **cfg["model_args"]).eval()
        torch.testing.assert_close(plain(x), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(container_ssl.load_pretrained(out)(x), want, rtol=0, atol=1e-5)

    import onnxruntime as ort
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})  # batch 5: not the traced batch of 2
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", FAST)
def test_export_reloads_through_timm_and_onnxruntime(name, tmp_path):
    _check_export(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in backbone_names() if n not in FAST])
def test_export_every_registered_model(name, tmp_path):
    _check_export(name, tmp_path)


def _pretrain_checkpoint(write, tmp_path, name: str = "container_light_nano"):
    """A pretraining checkpoint written by the trainer, its student moved off the teacher (so that exporting
    the wrong network shows) and its teacher's BatchNorm statistics made non-trivial (so that a lost buffer
    shows); and the teacher's backbone, rebuilt by hand from the file's entries."""
    path = write(tmp_path / "run", f"model.name={name}", "model.img_size=32", "model.patch_size=1",
                 "aug.mean=[0.49,0.48,0.45]", "aug.std=[0.25,0.24,0.26]")
    blob = load_checkpoint(path)
    for value in blob["student"].values():
        if value.is_floating_point():
            value.add_(0.5)
    g = torch.Generator().manual_seed(0)
    for key, value in blob["teacher"].items():  # non-trivial BatchNorm statistics, as in _backbone
        if key.endswith("running_mean"):
            value.copy_(torch.rand(value.shape, generator=g) - 0.5)
        elif key.endswith("running_var"):
            value.copy_(0.5 + 1.5 * torch.rand(value.shape, generator=g))
    save_atomic(blob, path)
    teacher = create_backbone(name, img_size=32, patch_size=1).eval()
    teacher.load_state_dict({k[len("backbone."):]: v for k, v in blob["teacher"].items() if k.startswith("backbone.")})
    return path, teacher


def test_cli_exports_the_teacher_of_a_run(tmp_path, capsys, write_trainer_checkpoint):
    ckpt, teacher = _pretrain_checkpoint(write_trainer_checkpoint, tmp_path)
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pretrained_cfg"]["mean"] == [0.49, 0.48, 0.45]
    assert cfg["model_args"]["stem_stride"] == 1 and "num_classes" not in cfg["model_args"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(container_ssl.load_pretrained(out)(x), teacher(x), rtol=0, atol=1e-5)


def test_missing_onnx_extra_is_one_line(tmp_path, capsys, monkeypatch, write_trainer_checkpoint):
    ckpt, _ = _pretrain_checkpoint(write_trainer_checkpoint, tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e"), "--onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'container-ssl[export]'" in err
    assert not (tmp_path / "e").exists()


def test_onnx_that_differs_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    from container_ssl import export

    monkeypatch.setattr(export, "check_onnx", lambda *a, **k: 3e-4)
    with pytest.raises(UserError, match="differs from PyTorch by 0.0003"):
        export_backbone(_backbone("container_light_nano"), tmp_path / "e", 32, onnx=True)
    assert list((tmp_path / "e").iterdir()) == []


def test_load_pretrained_names_the_missing_file(tmp_path):
    with pytest.raises(UserError, match="config.json not found"):
        container_ssl.load_pretrained(tmp_path)

