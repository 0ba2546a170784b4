"""``container-ssl linear``: the linear probe on a frozen backbone (DINO protocol, see :mod:`.probe`).

Two modes. The default follows DINO: every epoch the train images are augmented (RandomResizedCrop +
flip) and passed through the frozen backbone, so the probe sees new views. ``--cached-features`` extracts
the (centre-crop) features once, reusing the cache shared with ``container-ssl knn``, and trains on
them without augmentation: orders of magnitude faster on a CPU, usually a little lower accuracy. The
val features never depend on augmentation, so they are cached in both modes.

How the lr and the epoch are chosen (``--selection``). ``holdout`` (default): a class-balanced, seeded
``--holdout-fraction`` of the train split is held out; one head per ``--lrs`` value is trained on the
rest and evaluated on the held-out images; the best (lr, epoch) is then retrained on the *whole* train
split with the same schedule, stopped at the chosen epoch, and the val split is evaluated exactly once.
Retraining rather than keeping the held-out head: the reported probe should use every label the
protocol allows (as DINO's does), and the chosen epoch of a cosine schedule transfers unchanged when the
schedule is the same. It costs at most one more pass of training. ``val``: DINO's reporting, the best
val top-1 over lrs and epochs, i.e. chosen on the split it reports (optimistic; kept for comparison with
published numbers and labelled as such in ``linear.json`` and the report).

Outputs in ``--output-dir``: ``linear.json`` (val top-1, ``selection``, the chosen lr and epoch, per-lr
summaries on the selection split, the configuration), ``linear_log.jsonl`` (one line per evaluated epoch
and lr, tagged ``select``/``retrain``/``val``) and ``linear_best.pt`` (the reported head, written
atomically).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..argtypes import float_range, int_range
from ..checkpoint import save_atomic
from ..errors import UserError
from ..run import LINEAR_REPORT
from .backbone import intermediate_count
from .features import (
    autocast,
    default_n_last_blocks,
    extract_features,
    feature_fn,
    feature_kind,
    make_loader,
)
from .finite import require_finite_features
from .options import EvalContext, add_checkpoint_args, add_data_args, add_runtime_args
from .probe import (
    LinearProbe,
    choose,
    feature_batches,
    fit_probe,
    holdout_split,
    train_epoch,
)
from .seeding import seed_everything
from .transforms import probe_train_transform


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Linear probe on frozen features (DINO protocol: SGD momentum 0.9, no weight decay, "
                          "lr = base_lr * batch_size / 256, cosine schedule). Writes linear.json, linear_log.jsonl "
                          "and linear_best.pt to the output dir.")
    add_checkpoint_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("linear probe")
    g.add_argument("--epochs", type=int_range(1), default=100, help="default 100")
    g.add_argument("--lr", type=float_range(0, lo_open=True), default=0.001,
                   help="base learning rate, scaled by batch_size/256 (default 0.001)")
    g.add_argument("--lrs", type=float_range(0, lo_open=True), nargs="+", default=None, metavar="LR",
                   help="several base learning rates: one head each, trained in the same pass; the best is "
                        "reported (overrides --lr), e.g. --lrs 0.0001 0.001 0.01 0.1")
    g.add_argument("--n-last-blocks", type=int_range(0), default=None,
                   help="concatenate features of the last N blocks (DeiT: CLS tokens, default 4) or stages "
                        "(Container: pooled maps, default 2 = stages 3+4); 0 = the pooled output")
    g.add_argument("--avgpool", action="store_true",
                   help="DeiT only: also concatenate the mean patch token of the last block")
    g.add_argument("--cached-features", action="store_true",
                   help="extract features once (no augmentation) and train on them: orders of magnitude "
                        "faster on a CPU than the default augmented mode")
    g.add_argument("--crop-scale", type=float_range(0, 1, lo_open=True), nargs=2, default=(0.08, 1.0),
                   metavar=("LO", "HI"), help="RandomResizedCrop scale of the augmented mode (default 0.08 1.0)")
    g.add_argument("--selection", default="holdout", choices=("holdout", "val"),
                   help="where the lr and epoch are chosen: holdout (default) = on a class-balanced, seeded "
                        "part of the train split, then retrained on all of train and val evaluated once; "
                        "val = DINO's reporting, the best val top-1 (selected on the reported split)")
    g.add_argument("--holdout-fraction", type=float_range(0, 1, lo_open=True, hi_open=True), default=0.1,
                   help="share of each class's train images held out for the choice (default 0.1)")
    g.add_argument("--val-freq", type=int_range(1), default=1,
                   help="evaluate (the held-out part, or val with --selection val) every N epochs (default 1)")
    g.add_argument("--seed", type=int_range(0), default=0,
                   help="seed of head init, data order and the held-out split (default 0)")
    add_runtime_args(parser, feature_cache=True)


def run(args: argparse.Namespace) -> int:
    ctx = EvalContext.from_args(args)
    model, spec, device, out_dir = ctx.model, ctx.data, ctx.device, ctx.output_dir
    n_blocks = default_n_last_blocks(model) if args.n_last_blocks is None else args.n_last_blocks
    depth = intermediate_count(model)
    if n_blocks > 0 and depth is not None and n_blocks > depth[0]:
        raise UserError(f"--n-last-blocks {n_blocks} is more than the {depth[0]} {depth[1]} of {ctx.info['model']}; "
                        f"pass 0..{depth[0]}")
    feature = {"n_last_blocks": n_blocks, "avgpool": args.avgpool}

    train_eval_ds, val_ds = ctx.splits()
    num_classes = len(train_eval_ds.classes)
    val_f, val_y = ctx.features("val", val_ds, **feature)
    if args.cached_features:
        train_f, train_y = ctx.features("train", train_eval_ds, **feature)
        data = _CachedTrain(train_f, train_y, args.batch_size, args.seed)
    else:
        train_ds = ctx.split("train", probe_train_transform(spec.img_size, spec.mean, spec.std, args.crop_scale))
        data = _AugmentedTrain(model, train_ds, train_eval_ds, {**ctx.runtime, **feature}, args, device,
                               ctx.what("train"))

    base_lrs = args.lrs or [args.lr]
    meta = {**ctx.weights, "feature": feature_kind(n_blocks, args.avgpool), "n_last_blocks": n_blocks,
            "avgpool": args.avgpool, "feature_dim": int(val_f.shape[1]), "num_classes": num_classes,
            "classes": list(train_eval_ds.classes), "selection": args.selection}
    with open(out_dir / "linear_log.jsonl", "w", buffering=1) as log_file:
        result = _select(args, data, val_f, val_y, base_lrs, num_classes, device, meta, log_file, out_dir)

    path = ctx.write_report(LINEAR_REPORT, {
        **meta, **result, "mode": "cached-features" if args.cached_features else "augmented",
        "epochs": args.epochs, "batch_size": args.batch_size, "data": spec.as_dict(), "train_images": data.size,
        "val_images": int(val_f.shape[0]),
    })
    print(f"linear probe: val top1 {result['top1']:.2f} (base lr {result['best_base_lr']:g}, epoch "
          f"{result['best_epoch'] + 1}, chosen on {SELECTION_LABELS[args.selection]}); wrote {path}")
    return 0


SELECTION_LABELS = {"holdout": "a held-out part of the train split", "val": "the val split (DINO's reporting)"}


def _select(args: argparse.Namespace, data: Any, val_f: torch.Tensor, val_y: torch.Tensor, base_lrs: list,
            num_classes: int, device: torch.device, meta: dict, log_file: Any, out_dir: Path) -> dict:
    """Train one head per base lr and choose the lr and epoch: on the held-out part of train, then retrain on
    all of train and evaluate val once; or, with ``--selection val``, as DINO reports (the best val top-1)."""
    on_val = args.selection == "val"
    split, shown_as = ("val", "val") if on_val else ("holdout", "held-out")
    fit_idx, (eval_f, eval_y) = None, (val_f, val_y)
    if not on_val:
        fit_idx, held_idx = holdout_split(data.labels, args.holdout_fraction, args.seed)
        eval_f, eval_y = data.held_out_features(held_idx)
    seed_everything(args.seed)  # head init from here: a feature-cache hit or miss (a DataLoader draw) alike
    probe = LinearProbe(val_f.shape[1], num_classes, base_lrs, args.batch_size, args.epochs, device)
    best = {"top1": -1.0}  # --selection val: the best val top-1 so far, its head saved as linear_best.pt
    history: list[dict] = []

    def on_epoch(epoch: int, probe: LinearProbe, losses: list, meters: list) -> None:
        history.append({"epoch": epoch, f"{split}_top1": [m.top1 for m in meters]})
        for i, (rec, loss, meter) in enumerate(zip(probe.records, losses, meters)):
            log_file.write(json.dumps({"phase": "select", "epoch": epoch, "base_lr": rec.base_lr, "lr": rec.lr,
                                       "train_loss": loss, f"{split}_loss": meter.loss, f"{split}_top1": meter.top1,
                                       f"{split}_top5": meter.top5}) + "\n")
            if on_val and meter.top1 > best["top1"]:
                best.update(top1=meter.top1, top5=meter.top5, epoch=epoch, base_lr=rec.base_lr, lr=rec.lr)
                save_atomic({"head": probe.head_state(i), **meta, "epoch": epoch, "base_lr": rec.base_lr,
                             "lr": rec.lr, "top1": meter.top1, "top5": meter.top5}, out_dir / "linear_best.pt")
        shown = max(range(len(meters)), key=lambda j: meters[j].top1)
        print(f"epoch {epoch + 1}/{args.epochs}  {shown_as} top1 {meters[shown].top1:.2f} (base lr "
              f"{probe.records[shown].base_lr:g})" + (f"  best {best['top1']:.2f}" if on_val else ""), flush=True)

    records = fit_probe(probe, lambda epoch: data.batches(fit_idx), lambda: feature_batches(
        eval_f, eval_y, max(args.batch_size, 1024)), args.epochs, args.val_freq, on_epoch)
    per_lr = {"per_lr": [r.as_dict() for r in records], "base_lrs": [r.base_lr for r in records],
              "history": history}  # history: the selection split's top-1 per evaluated epoch, one value per base lr
    if on_val:
        return {
            "top1": best["top1"], "top5": best.get("top5"), "best_epoch": best.get("epoch"),
            "best_base_lr": best.get("base_lr"), "best_lr": best.get("lr"),
            "final_top1": max(r.final_top1 for r in records), **per_lr, "val_evaluations": len(history),
            "epoch_reported": "best val top-1 over learning rates and epochs (DINO; selected on the reported split)",
        }
    chosen = records[choose(records)]
    print(f"chosen on the held-out split: base lr {chosen.base_lr:g}, epoch {chosen.best_epoch + 1} "
          f"(held-out top1 {chosen.best_top1:.2f}); retraining on the whole train split", flush=True)

    # Retrain the chosen configuration (same schedule, stopped at the chosen epoch) on every train image:
    # the held-out images are labels the reported probe should not lose.
    seed_everything(args.seed)
    final = LinearProbe(val_f.shape[1], num_classes, [chosen.base_lr], args.batch_size, args.epochs, device)
    for epoch in range(chosen.best_epoch + 1):
        loss = train_epoch(final, data.batches(None))[0]
        log_file.write(json.dumps({"phase": "retrain", "epoch": epoch, "base_lr": chosen.base_lr, "lr": chosen.lr,
                                   "train_loss": loss}) + "\n")
    (meter,) = final.evaluate(feature_batches(val_f, val_y, max(args.batch_size, 1024)))  # the one val evaluation
    log_file.write(json.dumps({"phase": "val", "epoch": chosen.best_epoch, "base_lr": chosen.base_lr,
                               "val_loss": meter.loss, "val_top1": meter.top1, "val_top5": meter.top5}) + "\n")
    save_atomic({"head": final.head_state(0), **meta, "epoch": chosen.best_epoch, "base_lr": chosen.base_lr,
                 "lr": chosen.lr, "top1": meter.top1, "top5": meter.top5}, out_dir / "linear_best.pt")
    return {
        "top1": meter.top1, "top5": meter.top5, "best_epoch": chosen.best_epoch, "best_base_lr": chosen.base_lr,
        "best_lr": chosen.lr, "final_top1": meter.top1, "holdout_top1": chosen.best_top1,
        "holdout": {"fraction": args.holdout_fraction, "seed": args.seed, "images": int(held_idx.numel()),
                    "fit_images": int(fit_idx.numel())},
        **per_lr, "val_evaluations": 1,
        "epoch_reported": "lr and epoch chosen on a held-out part of train; retrained on all of train; "
                          "val evaluated once",
    }


class _CachedTrain:
    """Train features extracted once (centre crop): batches of any subset, reshuffled each epoch."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        self.features, self.labels, self.batch_size = features, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.size = int(features.shape[0])

    def batches(self, indices: torch.Tensor | None) -> Iterator:
        features, labels = (self.features, self.labels) if indices is None else self.held_out_features(indices)
        return feature_batches(features, labels, self.batch_size, self.generator)

    def held_out_features(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[indices], self.labels[indices]


class _AugmentedTrain:
    """Train images augmented anew each epoch and passed through the frozen backbone (DINO's mode)."""

    def __init__(self, model: torch.nn.Module, train_ds: Any, train_eval_ds: Any, feat_args: dict,
                 args: argparse.Namespace, device: torch.device, what: str):
        self.model, self.train_ds, self.train_eval_ds = model, train_ds, train_eval_ds
        self.feat_args, self.args, self.device, self.what = feat_args, args, device, what
        self.labels = torch.as_tensor(train_ds.targets, dtype=torch.int64)
        self.size = len(train_ds)
        self.extract = feature_fn(model.to(device).eval(), feat_args["n_last_blocks"], feat_args["avgpool"])
        self._epoch = 0

    def batches(self, indices: torch.Tensor | None) -> Iterator:
        dataset = self.train_ds if indices is None else Subset(self.train_ds, indices.tolist())
        self._epoch += 1
        loader = make_loader(dataset, self.args.batch_size, self.args.num_workers, shuffle=True,
                             device=self.device, seed=self.args.seed + self._epoch)
        for batch in loader:
            if batch is None:
                continue
            images, labels = batch
            with torch.no_grad(), autocast(self.device, self.feat_args["use_amp"]):
                feats = self.extract(images.to(self.device, non_blocking=True))
            require_finite_features(feats, self.what)
            yield feats.float(), labels

    def held_out_features(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = extract_features(self.model, Subset(self.train_eval_ds, indices.tolist()),
                                         desc="held-out features", **self.feat_args)
        require_finite_features(feats, self.what)
        return feats, labels
