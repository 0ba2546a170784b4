"""Helpers for the evaluator tests: the evaluated model and the files of a run folder."""

from __future__ import annotations

import json
from pathlib import Path

# the evaluated network: the tiny run's container_light_nano at 32 px with stem stride 1
MODEL = ("model.name=container_light_nano", "model.img_size=32", "model.patch_size=1")


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
