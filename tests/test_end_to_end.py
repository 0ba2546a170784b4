"""The whole pipeline through the CLI on real CIFAR-10 images: pretrain, knn, linear, finetune, report."""

from __future__ import annotations

import json

import pytest

from container_ssl.checkpoint import load_checkpoint
from container_ssl.cli import main
from tests.tiny import TINY

FAST = ["--num-workers", "0", "--batch-size", "100"]


@pytest.mark.slow  # two pretrainings, then every evaluator and the report on each
def test_pretrain_then_every_evaluator_then_report(cifar10_small, tmp_path):
    runs = []
    for name, model in (("container", ["model.name=container_light_nano", "model.patch_size=2"]),
                        ("deit", ["model.name=deit_tiny", "model.patch_size=8"])):
        run = tmp_path / name
        assert main(["pretrain", *TINY, *model, f"data.path={cifar10_small}", f"output_dir={run}",
                     "data.subset=64", "optim.epochs=1", "monitor.knn_every=1"]) == 0
        ckpt = str(run / "checkpoint.pt")
        assert main(["knn", "--checkpoint", ckpt, "--k", "10", "20", *FAST]) == 0
        assert main(["linear", "--checkpoint", ckpt, "--cached-features", "--epochs", "1", *FAST]) == 0
        assert main(["finetune", "--checkpoint", ckpt, "--label-fraction", "0.1", "--epochs", "1",
                     "--warmup-epochs", "0", "--num-workers", "0", "--batch-size", "16"]) == 0
        runs.append(run)

        summary = json.loads((run / "summary.json").read_text())
        assert summary["finished"] and summary["model"] == model[0].split("=")[1]
        assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 4
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["type"] for m in metrics if m["type"] == "knn"] == ["knn"]
        knn = json.loads((run / "eval" / "knn.json").read_text())
        assert [r["k"] for r in knn["results"]] == [10, 20] and knn["val"]["images"] == 100
        # the reported top-1 is the one val evaluation the probe's log recorded
        linear = json.loads((run / "eval" / "linear.json").read_text())
        log = [json.loads(x) for x in (run / "eval" / "linear_log.jsonl").read_text().splitlines()]
        assert [x["val_top1"] for x in log if x["phase"] == "val"] == [linear["top1"]]
        finetune = json.loads((run / "eval" / "finetune_0.1.json").read_text())
        assert finetune["subset_images"] == 30 and finetune["val_images"] == 100

    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "container_light_nano" in text and "deit_tiny" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p).stat().st_size > 1000 for p in pngs)
