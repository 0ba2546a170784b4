"""Affinity study: every CONTAINER affinity family under one DINO recipe at equal wall time, and a peer.

The paper's thesis is that convolution, attention and MLP-Mixer are one operator with different affinity
matrices. This study trains each ``_tiny`` family of the zoo (container_light: conv/conv/conv/mix,
container: mix, container_attn: attention, container_mlp: static MLP, container_pam: attention + MLP) and
DeiT-tiny with the shipped quick CIFAR-10 recipe for the same minutes of training each, then scores each on
cifar10/val: kNN (k = 10, 20, 100, 200; bank = train), a linear probe on cached features, a 10%-label
finetune, and the kNN of the same network at random init (the floor). It records GMACs, images/s, the
epochs reached and the alpha = sigmoid(m) every mixed block ended with.

The peer: lightly's DINO as its CIFAR-10 benchmark sets it up (see ``lightly_peer.py``) and our shipped
quick config (``cifar10_quick_cpu.yaml``), each for ``--peer-minutes`` of training on this machine, both
scored by our kNN on the same val split; printed as ours - theirs in kNN points and the images/s ratio.

Equal wall time: a short calibration measures each run's images/s, :func:`fit_schedule` picks the epochs
(at least two; a seeded subset when two full epochs do not fit) so the cosine schedules end inside the
budget, and ``max_minutes`` stops the run at the first step past it in any case (``budget_reached``).
The mlp/pam families hold fixed-size (N x N) affinities, so their DINO local crops are made at the global
size (32 px) instead of 16 px: same crops and views, more compute per view, paid out of the same budget.

    python benchmarks/affinity_study.py                  # full CPU study: 15 min each + 2 x 30 min peer (~2.5 h)
    python benchmarks/affinity_study.py --minutes 10 --peer-minutes 10   # ~1.5 h: the peer reuses our 10-min run
    python benchmarks/affinity_study.py --jobs 2 --no-peer   # ~1.3 h on 2 cores: two variants at once, one core each
    python benchmarks/affinity_study.py --jobs 2 --no-peer --reuse   # train only what is not done yet
    python benchmarks/affinity_study.py --models container_attn_tiny --no-peer
    python benchmarks/affinity_study.py --smoke          # whole pipeline in seconds per variant, temp folder
    python benchmarks/affinity_study.py --scale gpu      # 200 epochs each, configs/pretrain/cifar10_*_gpu.yaml

``--jobs N`` trains N variants at once, each in a worker pinned to a CPU core of its own with one torch thread,
so each variant's budget is one core (the two runs still share the memory bus; the report says so).

Results (JSON, report.md and PNGs of kNN against GMACs and against training time) go to
``benchmarks/results/affinity_study/`` (``--out``); run folders with checkpoints go under ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_study as base  # the two-model study's evaluation flags and helpers

ROOT = base.ROOT
QUICK, QUICK_DEIT = base.SCALES["cpu"]["container_light_tiny"], base.SCALES["cpu"]["deit_tiny"]
# the zoo's CPU families plus DeiT-tiny; (CPU config, extra overrides)
FIXED_SIZE_CROPS = ["aug.local_size=32"]  # N x N affinities: local crops at the global size
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "container_light_tiny": (QUICK, []),
    "container_tiny": (QUICK, ["model.name=container_tiny"]),
    "container_attn_tiny": (QUICK, ["model.name=container_attn_tiny"]),
    "container_mlp_tiny": (QUICK, ["model.name=container_mlp_tiny", *FIXED_SIZE_CROPS]),
    "container_pam_tiny": (QUICK, ["model.name=container_pam_tiny", *FIXED_SIZE_CROPS]),
    "deit_tiny": (QUICK_DEIT, []),
}
GPU_CONFIG = "configs/pretrain/cifar10_{name}_gpu.yaml"
RESULT_FILES = ("summary.json", "eval/knn.json", "eval/linear.json", "eval/finetune_0.1.json", "eval_random/knn.json")
SMOKE = {"train": 96, "val": 48, "steps": 2}
CALIBRATION_STEPS = {"cpu": 12, "smoke": 2}
EVAL = {  # extra flags of knn / linear / finetune per mode
    "cpu": {"knn": [], "linear": ["--lrs", "0.01", "0.03", "0.1", "0.3", "1.0", *base.LINEAR["cpu"]],
            "finetune": base.FINETUNE["cpu"]},
    "gpu": {"knn": [], "linear": ["--lrs", "0.01", "0.03", "0.1", "0.3", "1.0", *base.LINEAR["gpu"]],
            "finetune": base.FINETUNE["gpu"]},
    "smoke": {"knn": ["--num-workers", "0", "--k", "10", "20"],
              "linear": ["--num-workers", "0", "--epochs", "2", "--n-last-blocks", "0"],
              "finetune": ["--num-workers", "0", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16",
                           "--no-mixup", "--aa", "none"]},
}


def fit_schedule(images_per_s: float, minutes: float, train_images: int, batch_size: int = 1,
                 min_epochs: int = 2, margin: float = 0.9) -> tuple[int, int]:
    """(epochs, subset) so that a run at ``images_per_s`` ends its schedule within ``minutes``.

    Why: a budget that cuts a run mid-schedule leaves its lr and temperatures undecayed, which would
    penalise the slower models twice. ``margin`` keeps the planned end inside the budget despite the
    calibration's noise. At least ``min_epochs`` (the quick recipe warms up for one); when that many full
    epochs do not fit, the run uses a seeded subset of the train split (``subset`` > 0, else 0 = all),
    never smaller than one ``batch_size``.
    """
    if images_per_s <= 0 or minutes <= 0 or train_images <= 0:
        raise ValueError(f"need positive throughput, minutes and images, got {images_per_s}, {minutes}, "
                         f"{train_images}")
    images = images_per_s * minutes * 60.0 * margin
    epochs = int(images // train_images)
    if epochs >= min_epochs:
        return epochs, 0
    return min_epochs, max(min(batch_size, train_images), min(train_images, int(images // min_epochs)))


def run_cli(*args: str, log: Path) -> float:
    """One ``container-ssl`` command, in this process (no start-up per command), output appended to ``log``."""
    from container_ssl.cli import main

    t = time.perf_counter()
    with open(log, "a") as f, redirect_stdout(f), redirect_stderr(f):
        print(f"$ container-ssl {' '.join(args)}", flush=True)
        rc = main(list(args))
    if rc:
        sys.exit(f"command failed (exit {rc}, see {log}): container-ssl {' '.join(args)}")
    return time.perf_counter() - t


def mix_alphas(checkpoint: Path) -> dict[str, list[float]]:
    """alpha = sigmoid(mix logit) of every mixed block of the teacher, by stage ('stage1': [...])."""
    from container_ssl.checkpoint import load_checkpoint

    alphas: dict[str, list[float]] = {}
    for key, value in sorted(load_checkpoint(checkpoint)["teacher"].items()):
        if key.endswith("mixer.mix_logit"):
            stage = int(key.split("stages.")[1].split(".")[0]) + 1
            alphas.setdefault(f"stage{stage}", []).append(round(float(torch.sigmoid(value.float())), 4))
    return alphas


def _recorded(overrides: list[str]) -> list[str]:
    """The overrides a run is recorded with: all but this machine's data path."""
    return [o for o in overrides if not o.startswith("data.path")]


