"""The knn, linear, finetune and report commands on a tiny pretraining checkpoint over real CIFAR-10 images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from container_ssl.checkpoint import load_checkpoint
from container_ssl.cli import main

FAST = ["--num-workers", "0", "--batch-size", "100"]


@pytest.fixture(scope="module")
def evaluated(pretrain_run: Path) -> Path:
    """Run every evaluator once on the run folder (default output dir: <run>/eval)."""
    ckpt = str(pretrain_run / "checkpoint.pt")
    assert main(["knn", "--checkpoint", ckpt, "--k", "5", "20", "500", *FAST]) == 0
    assert main(["linear", "--checkpoint", ckpt, "--cached-features", "--lrs", "0.01", "0.1", "1.0",
                 "--epochs", "30", "--num-workers", "0", "--batch-size", "64"]) == 0
    assert main(["finetune", "--checkpoint", ckpt, "--label-fraction", "0.1", "--epochs", "2", "--warmup-epochs", "1",
                 "--num-workers", "0", "--batch-size", "16"]) == 0
    return pretrain_run / "eval"


def test_knn_outputs(evaluated, pretrain_run, capsys):
    report = json.loads((evaluated / "knn.json").read_text())
    assert report["checkpoint_key"] == "teacher" and report["model"] == "container_light_nano"
    assert report["train"]["images"] == 300 and report["val"]["images"] == 100 and report["num_classes"] == 10
    assert report["temperature"] == 0.07 and report["k"] == [5, 20, 500] and len(report["checkpoint_sha256"]) == 64
    assert [r["k_used"] for r in report["results"]] == [5, 20, 300]
    # percentages of the 100 val images: whole numbers, top-5 at least top-1
    assert all(r["top1"] <= r["top5"] and all(abs(r[m] - round(r[m])) < 1e-6 for m in ("top1", "top5"))
               for r in report["results"]), report["results"]
    assert report["results"][1]["top1"] > 10.0  # random-init features already beat chance on real images
    # the faiss back-end, from the cached features, gives the same figures and prints the table
    out_dir = evaluated.parent / "eval_faiss"
    assert main(["knn", "--checkpoint", str(pretrain_run / "checkpoint.pt"), "--k", "5", "20", "500",
                 "--backend", "faiss", "--feature-cache", str(evaluated / "feature_cache"),
                 "--output-dir", str(out_dir), *FAST]) == 0
    table = capsys.readouterr().out
    assert "k     top1     top5" in table and "500(300)" in table
    faiss_report = json.loads((out_dir / "knn.json").read_text())
    assert faiss_report["backend"] == "faiss" and faiss_report["results"] == report["results"]


def test_linear_outputs(evaluated):
    report = json.loads((evaluated / "linear.json").read_text())
    assert report["feature"] == "last2" and report["feature_dim"] == 64 + 128 and report["mode"] == "cached-features"
    assert report["top1"] >= 20.0, report  # real CIFAR features, 10 classes: chance is 10 %
    assert report["best_base_lr"] in (0.01, 0.1, 1.0) and len(report["per_lr"]) == 3
    # default protocol: chosen on 10 % of train held out (3 of the 30 images per class), val evaluated once
    assert report["selection"] == "holdout" and report["val_evaluations"] == 1
    assert report["holdout"] == {"fraction": 0.1, "seed": 0, "images": 30, "fit_images": 270}
    lines = [json.loads(x) for x in (evaluated / "linear_log.jsonl").read_text().splitlines()]
    select = [x for x in lines if x["phase"] == "select"]
    assert len(select) == 30 * 3 and {x["base_lr"] for x in select} == {0.01, 0.1, 1.0}
    assert all("val_top1" not in x for x in select)
    assert [x["phase"] for x in lines[len(select):]] == ["retrain"] * (report["best_epoch"] + 1) + ["val"]
    best = load_checkpoint(evaluated / "linear_best.pt")
    assert tuple(best["head"]["weight"].shape) == (10, 192) and best["top1"] == report["top1"]
    assert len(list((evaluated / "feature_cache").glob("*_teacher_*_last2.pt"))) == 2


def test_linear_augmented_mode(evaluated, pretrain_run, tmp_path):
    assert main(["linear", "--checkpoint", str(pretrain_run / "checkpoint.pt"), "--epochs", "1",
                 "--n-last-blocks", "0", "--output-dir", str(tmp_path), *FAST]) == 0
    report = json.loads((tmp_path / "linear.json").read_text())
    assert report["mode"] == "augmented" and report["feature"] == "pooled" and report["train_images"] == 300
    assert (tmp_path / "linear_best.pt").is_file()
    assert [json.loads(x)["phase"] for x in (tmp_path / "linear_log.jsonl").read_text().splitlines()] == [
        "select", "retrain", "val"]


def test_finetune_outputs(evaluated):
    report = json.loads((evaluated / "finetune_0.1.json").read_text())
    assert report["label_fraction"] == 0.1 and report["subset_images"] == 30 and report["val_images"] == 100
    assert report["init"] == "ssl" and len(report["history"]) == 2
    assert report["top1"] == max(h["val_top1"] for h in report["history"])  # the best of the logged epochs
    assert report["config"]["mixup"] == 0.8 and report["config"]["aa"] == "rand-m9-mstd0.5-inc1-mmax9"
    subset = (evaluated / "subset_0.1.txt").read_text().splitlines()
    assert len(subset) == 30 and len({line.split("/")[0] for line in subset}) == 10
    best = load_checkpoint(evaluated / "finetune_0.1_best.pt")
    assert best["num_classes"] == 10 and best["model"]["head.weight"].shape[0] == 10


def test_finetune_scratch_with_subset_file(evaluated, pretrain_run, tmp_path):
    data = json.loads((evaluated / "knn.json").read_text())["data"]["path"]
    assert main(["finetune", "--init", "scratch", "--model", "container_light_nano", "--patch-size", "1",
                 "--img-size", "32", "--data", data, "--subset-file", str(evaluated / "subset_0.1.txt"),
                 "--no-mixup", "--aa", "none", "--layer-decay", "0.75", "--epochs", "1", "--warmup-epochs", "0",
                 "--output-dir", str(tmp_path), *FAST]) == 0
    report = json.loads((tmp_path / "finetune_subset_0.1.json").read_text())
    assert report["init"] == "scratch" and report["subset_images"] == 30 and report["checkpoint_sha256"] is None
    assert report["label_fraction"] == pytest.approx(0.1)


def test_bad_inputs_are_one_line_errors(pretrain_run, cifar10_small, tmp_path, capsys):
    ckpt = str(pretrain_run / "checkpoint.pt")
    # val lists another class than train
    bad = tmp_path / "bad"
    for split, cls in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "horse")):
        src = next((cifar10_small / "train" / ("cat" if cls == "cat" else "dog")).iterdir())
        (bad / split / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, bad / split / cls / src.name)
    assert main(["knn", "--checkpoint", ckpt, "--data", str(bad), "--output-dir", str(tmp_path), *FAST]) == 2
    assert main(["finetune", "--init", "scratch", "--data", str(bad), "--output-dir", str(tmp_path)]) == 2
    assert main(["knn", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert main(["finetune", "--checkpoint", ckpt, "--label-fraction", "2", "--output-dir", str(tmp_path),
                 *FAST]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    assert "only in val: horse" in errors[0] and "--model" in errors[1]
    assert "checkpoint not found" in errors[2] and "--label-fraction" in errors[3]


def test_report_on_evaluated_run(evaluated, pretrain_run, tmp_path):
    other = tmp_path / "other_run"
    other.mkdir()
    out = tmp_path / "report"
    assert main(["report", str(pretrain_run), str(other), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    knn = json.loads((evaluated / "knn.json").read_text())["results"]
    linear = json.loads((evaluated / "linear.json").read_text())["top1"]
    assert f"| kNN top-1, k=20 | {knn[1]['top1']:.2f} | – |" in text
    assert f"| linear top-1 | {linear:.2f} (held-out) | – |" in text
    assert "| finetune top-1, 10% labels |" in text
    assert all((out / name).stat().st_size > 1000 for name in ("knn_by_k.png", "online_knn.png", "train_loss.png"))
