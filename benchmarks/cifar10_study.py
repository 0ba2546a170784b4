"""CIFAR-10 quality study: Container-Light vs DeiT under the same DINO recipe and budget.

For each backbone: DINO pretraining on cifar10/train, then on cifar10/val the weighted kNN (k = 10, 20,
100, 200), a linear probe on cached features, and a 10%-label finetune; the same kNN on the network at
random init is the floor the pretraining must clear. Everything goes through the ``container-ssl`` CLI,
exactly as a user would run it; each stage's wall time is recorded. Run folders (with checkpoints) go
under ``--runs``; the JSON results and the report (markdown + PNG) go under ``--out``.

    python benchmarks/cifar10_study.py --scale cpu     # quick: tiny models, <= 30 min pretraining each, 2 cores
    python benchmarks/cifar10_study.py --scale gpu     # full: 200 epochs each on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCALES = {
    "cpu": {"container_light_tiny": "configs/pretrain/cifar10_quick_cpu.yaml",
            "deit_tiny": "configs/pretrain/cifar10_quick_cpu_deit.yaml"},
    "gpu": {"container_light_tiny": "configs/pretrain/cifar10_container_light_tiny_gpu.yaml",
            "deit_tiny": "configs/pretrain/cifar10_deit_tiny_gpu.yaml"},
}
FINETUNE = {"cpu": ["--epochs", "3", "--warmup-epochs", "1", "--batch-size", "128", "--val-freq", "3"],
            "gpu": ["--epochs", "100", "--warmup-epochs", "5", "--batch-size", "256"]}


# CPU: the pooled feature (the kNN one, already cached) instead of DINO's last-blocks concatenation
LINEAR = {"cpu": ["--n-last-blocks", "0"], "gpu": []}


def cli(*args: str, log: Path) -> float:
    """Run one ``container-ssl`` command (no shell), tee its output to ``log``; returns the wall time."""
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ container-ssl {' '.join(args)}\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "container_ssl", *args], stdout=f, stderr=subprocess.STDOUT,
                              cwd=ROOT)
    if done.returncode:
        sys.exit(f"command failed (see {log}): container-ssl {' '.join(args)}")
    return time.perf_counter() - t


def random_init_checkpoint(cfg_path: str, data: str, folder: Path, overrides: Sequence[str] = ()) -> Path:
    """The run's teacher before any step (same seed, config, overrides and normalisation): the kNN floor."""
    from container_ssl.config import load_config
    from container_ssl.ssl.trainer import DinoTrainer

    cfg = load_config(ROOT / cfg_path, [*overrides, f"data.path={data}", f"output_dir={folder}", "data.num_workers=0"])
    DinoTrainer(cfg, auto_resume=False).save(0, 0)
    return folder / "checkpoint.pt"


def _portable(text: str) -> str:
    """Results are committed: paths inside the checkout's parent become relative ('..', '.')."""
    return text.replace(str(ROOT) + "/", "").replace(str(ROOT.parent), "..")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    default_data = ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"
    p.add_argument("--data", default=str(default_data) if default_data.is_file() else "cifar10")
    p.add_argument("--runs", default="runs/study")
    p.add_argument("--out", default="")
    p.add_argument("--models", nargs="+", default=list(SCALES["cpu"]))
    p.add_argument("--floor-for", nargs="*", default=None,
                   help="models whose random-init kNN is measured too (default: all)")
    p.add_argument("--skip-pretrain", action="store_true", help="evaluate existing run folders only")
    args = p.parse_args()
    out = Path(args.out or ROOT / f"benchmarks/results/cifar10_{args.scale}")
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs) / args.scale
    machine = (torch.cuda.get_device_name() if args.scale == "gpu" and torch.cuda.is_available()
               else f"{platform.machine()} CPU, {os.cpu_count()} cores")
    study_file = out / "study.json"
    study = json.loads(study_file.read_text()) if study_file.is_file() else {"runs": {}}
    study.update({"machine": machine, "data": args.data})
    study.setdefault("commands", []).append(f"python {' '.join(sys.argv)}")
    for model in args.models:
        cfg = SCALES[args.scale][model]
        run = runs / model
        if not args.skip_pretrain and run.exists():
            shutil.rmtree(run)  # a fresh run: an old checkpoint there would be resumed, not retrained
        run.mkdir(parents=True, exist_ok=True)
        log = run / "study.log"
        times = {}
        if not args.skip_pretrain:
            times["pretrain_s"] = cli("pretrain", "--config", cfg, f"data.path={args.data}", f"output_dir={run}",
                                      log=log)
        ckpt = str(run / "checkpoint.pt")
        times["knn_s"] = cli("knn", "--checkpoint", ckpt, log=log)
        times["linear_s"] = cli("linear", "--checkpoint", ckpt, "--cached-features", "--lrs", "0.01", "0.03", "0.1",
                                "0.3", "1.0", *LINEAR[args.scale], log=log)
        times["finetune_s"] = cli("finetune", "--checkpoint", ckpt, "--label-fraction", "0.1",
                                  *FINETUNE[args.scale], log=log)
        if args.floor_for is None or model in args.floor_for:
            floor = random_init_checkpoint(cfg, args.data, run / "random_init")
            cli("knn", "--checkpoint", str(floor), "--output-dir", str(run / "eval_random"), log=log)
        result = {"config": cfg, "times": times}
        for name in ("summary.json", "eval/knn.json", "eval/linear.json", "eval/finetune_0.1.json",
                     "eval_random/knn.json"):
            src = run / name
            if src.is_file():
                result[name] = json.loads(src.read_text())
                dst = out / model / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(_portable(src.read_text()))
        shutil.copy(run / "metrics.jsonl", out / model / "metrics.jsonl")
        (out / model / "config.yaml").write_text(_portable((run / "config.yaml").read_text()))
        study["runs"][model] = result
        knn20 = next(r["top1"] for r in result["eval/knn.json"]["results"] if r["k"] == 20)
        rand20 = next((r["top1"] for r in result.get("eval_random/knn.json", {}).get("results", []) if r["k"] == 20),
                      float("nan"))
        print(f"{model}: pretrain {times.get('pretrain_s', 0) / 60:.1f} min; kNN@20 {knn20:.2f} "
              f"(random init {rand20:.2f}); linear {result['eval/linear.json']['top1']:.2f}; "
              f"finetune 10% {result['eval/finetune_0.1.json']['top1']:.2f}", flush=True)
    study_file.write_text(_portable(json.dumps(study, indent=2)))
    rel = Path(os.path.relpath(out, ROOT))  # the report names its sources: keep them relative to the repo
    cli("report", *[str(rel / m) for m in study["runs"]], "--out", str(rel / "report"), log=out / "report.log")
    print((out / "report" / "report.md").read_text())


if __name__ == "__main__":
    main()