def top1(knn: dict, k: int = 20) -> float:
    return next((r["top1"] for r in knn.get("results", []) if r["k"] == k), float("nan"))


def images_in(data: str, split: str = "train") -> int:
    from container_ssl.data import build_dataset

    return len(build_dataset(data, split).targets)


def smoke_data(data: str, folder: Path) -> str:
    """A tiny ImageFolder (seeded subsets of train and val, files copied as they are) for ``--smoke``."""
    from container_ssl.data import build_dataset

    for split in ("train", "val"):
        ds = build_dataset(data, split, limit=SMOKE[split], seed=0)
        for path, label in ds.samples:
            dst = folder / split / ds.classes[label] / Path(path).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
    return str(folder)


class Study:
    """Runs the variants and the peer, and writes the JSON, markdown and plots."""

    def __init__(self, args: argparse.Namespace, out: Path, runs: Path, data: str) -> None:
        self.args, self.out, self.runs, self.data = args, out, runs, data
        self.mode = "smoke" if args.smoke else args.scale
        self.train_images = images_in(data)
        self.results: dict[str, Any] = {"variants": {}, "peer": None}

    # ------------------------------------------------------------------------------------------ ours
    def overrides(self, name: str) -> tuple[str, list[str]]:
        cfg, extra = VARIANTS[name]
        common = [f"data.path={self.data}"]
        if self.mode == "gpu":
            return GPU_CONFIG.format(name=name), common
        if self.mode == "cpu":  # online kNN and RankMe every epoch: shows whether the label-free rank tracks kNN
            common += ["monitor.knn_every=1", "monitor.rank_every=1"]
        if self.mode == "smoke":
            common += ["monitor.knn_every=0", "data.num_workers=0", "optim.batch_size_per_gpu=16",
                       "monitor.log_images=false"]
        if self.args.jobs > 1:
            # one torch thread per variant: there, bf16 autocast matmuls took PyTorch's reference CPU gemm
            # (bf16_dot_with_fp32_arith) and DeiT-tiny's 12 calibration steps ran for over 30 min; fp32 for all
            common.append("optim.amp=none")
        return cfg, [*extra, *common]

    def calibrate(self, cfg: str, overrides: list[str], folder: Path) -> float:
        """Images/s of the whole training step (augmentation included), from a few steps in a throwaway run."""
        steps = CALIBRATION_STEPS[self.mode]
        if folder.exists():
            shutil.rmtree(folder)
        run_cli("pretrain", "--config", cfg, *overrides, f"output_dir={folder}", f"max_steps={steps}",
                "monitor.knn_every=0", "--no-resume", log=folder.parent / "study.log")
        ips = json.loads((folder / "summary.json").read_text())["images_per_s"]
        shutil.rmtree(folder)
        return ips

    def pretrain(self, name: str, minutes: float, run: Path) -> dict[str, Any]:
        from container_ssl.config import load_config

        cfg, overrides = self.overrides(name)
        if run.exists():
            shutil.rmtree(run)  # a fresh run: an old checkpoint there would be resumed, not retrained
        run.mkdir(parents=True)
        plan: dict[str, Any] = {"config": cfg, "overrides": _recorded(overrides)}
        if self.mode != "gpu":
            plan["calibration_images_per_s"] = self.calibrate(cfg, overrides, run / "calibrate")
            batch = load_config(ROOT / cfg, overrides).optim.batch_size_per_gpu
            epochs, subset = fit_schedule(plan["calibration_images_per_s"], minutes, self.train_images, batch)
            overrides = [*overrides, f"optim.epochs={epochs}", f"data.subset={subset}", f"max_minutes={minutes}"]
            plan.update(epochs=epochs, subset=subset, minutes=minutes)
            if self.mode == "smoke":
                overrides.append(f"max_steps={SMOKE['steps']}")
        plan["pretrain_s"] = run_cli("pretrain", "--config", cfg, *overrides, f"output_dir={run}", "--no-resume",
                                     log=run / "study.log")
        plan["final_overrides"] = _recorded(overrides)
        (run / "plan.json").write_text(json.dumps(plan, indent=2))  # what --reuse reads back
        return plan

    def reusable(self, name: str, run: Path) -> dict[str, Any] | None:
        """The plan of a finished run of ``name`` in ``run`` that this study would train the same way, or None.

        Why: a study takes hours; after a crash or a change to one variant, ``--reuse`` keeps the variants
        already done. A run counts when every result file is there, its budget equals ``--minutes`` and its
        saved config differs from this study's only where a resume may differ too (paths, monitors) and in the
        epochs and subset its calibration fitted.
        """
        from container_ssl.config import changed_keys, load_config, to_dict

        if not all((run / rel).is_file() for rel in ("checkpoint.pt", "config.yaml", *RESULT_FILES)):
            return None
        saved = yaml.safe_load((run / "config.yaml").read_text())
        cfg, overrides = self.overrides(name)
        final = overrides
        if self.mode != "gpu":
            if saved.get("max_minutes") != self.args.minutes:
                return None
            final = [*overrides, f"optim.epochs={saved['optim']['epochs']}", f"data.subset={saved['data']['subset']}",
                     f"max_minutes={self.args.minutes}"]
        if changed_keys(saved, to_dict(load_config(ROOT / cfg, final))):
            return None
        if (run / "plan.json").is_file():
            return {**json.loads((run / "plan.json").read_text()), "reused": True}
        return {"config": cfg, "overrides": _recorded(overrides), "final_overrides": _recorded(final),
                "minutes": saved.get("max_minutes"), "reused": True, "rebuilt_from": "config.yaml"}

    def evaluate(self, name: str, run: Path) -> dict[str, Any]:
        flags, log, ckpt = EVAL[self.mode], run / "study.log", str(run / "checkpoint.pt")
        times = {"knn_s": run_cli("knn", "--checkpoint", ckpt, *flags["knn"], log=log),
                 "linear_s": run_cli("linear", "--checkpoint", ckpt, "--cached-features", *flags["linear"], log=log),
                 "finetune_s": run_cli("finetune", "--checkpoint", ckpt, "--label-fraction", "0.1",
                                       *flags["finetune"], log=log)}
        cfg, overrides = self.overrides(name)
        floor = base.random_init_checkpoint(cfg, self.data, run / "random_init",
                                            overrides=_recorded(overrides))
        times["floor_knn_s"] = run_cli("knn", "--checkpoint", str(floor), "--output-dir", str(run / "eval_random"),
                                       *flags["knn"], log=log)
        return times

    def variant(self, name: str) -> dict[str, Any]:
        run = self.runs / name
        reused = self.reusable(name, run) if self.args.reuse else None
        if reused is not None:
            result: dict[str, Any] = {"plan": reused, "times": None}
        else:
            result = {"plan": self.pretrain(name, self.args.minutes, run)}
            result["times"] = self.evaluate(name, run)
        for rel in RESULT_FILES:
            src = run / rel
            result[rel] = json.loads(src.read_text())
            dst = self.out / name / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(base._portable(src.read_text()))
        shutil.copy(run / "metrics.jsonl", self.out / name / "metrics.jsonl")
        (self.out / name / "config.yaml").write_text(base._portable((run / "config.yaml").read_text()))
        result["alphas"] = mix_alphas(run / "checkpoint.pt")
        s = result["summary.json"]
        print(f"{name}: {s['train_time_s'] / 60:.1f} min, {s['epochs_done']:.2f} epochs, "
              f"{s['images_per_s']:.1f} img/s; kNN@20 {top1(result['eval/knn.json']):.2f} "
              f"(random init {top1(result['eval_random/knn.json']):.2f}); linear "
              f"{result['eval/linear.json']['top1']:.2f}; finetune 10% {result['eval/finetune_0.1.json']['top1']:.2f}",
              flush=True)
        return result

    # ------------------------------------------------------------------------------------------ peer
    def peer(self) -> dict[str, Any]:
        import lightly_peer

        minutes, folder = self.args.peer_minutes, self.runs / "peer"
        ours_run, theirs_run = folder / "ours", folder / "lightly"
        done = self.results["variants"].get("container_light_tiny")
        if done is not None and self.mode != "gpu" and minutes == self.args.minutes:
            # the study's quick-recipe run already is "ours at this budget": the same config, the same
            # fitted schedule; training it again would only spend the budget twice
            ours_run = self.runs / "container_light_tiny"
            ours = {"plan": done["plan"], "reused_run": "container_light_tiny"}
        else:
            ours = {"plan": self.pretrain("container_light_tiny", minutes, ours_run)}
            run_cli("knn", "--checkpoint", str(ours_run / "checkpoint.pt"), *EVAL[self.mode]["knn"],
                    log=ours_run / "study.log")
        ours["summary"] = json.loads((ours_run / "summary.json").read_text())
        ours["knn"] = json.loads((ours_run / "eval" / "knn.json").read_text())

        device = "cuda" if self.mode == "gpu" else "cpu"
        workers = {"smoke": 0, "cpu": 1, "gpu": 8}[self.mode]
        batch = 16 if self.mode == "smoke" else lightly_peer.BENCHMARK["batch_size"]
        if self.mode == "gpu":  # the benchmark's own long run: 200 epochs, batch 512
            epochs, subset, batch, budget = 200, 0, 512, 0.0
        else:
            ips = lightly_peer.calibrate(self.data, CALIBRATION_STEPS[self.mode], batch, num_workers=workers)
            (epochs, subset), budget = fit_schedule(ips, minutes, self.train_images, batch), minutes
        theirs = lightly_peer.train(self.data, theirs_run, epochs, subset, budget, batch_size=batch,
                                    num_workers=workers, device=device,
                                    max_steps=SMOKE["steps"] if self.mode == "smoke" else 0)
        theirs["knn"] = lightly_peer.knn(self.data, theirs_run, num_workers=workers, device=device)
        ours_s, theirs_s = ours["summary"], theirs
        result = {"minutes": None if self.mode == "gpu" else minutes, "ours": ours, "lightly": theirs,
                  "knn20_diff_points": top1(ours["knn"]) - top1(theirs["knn"]),
                  "images_per_s_ratio": ours_s["images_per_s"] / max(theirs_s["images_per_s"], 1e-9)}
        print(f"peer: ours (container_light_tiny) kNN@20 {top1(ours['knn']):.2f}, lightly DINO "
              f"(ResNet-18) {top1(theirs['knn']):.2f}: ours - theirs = {result['knn20_diff_points']:+.2f} points; "
              f"images/s {ours_s['images_per_s']:.1f} vs {theirs_s['images_per_s']:.1f} = "
              f"{result['images_per_s_ratio']:.2f}x", flush=True)
        return result

    # ------------------------------------------------------------------------------------------ report
    def write(self) -> Path:
        from container_ssl.models.complexity import build_on_meta, count_macs
        from container_ssl.models.factory import create_backbone

        for name, r in self.results["variants"].items():
            size, patch = r["summary.json"]["img_size"], _patch(r)
            model = build_on_meta(lambda name=name, size=size, patch=patch: create_backbone(
                name, img_size=size, patch_size=patch))
            r["gmacs_32px"] = count_macs(model, size) / 1e9
        (self.out / "study.json").write_text(base._portable(json.dumps(self.results, indent=2)))
        plots = {"knn_vs_gmacs.png": _plot(self.results, "gmacs_32px", "GMACs per 32-px image", self.out),
                 "knn_vs_time.png": _plot(self.results, "train_min", "training time (min)", self.out)}
        report = self.out / "report.md"
        report.write_text(base._portable(render(self.results, plots)))  # committed, like study.json
        return report


