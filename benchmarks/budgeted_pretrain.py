"""A pretraining run sized to a time budget: as many epochs as the budget allows, then the online kNN.

Why: a GPU window is short and its speed unknown ahead of time. A short probe (``--probe-steps`` steps of
the same config) measures images/s; the run then gets the number of epochs that fits the rest of the
budget, with the recipe's warm-ups (lr: 10 of 200 epochs, teacher temperature: 30 of 200) scaled to it,
and an online kNN at its end. The run itself is a plain ``container-ssl pretrain`` under a hard timeout.

    python benchmarks/budgeted_pretrain.py --config configs/pretrain/cifar10_container_light_tiny_gpu.yaml \\
        --budget-s 240 --work runs/gpu_check --json benchmarks/results/gpu/cifar10_pretrain.json data.path=...
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from container_ssl.config import load_config

KNN_RESERVE_S, START_RESERVE_S = 20.0, 25.0  # the final online kNN, and model/loader start-up of the run


def pretrain(config: str, overrides: list[str], timeout_s: float) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "container_ssl", "pretrain", "--config", config, "--no-resume", *overrides]
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    try:
        rc = subprocess.run(cmd, check=False, timeout=max(timeout_s, 1.0)).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    return rc, time.perf_counter() - t


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--budget-s", type=float, required=True, help="wall time for probe + run, in seconds")
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--max-epochs", type=int, default=0, help="cap (default: the config's epochs)")
    p.add_argument("--work", required=True, help="folder for the probe and the run (checkpoints: not committed)")
    p.add_argument("--json", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    start = time.perf_counter()
    work = Path(args.work)
    cfg = load_config(args.config, args.overrides)
    cap = args.max_epochs or cfg.optim.epochs

    probe_dir = work / "probe"
    rc, probe_s = pretrain(args.config, [*args.overrides, f"output_dir={probe_dir}", f"max_steps={args.probe_steps}",
                                         "monitor.knn_every=0", "checkpoint_every_epochs=0"],
                           0.6 * args.budget_s)
    summary = json.loads((probe_dir / "summary.json").read_text()) if (probe_dir / "summary.json").is_file() else {}
    ips = float(summary.get("images_per_s") or 0.0)
    result = {"config": args.config, "overrides": args.overrides, "budget_s": args.budget_s,
              "probe": {"steps": args.probe_steps, "seconds": probe_s, "images_per_s": ips, "rc": rc}}
    if rc != 0 or ips <= 0:
        result["error"] = f"the probe failed (exit {rc}); see its output above"
        return finish(result, args.json, 1)

    from container_ssl.data import build_dataset

    n_train = len(build_dataset(cfg.data.path, cfg.data.train_split, cache_dir=cfg.data.cache_dir,
                                limit=cfg.data.subset, seed=cfg.seed))
    left = args.budget_s - (time.perf_counter() - start) - KNN_RESERVE_S - START_RESERVE_S
    epochs = max(1, min(cap, math.floor(left * ips / n_train)))
    warmup = min(cfg.optim.warmup_epochs, max(0, round(epochs * cfg.optim.warmup_epochs / max(cfg.optim.epochs, 1))))
    t_warm = max(1, round(epochs * cfg.loss.warmup_teacher_temp_epochs / max(cfg.optim.epochs, 1)))
    run_dir = work / "run"
    run = [*args.overrides, f"output_dir={run_dir}", f"optim.epochs={epochs}", f"optim.warmup_epochs={warmup}",
           f"loss.warmup_teacher_temp_epochs={min(t_warm, epochs)}", f"monitor.knn_every={epochs}",
           "checkpoint_every_epochs=0"]
    print(f"probe: {ips:.0f} images/s over {n_train} training images -> {epochs} epoch(s) in "
          f"{left:.0f} s", flush=True)
    rc, run_s = pretrain(args.config, run, args.budget_s - (time.perf_counter() - start))
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    knn = [m for m in metrics if m.get("type") == "knn"]
    losses = [m["loss"] for m in metrics if m.get("type") == "train"]
    run_summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    result.update({"epochs": epochs, "train_images": n_train, "run_seconds": run_s, "rc": rc,
                   "images_per_s": run_summary.get("images_per_s"), "finished": run_summary.get("finished"),
                   "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                   "online_knn": knn[-1] if knn else None})
    if rc != 0 or not knn:
        result["error"] = f"the run stopped (exit {rc}) before its online kNN"
        return finish(result, args.json, 1)
    return finish(result, args.json, 0)


def finish(result: dict, path: str, rc: int) -> int:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    knn = result.get("online_knn") or {}
    print(f"pretraining: {result.get('epochs', 0)} epoch(s), {result.get('images_per_s') or 0:.0f} images/s, "
          f"online kNN top-1 {knn.get('top1', float('nan')):.2f}%" + (f"; {result['error']}" if "error" in result else ""))
    return rc


if __name__ == "__main__":
    sys.exit(main())
