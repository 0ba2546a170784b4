"""``container-ssl linear``: the linear probe on a frozen backbone (DINO protocol, see :mod:`.probe`).

Two modes. The default follows DINO: every epoch the train images are augmented (RandomResizedCrop +
flip) and passed through the frozen backbone, so the probe sees new views. ``--cached-features`` extracts
the (centre-crop) features once, reusing the cache shared with ``container-ssl knn``, and trains on
them without augmentation: orders of magnitude faster on a CPU, usually a little lower accuracy. The
val features never depend on augmentation, so they are cached in both modes.

Outputs in ``--output-dir``: ``linear.json`` (best val top-1 and its learning rate, per-lr summaries,
the configuration), ``linear_log.jsonl`` (one line per evaluated epoch and learning rate) and
``linear_best.pt`` (the best head, written atomically whenever it improves).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import torch

from ..checkpoint import save_atomic
from ..errors import UserError
from .features import (
    autocast,
    cached_features,
    default_n_last_blocks,
    feature_fn,
    feature_kind,
    load_backbone,
    make_loader,
)
from .knn import check_class_sets
from .options import (
    add_checkpoint_args,
    add_data_args,
    add_feature_cache_args,
    add_runtime_args,
    build_split,
    positive_float,
    positive_int,
    resolve_data,
    resolve_device,
    resolve_feature_cache,
    resolve_output_dir,
    write_json,
)
from .probe import LinearProbe, feature_batches, fit_probe
from .transforms import eval_transform, probe_train_transform


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Linear probe on frozen features (DINO protocol: SGD momentum 0.9, no weight decay, "
                          "lr = base_lr * batch_size / 256, cosine schedule). Writes linear.json, linear_log.jsonl "
                          "and linear_best.pt to the output dir.")
    add_checkpoint_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("linear probe")
    g.add_argument("--epochs", type=positive_int, default=100, help="default 100")
    g.add_argument("--lr", type=positive_float, default=0.001,
                   help="base learning rate, scaled by batch_size/256 (default 0.001)")
    g.add_argument("--lrs", type=positive_float, nargs="+", default=None, metavar="LR",
                   help="several base learning rates: one head each, trained in the same pass; the best is "
                        "reported (overrides --lr), e.g. --lrs 0.0001 0.001 0.01 0.1")
    g.add_argument("--n-last-blocks", type=int, default=None,
                   help="concatenate features of the last N blocks (DeiT: CLS tokens, default 4) or stages "
                        "(Container: pooled maps, default 2 = stages 3+4); 0 = the pooled output")
    g.add_argument("--avgpool", action="store_true",
                   help="DeiT only: also concatenate the mean patch token of the last block")
    g.add_argument("--cached-features", action="store_true",
                   help="extract features once (no augmentation) and train on them: orders of magnitude "
                        "faster on a CPU than the default augmented mode")
    g.add_argument("--crop-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("LO", "HI"),
                   help="RandomResizedCrop scale of the augmented mode (default 0.08 1.0)")
    g.add_argument("--val-freq", type=positive_int, default=1, help="evaluate every N epochs (default 1)")
    g.add_argument("--seed", type=int, default=0)
    add_feature_cache_args(parser)
    add_runtime_args(parser, batch_size=256)


def run(args: argparse.Namespace) -> int:
    start = time.time()
    torch.manual_seed(args.seed)
    model, info = load_backbone(args.checkpoint, args.checkpoint_key, args.model, args.img_size, args.patch_size)
    spec = resolve_data(args, info["config"], info["img_size"])
    out_dir = resolve_output_dir(args, args.checkpoint)
    cache = resolve_feature_cache(args, out_dir)
    device = resolve_device(args.device)
    use_amp = not args.no_amp
    n_blocks = default_n_last_blocks(model) if args.n_last_blocks is None else args.n_last_blocks
    if n_blocks < 0:
        raise UserError(f"--n-last-blocks must be >= 0, got {n_blocks}")
    kind = feature_kind(n_blocks, args.avgpool)
    feat_args = {"batch_size": args.batch_size, "device": device, "num_workers": args.num_workers,
                 "use_amp": use_amp, "n_last_blocks": n_blocks, "avgpool": args.avgpool}

    val_tf = eval_transform(spec.img_size, spec.mean, spec.std, args.crop_ratio)
    train_tf = val_tf if args.cached_features else probe_train_transform(spec.img_size, spec.mean, spec.std,
                                                                        args.crop_scale)
    train_ds = build_split(spec, spec.train_split, train_tf)
    val_ds = build_split(spec, spec.val_split, val_tf)
    check_class_sets(train_ds.classes, val_ds.classes)
    num_classes = len(train_ds.classes)

    val_f, val_y = cached_features(model, info, val_ds, cache, desc="val features", **feat_args)
    if args.cached_features:
        train_f, train_y = cached_features(model, info, train_ds, cache, desc="train features", **feat_args)
        n_train = int(train_f.shape[0])
        generator = torch.Generator().manual_seed(args.seed)

        def train_batches(epoch: int) -> Iterator:
            return feature_batches(train_f, train_y, args.batch_size, generator)
    else:
        n_train = len(train_ds)
        loader = make_loader(train_ds, args.batch_size, args.num_workers, shuffle=True, device=device, seed=args.seed)
        extract = feature_fn(model.to(device).eval(), n_blocks, args.avgpool)

        def train_batches(epoch: int) -> Iterator:
            for batch in loader:
                if batch is None:
                    continue
                images, labels = batch
                with torch.no_grad(), autocast(device, use_amp):
                    feats = extract(images.to(device, non_blocking=True))
                yield feats.float(), labels

    base_lrs = args.lrs or [args.lr]
    probe = LinearProbe(val_f.shape[1], num_classes, base_lrs, args.batch_size, args.epochs, device)
    log_path = out_dir / "linear_log.jsonl"
    best = {"top1": -1.0}
    meta = {"checkpoint": info["checkpoint"], "checkpoint_sha256": info["sha256"],
            "checkpoint_key": info["checkpoint_key"], "model": info["model"], "feature": kind,
            "n_last_blocks": n_blocks, "avgpool": args.avgpool, "feature_dim": int(val_f.shape[1]),
            "num_classes": num_classes, "classes": list(train_ds.classes)}

    history: list[dict] = []

    def on_epoch(epoch: int, probe: LinearProbe, losses: list, meters: list) -> None:
        history.append({"epoch": epoch, "val_top1": [m.top1 for m in meters]})
        for i, (rec, loss, meter) in enumerate(zip(probe.records, losses, meters)):
            log_file.write(json.dumps({"epoch": epoch, "base_lr": rec.base_lr, "lr": rec.lr, "train_loss": loss,
                                       "val_loss": meter.loss, "val_top1": meter.top1, "val_top5": meter.top5}) + "\n")
            if meter.top1 > best["top1"]:
                best.update(top1=meter.top1, top5=meter.top5, epoch=epoch, base_lr=rec.base_lr, lr=rec.lr)
                save_atomic({"head": probe.head_state(i), **meta, "epoch": epoch, "base_lr": rec.base_lr,
                             "lr": rec.lr, "top1": meter.top1, "top5": meter.top5}, out_dir / "linear_best.pt")
        shown = max(range(len(meters)), key=lambda j: meters[j].top1)
        print(f"epoch {epoch + 1}/{args.epochs}  val top1 {meters[shown].top1:.2f} "
              f"(base lr {probe.records[shown].base_lr:g})  best {best['top1']:.2f}", flush=True)

    def val_batches() -> Iterator:
        return feature_batches(val_f, val_y, max(args.batch_size, 1024))

    with open(log_path, "w", buffering=1) as log_file:
        records = fit_probe(probe, train_batches, val_batches, args.epochs, args.val_freq, on_epoch)

    report = {
        **meta, "top1": best["top1"], "top5": best.get("top5"), "best_epoch": best.get("epoch"),
        "best_base_lr": best.get("base_lr"), "best_lr": best.get("lr"),
        "final_top1": max(r.final_top1 for r in records),
        "per_lr": [r.as_dict() for r in records], "base_lrs": [r.base_lr for r in records],
        "history": history,  # val top-1 per evaluated epoch, one value per base lr
        "mode": "cached-features" if args.cached_features else "augmented",
        "epochs": args.epochs, "batch_size": args.batch_size, "epoch_reported": "best val top-1 over epochs (DINO)",
        "data": spec.as_dict(), "train_images": n_train, "val_images": int(val_f.shape[0]),
        "wall_time_s": round(time.time() - start, 2),
    }
    path = write_json(out_dir / "linear.json", report)
    print(f"linear probe: top1 {best['top1']:.2f} (base lr {best.get('base_lr'):g}, epoch {best.get('epoch', 0) + 1}); "
          f"wrote {path}")
    return 0
