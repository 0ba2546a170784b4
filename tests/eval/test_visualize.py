"""``container-ssl visualize``: attention maps, alpha and kernel spread against independent computations."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from PIL import Image

from container_ssl.checkpoint import load_checkpoint, save_atomic
from container_ssl.cli import main
from container_ssl.eval.visualize import dino_mask, load_image, query_index
from container_ssl.models import create_backbone

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def _checkpoint(write, tmp_path, name: str, patch_size: int) -> tuple:
    """A checkpoint written by the trainer, its teacher's first mixed block set to m = 0.8; and that
    teacher's backbone, rebuilt by hand from the file's ``backbone.`` entries."""
    path = write(tmp_path / "run", f"model.name={name}", "model.img_size=32", f"model.patch_size={patch_size}",
                 f"aug.mean={MEAN}", f"aug.std={STD}")
    blob = load_checkpoint(path)
    logit = "backbone.stages.3.blocks.0.mixer.mix_logit"
    if logit in blob["teacher"]:
        blob["teacher"][logit].fill_(0.8)
    save_atomic(blob, path)
    net = create_backbone(name, img_size=32, patch_size=patch_size).eval()
    net.load_state_dict({k[len("backbone."):]: v for k, v in blob["teacher"].items() if k.startswith("backbone.")})
    return path, net


def _images(tmp_path, n: int = 2) -> list[str]:
    g = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(g.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_dino_mask_keeps_the_top_mass_by_hand():
    attn = torch.tensor([[0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]])
    # row 0 sorted up: 0.1 0.1 0.3 0.5, cumulative 0.1 0.2 0.5 1.0 > 0.4 -> keep 0.3 and 0.5
    assert dino_mask(attn, 0.6)[0].tolist() == [False, True, False, True]
    # uniform row: cumulative 0.25 0.5 0.75 1.0 -> the three tokens from 0.5 on (as in DINO, the token that
    # crosses 1 - threshold is kept)
    assert int(dino_mask(attn, 0.6)[1].sum()) == 3


def test_query_index():
    assert query_index((0.5, 0.5), (4, 4)) == 2 * 4 + 2
    assert query_index((0.0, 1.0), (2, 3)) == 2
    assert query_index((1.0, 0.0), (2, 3)) == 3


def test_container_maps_alpha_entropy_and_spread(tmp_path, write_trainer_checkpoint):
    ckpt, net = _checkpoint(write_trainer_checkpoint, tmp_path, "container_light_nano", 2)
    images = _images(tmp_path)
    out = tmp_path / "vis"
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", *images, "--out", str(out), "--img-size", "64",
                 "--query", "0.5,0.5", "0.1,0.9", "--device", "cpu"]) == 0
    for name in ("img0.png", "img1.png", "kernels.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    report = json.loads((out / "affinity.json").read_text())
    assert list(report["alpha"]) == ["stages.3.blocks.0.mixer"]
    assert math.isclose(report["alpha"]["stages.3.blocks.0.mixer"], 1 / (1 + math.exp(-0.8)), rel_tol=1e-6)
    assert report["block"] == "stages.3.blocks.0.mixer" and report["tokens"] == 16  # 64 px / stride 16 = 4x4

    # entropy: attention rebuilt with numpy from the mixer's input and its qkv weights
    mixer = net.stages[3].blocks[0].mixer
    seen = {}
    handle = mixer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    pixels = load_image(images[1], 64)
    x = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        net(x[None])
    handle.remove()
    tokens = seen["x"][0].flatten(1).T.numpy().astype(np.float64)  # (N, C)
    weight, bias = mixer.qkv.weight.detach()[:, :, 0, 0].double().numpy(), mixer.qkv.bias.detach().double().numpy()
    qkv = tokens @ weight.T + bias
    c, heads = mixer.dim, mixer.num_heads
    d = c // heads
    want = []
    for h in range(heads):
        logits = qkv[:, h * d:(h + 1) * d] @ qkv[:, c + h * d:c + (h + 1) * d].T / math.sqrt(d)
        a = np.exp(logits - logits.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        want.append(float(-(a * np.log(a)).sum(1).mean()))
    np.testing.assert_allclose(report["attention_entropy"]["per_image"]["img1.png"], want, rtol=1e-4)

    # spread: |w|-weighted distance from the centre, by numpy, over every static kernel of stage 1
    w = np.abs(net.stages[0].blocks[0].mixer.static_conv.weight.detach().double().numpy()[:, 0])
    r = np.arange(5) - 2.0
    dist = np.sqrt(r[:, None] ** 2 + r[None, :] ** 2)
    assert math.isclose(report["kernel_spread"]["stage0"], float(((w * dist).sum((1, 2)) / w.sum((1, 2))).mean()),
                        rel_tol=1e-9)


def test_deit_cls_attention_with_dino_mask(tmp_path, write_trainer_checkpoint):
    ckpt, _ = _checkpoint(write_trainer_checkpoint, tmp_path, "deit_tiny", 8)
    out = tmp_path / "vis"
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", *_images(tmp_path, 1), "--out", str(out),
                 "--threshold", "0.6", "--device", "cpu"]) == 0
    report = json.loads((out / "affinity.json").read_text())
    assert report["alpha"] == {} and report["kernel_spread"] == {} and report["tokens"] == 17
    assert len(report["attention_entropy"]["per_head"]) == 3 and report["files"] == ["img0.png"]


def test_unreadable_image_is_one_line(tmp_path, capsys, write_trainer_checkpoint):
    ckpt, _ = _checkpoint(write_trainer_checkpoint, tmp_path, "container_light_nano", 2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(bad), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.jpg" in err
