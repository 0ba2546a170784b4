"""Helpers for the evaluator tests: a tiny pretraining-format checkpoint and the files of a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from container_ssl.checkpoint import save_atomic
from container_ssl.models import create_backbone

MODEL = {"name": "container_light_nano", "img_size": 32, "patch_size": 1, "drop_path_rate": 0.0, "out_dim": 16}
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]


def write_pretrain_checkpoint(path: Path, data_path: str, seed: int = 0, model: dict | None = None) -> Path:
    """A checkpoint in the pretraining format: config + teacher/student MultiCropWrapper state dicts."""
    model = dict(model or MODEL)
    torch.manual_seed(seed)
    backbone = create_backbone(model["name"], img_size=model["img_size"], patch_size=model["patch_size"])
    head = {"head.last_layer.weight": torch.randn(model["out_dim"], 8), "head.mlp.0.bias": torch.zeros(8)}
    wrapper = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, **head}
    config = {
        "model": model,
        "aug": {"global_size": model["img_size"], "mean": MEAN, "std": STD},
        "data": {"path": data_path, "train_split": "train", "val_split": "val", "cache_dir": "", "num_workers": 0},
    }
    save_atomic({"config": config, "teacher": wrapper, "student": {k: v.clone() for k, v in wrapper.items()},
                 "epoch": 2, "iteration": 30}, path)
    return path


def write_run_files(run_dir: Path, epochs: int = 3, loss0: float = 9.0) -> None:
    """summary.json and metrics.jsonl as the pretraining loop writes them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "model": "container_light_nano", "params": 305937, "gmacs": 0.0123, "img_size": 32, "epochs": epochs,
        "images_per_s": 812.5, "wall_time_s": 3600.0}))
    lines = []
    for it in range(40):
        lines.append({"type": "train", "epoch": it // 10, "iteration": it, "loss": loss0 - 0.1 * it, "lr": 1e-4})
    for epoch in range(epochs):
        lines.append({"type": "epoch", "epoch": epoch, "images_per_s": 800.0})
        lines.append({"type": "knn", "epoch": epoch, "iteration": 10 * epoch + 9, "k": 20,
                      "top1": 20.0 + 5 * epoch, "top5": 60.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
