"""Label-free monitors in pretraining: alpha, RankMe and the collapse alarm as logged per epoch."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from container_ssl.checkpoint import load_checkpoint
from container_ssl.data import build_dataset
from container_ssl.eval.backbone import load_backbone
from container_ssl.eval.transforms import eval_transform
from container_ssl.ssl import monitor
from container_ssl.ssl.trainer import pretrain
from tests.tiny import tiny_cfg


def test_monitor_logs_alpha_rank_and_warns_on_collapse(cifar10_small, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    built = []  # the fixed batch is listed once, at its first use, then reused every epoch

    def counting_build(*args, **kwargs):
        built.append((args, kwargs))
        return build_dataset(*args, **kwargs)

    monkeypatch.setattr(monitor, "build_dataset", counting_build)
    # collapse_std=2 is above any real value (1 = isotropic), so the alarm must fire every epoch
    cfg = tiny_cfg(cifar10_small, out, "data.subset=32", "optim.epochs=2", "monitor.rank_images=40",
                   "monitor.collapse_std=2.0")
    pretrain(cfg)
    printed = capsys.readouterr().out
    assert printed.count("warning: representation collapsing") == 2
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    monitors = [r for r in records if r["type"] == "monitor"]
    assert [r["epoch"] for r in monitors] == [0, 1]
    assert len(built) == 1 and built[0][1]["limit"] == 40, built
    last = monitors[-1]

    # alpha is sigmoid of the teacher's mixing logit as saved at the end of the run
    teacher = load_checkpoint(out / "checkpoint.pt")["teacher"]
    logit = float(teacher["backbone.stages.3.blocks.0.mixer.mix_logit"])
    assert list(last["alpha"]) == ["stages.3.blocks.0.mixer"]
    assert math.isclose(last["alpha"]["stages.3.blocks.0.mixer"], 1 / (1 + math.exp(-logit)), rel_tol=1e-6)

    # RankMe recomputed with numpy from the saved teacher on the same seeded 40 train images
    net, _ = load_backbone(out / "checkpoint.pt", "teacher")
    ds = build_dataset(str(cifar10_small), "train", transform=eval_transform(32, mean=list(cfg.aug.mean),
                                                                             std=list(cfg.aug.std)),
                       limit=40, seed=cfg.seed)
    with torch.no_grad():
        feats = net(torch.stack([ds[i][0] for i in range(len(ds))])).double().numpy()
    s = np.linalg.svd(feats, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert last["rank_images"] == 40 and last["embed_dim"] == feats.shape[1]
    assert math.isclose(last["rankme"], float(np.exp(-(p * np.log(p)).sum())), rel_tol=1e-4)
    z = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert math.isclose(last["embed_std"], float(z.std(0, ddof=1).mean() * np.sqrt(z.shape[1])), rel_tol=1e-4)