def _pin_worker(cores: Any) -> None:
    """A pool worker takes one core of its own and one torch thread: its variant's budget is that core."""
    os.sched_setaffinity(0, {cores.get()})
    torch.set_num_threads(1)


def _variant_on_own_core(study: Study, name: str) -> dict[str, Any]:
    result = study.variant(name)
    result["plan"]["cpu_cores"] = sorted(os.sched_getaffinity(0))
    return result


def run_variants(study: Study, names: list[str], jobs: int) -> dict[str, Any]:
    """Every variant, ``jobs`` at a time on a core each (``jobs == 1``: in this process, on all its cores)."""
    if jobs == 1:
        return {name: study.variant(name) for name in names}
    cores = sorted(os.sched_getaffinity(0))
    if jobs > len(cores):
        sys.exit(f"--jobs {jobs}: this process may run on {len(cores)} CPU core(s); give at most that many")
    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
    queue = ctx.Queue()
    for core in cores[:jobs]:
        queue.put(core)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_pin_worker, initargs=(queue,)) as pool:
        futures = {name: pool.submit(_variant_on_own_core, study, name) for name in names}
        return {name: future.result() for name, future in futures.items()}


def _patch(result: dict) -> int | None:
    """The run's stem stride / patch size, from its saved config overrides or the config file."""
    from container_ssl.config import load_config

    return load_config(ROOT / result["plan"]["config"], result["plan"]["final_overrides"]).model.patch_size


def _plot(results: dict, x_key: str, xlabel: str, out: Path) -> bool:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    for name, r in results["variants"].items():
        x = r["gmacs_32px"] if x_key == "gmacs_32px" else r["summary.json"]["train_time_s"] / 60
        y, floor = top1(r["eval/knn.json"]), top1(r["eval_random/knn.json"])
        color = ax.scatter([x], [y]).get_facecolor()[0]
        # the same network at random init: how much of the figure the pretraining earned
        ax.scatter([x], [floor], facecolors="none", edgecolors=[color])
        ax.plot([x, x], [floor, y], color=color, linewidth=0.8, alpha=0.6)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("kNN top-1, k = 20 (%); hollow: random init")
    ax.set_title("DINO on CIFAR-10, equal training time per variant")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"knn_vs_{'gmacs' if x_key == 'gmacs_32px' else 'time'}.png")
    return True


def _budget_line(results: dict) -> list[str]:
    cores, jobs = results.get("cpu_cores_per_variant"), results.get("jobs", 1)
    if not cores:
        return []
    shared = f"; {jobs} variants trained at once, sharing the memory bus" if jobs > 1 else ", one variant at a time"
    return [f"Budget: {results['minutes']} min of training per variant on {cores} CPU core(s) each{shared}.", ""]


def render(results: dict, plots: dict[str, bool]) -> str:
    """The study's markdown: one row per variant, the alphas, and the peer comparison."""
    lines = [f"# Affinity study ({results['mode']})", "",
             f"Machine: {results['machine']}. Command: `{results['command']}`. Data: {results['data']}.", "",
             *_budget_line(results),
             ("| variant | params (M) | GMACs @32 | img/s | epochs reached | train min | kNN@20 | random init | "
              "linear | finetune 10% |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["variants"].items():
        s = r["summary.json"]
        lines.append(f"| {name} | {s['params'] / 1e6:.3f} | {r['gmacs_32px']:.3f} | {s['images_per_s']:.1f} | "
                     f"{s['epochs_done']:.2f} | {s['train_time_s'] / 60:.1f} | {top1(r['eval/knn.json']):.2f} | "
                     f"{top1(r['eval_random/knn.json']):.2f} | {r['eval/linear.json']['top1']:.2f} | "
                     f"{r['eval/finetune_0.1.json']['top1']:.2f} |")
    mixed = {n: r["alphas"] for n, r in results["variants"].items() if r["alphas"]}
    if mixed:
        lines += ["", ("alpha = sigmoid(m), the dynamic (attention) share of each mixed block at the end "
                       "(teacher), by stage:"), ""]
        lines += [f"- {n}: " + "; ".join(f"{s} {', '.join(f'{a:.3f}' for a in v)}" for s, v in a.items())
                  for n, a in mixed.items()]
    peer = results.get("peer")
    if peer:
        o, t = peer["ours"], peer["lightly"]
        budget = f"{peer['minutes']} min of training each" if peer["minutes"] else "200 epochs each, wall time as measured"
        lines += ["", f"## Peer at equal compute ({budget})", "",
                  "| | ours: container_light_tiny, quick recipe | lightly DINO, ResNet-18 (its CIFAR-10 benchmark) |",
                  "|---|---:|---:|",
                  f"| params (M) | {o['summary']['params'] / 1e6:.3f} | {t['params'] / 1e6:.3f} |",
                  f"| train min | {o['summary']['train_time_s'] / 60:.1f} | {t['train_time_s'] / 60:.1f} |",
                  f"| epochs reached | {o['summary']['epochs_done']:.2f} | {t['epochs_done']:.2f} |",
                  f"| images/s | {o['summary']['images_per_s']:.1f} | {t['images_per_s']:.1f} |",
                  f"| kNN@20 (our kNN, same val split) | {top1(o['knn']):.2f} | {top1(t['knn']):.2f} |",
                  f"| kNN@200 | {top1(o['knn'], 200):.2f} | {top1(t['knn'], 200):.2f} |", "",
                  (f"ours - theirs: {peer['knn20_diff_points']:+.2f} kNN@20 points; images/s ratio "
                   f"{peer['images_per_s_ratio']:.2f}x.")]
    lines += [""] + [f"![{p}]({p})" for p, made in plots.items() if made]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--smoke", action="store_true", help="seconds per variant on a tiny subset, into a temp folder")
    default_data = ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"
    p.add_argument("--data", default=str(default_data) if default_data.is_file() else "cifar10")
    p.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--minutes", type=float, default=15.0, help="training minutes per variant (CPU; default 15)")
    p.add_argument("--peer-minutes", type=float, default=30.0, help="training minutes of ours and lightly's (default 30)")
    p.add_argument("--no-peer", action="store_true", help="skip the lightly comparison")
    p.add_argument("--jobs", type=int, default=1,
                   help="variants trained at once, each pinned to a CPU core of its own (CPU; default 1)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the variants whose run folder already holds a finished run of this study's recipe "
                        "and budget (after a crash, or when one variant changed)")
    p.add_argument("--runs", default="runs/affinity_study")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.jobs < 1 or (args.jobs > 1 and args.scale == "gpu"):
        p.error("--jobs must be at least 1, and 1 with --scale gpu (one GPU trains one variant at a time)")

    tmp = Path(tempfile.mkdtemp(prefix="affinity_smoke_")) if args.smoke else None
    if args.smoke:
        args.minutes = args.peer_minutes = 0.2
        out = Path(args.out) if args.out else tmp / "results"
        runs, data = tmp / "runs", smoke_data(args.data, tmp / "data")
    else:
        out = Path(args.out) if args.out else ROOT / "benchmarks/results/affinity_study"
        runs, data = Path(args.runs) / args.scale, args.data
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    study = Study(args, out, runs, data)
    machine = (torch.cuda.get_device_name() if args.scale == "gpu" and torch.cuda.is_available()
               else f"{platform.machine()} CPU, {os.cpu_count()} cores")
    cores = 1 if args.jobs > 1 else len(os.sched_getaffinity(0))
    study.results.update(mode=study.mode, machine=machine, data=args.data, minutes=args.minutes,
                         jobs=args.jobs, cpu_cores_per_variant=None if args.scale == "gpu" else cores,
                         command=f"python benchmarks/affinity_study.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    study.results["variants"] = run_variants(study, args.models, args.jobs)
    if not args.no_peer:
        study.results["peer"] = study.peer()
    report = study.write()
    print(report.read_text())
    print(f"results in {out}")
    if tmp is not None:  # the smoke's runs and data subset are scratch; its results stay in --out (or tmp)
        results_in_tmp = out.resolve().is_relative_to(tmp.resolve())
        for scratch in (runs, tmp / "data") if results_in_tmp else (tmp,):
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(math.isfinite(top1(r["eval/knn.json"])) for r in study.results["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
