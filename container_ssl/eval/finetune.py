"""``container-ssl finetune``: low-data finetuning (1 %, 10 % … of the labels) of the whole network.

Why: the paper's claim is that self-supervised pretraining pays off most when labels are scarce. The
network starts from an SSL checkpoint (the teacher, by default) or from scratch (``--init scratch``, the
baseline) and is trained end to end on a class-balanced label fraction (:mod:`container_ssl.data.subsets`)
with the DeiT recipe, built from timm parts rather than re-implemented: AdamW through
``create_optimizer_v2`` (bias/norm parameters without weight decay, optional layer-wise lr decay via the
model's ``group_matcher``), a per-iteration cosine schedule with warm-up (``create_scheduler_v2``),
RandAugment ``rand-m9-mstd0.5-inc1`` (DeiT's policy, with the sampled magnitude capped at 9: at 10 its
increasing posterize asks for 0 bits, which Pillow >= 13 rejects mid-epoch) + random erasing
(``create_transform``, which wraps ``rand_augment_transform``), Mixup/CutMix (``Mixup`` +
``SoftTargetCrossEntropy``) or label smoothing. Accuracy is always measured on the *full* val split.

Outputs in ``--output-dir``: ``subset_<tag>.txt`` (the labelled images used), ``finetune_<tag>.json``
(best and final val top-1/top-5, the configuration), ``finetune_<tag>_log.jsonl`` (per-epoch lines) and
``finetune_<tag>_best.pt`` (best weights, written atomically). ``<tag>`` is the label fraction (``0.1``)
or the subset file's name.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..argtypes import float_range, int_range
from ..checkpoint import save_atomic
from ..data.subsets import read_subset_file, select_subset, write_subset_file
from ..errors import UserError
from ..run import FINETUNE_PREFIX
from .features import autocast, make_loader
from .metrics import TopK
from .options import EvalContext, add_checkpoint_args, add_data_args, add_runtime_args

DEFAULT_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1-mmax9"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Finetune the whole network on a class-balanced fraction of the train labels "
                          "(DeiT recipe through timm) and report top-1/top-5 on the full val split.")
    weights = add_checkpoint_args(parser, required=False)
    weights.add_argument("--init", default="ssl", choices=("ssl", "scratch"),
                         help="ssl = start from --checkpoint; scratch = random init (the supervised baseline; "
                              "only the config of a --checkpoint is used, and --model is needed without one)")
    add_data_args(parser)
    labels = parser.add_argument_group("labels")
    s = labels.add_mutually_exclusive_group()
    s.add_argument("--label-fraction", type=float_range(0, 1, lo_open=True), default=None,
                   help="fraction of train labels per class, e.g. 0.01 or 0.1 (default 0.1)")
    s.add_argument("--subset-file", default=None, metavar="PATH",
                   help="use the images listed in this file (one path per line, relative to the split folder)")
    labels.add_argument("--subset-seed", type=int_range(0), default=0, help="seed of the label subset (default 0)")

    o = parser.add_argument_group("optimisation (DeiT defaults)")
    o.add_argument("--epochs", type=int_range(1), default=100)
    o.add_argument("--opt", type=_timm_optimizer, default="adamw", help="timm optimizer name (default adamw)")
    o.add_argument("--lr", type=float_range(0, lo_open=True), default=5e-4,
                   help="base lr, scaled by batch_size/512 (default 5e-4)")
    o.add_argument("--min-lr", type=float_range(0), default=1e-6)
    o.add_argument("--warmup-epochs", type=int_range(0), default=5)
    o.add_argument("--warmup-lr", type=float_range(0), default=1e-6)
    o.add_argument("--weight-decay", type=float_range(0), default=0.05)
    o.add_argument("--layer-decay", type=float_range(0, 1, lo_open=True), default=None,
                   help="layer-wise lr decay factor, e.g. 0.65 (default: off)")
    o.add_argument("--drop-path", type=float_range(0, 1, hi_open=True), default=0.1,
                   help="stochastic depth rate (default 0.1)")
    o.add_argument("--clip-grad", type=float_range(0, lo_open=True), default=None,
                   help="gradient norm clip (default: off)")

    a = parser.add_argument_group("augmentation and regularisation (DeiT defaults)")
    a.add_argument("--aa", default=DEFAULT_AUTO_AUGMENT,
                   help=f"timm RandAugment string, or 'none' (default {DEFAULT_AUTO_AUGMENT})")
    a.add_argument("--reprob", type=float_range(0, 1), default=0.25, help="random erasing probability (default 0.25)")
    a.add_argument("--crop-scale", type=float_range(0, 1, lo_open=True), nargs=2, default=(0.08, 1.0),
                   metavar=("LO", "HI"))
    a.add_argument("--smoothing", type=float_range(0, 1, hi_open=True), default=0.1,
                   help="label smoothing (default 0.1)")
    a.add_argument("--mixup", type=float_range(0), default=0.8, help="Mixup alpha (default 0.8; 0 = off)")
    a.add_argument("--cutmix", type=float_range(0), default=1.0, help="CutMix alpha (default 1.0; 0 = off)")
    a.add_argument("--mixup-prob", type=float_range(0, 1), default=1.0)
    a.add_argument("--mixup-switch-prob", type=float_range(0, 1), default=0.5)
    a.add_argument("--no-mixup", action="store_true", help="switch Mixup and CutMix off")

    o.add_argument("--val-freq", type=int_range(1), default=1, help="evaluate every N epochs (default 1)")
    o.add_argument("--seed", type=int_range(0), default=0, help="seed of initialisation and data order (default 0)")
    add_runtime_args(parser, batch_size=128)


def run(args: argparse.Namespace) -> int:
    if args.init == "ssl" and not args.checkpoint:
        raise UserError("--init ssl needs --checkpoint PATH (or use --init scratch --model NAME)")
    # seeds numpy too: timm's Mixup/CutMix draws from numpy's global generator
    ctx = EvalContext.from_args(args, weights=args.init == "ssl", drop_path_rate=args.drop_path)
    model, info, spec, device, out_dir = ctx.model, ctx.info, ctx.data, ctx.device, ctx.output_dir
    train_full, val_ds = ctx.splits(_train_transform(args, spec))
    num_classes = len(train_full.classes)
    indices, tag, fraction = _label_subset(args, train_full)
    subset_path = write_subset_file(out_dir / f"subset_{tag}.txt", train_full.samples, indices)
    train_ds = Subset(train_full, indices)

    mixup_fn, criterion = _loss(args, num_classes)
    batch_size = min(args.batch_size, len(train_ds))
    if mixup_fn is not None:
        batch_size -= batch_size % 2
        if batch_size < 2:
            raise UserError("Mixup/CutMix needs at least 2 labelled images per batch; use --no-mixup or more labels")
    loader = make_loader(train_ds, batch_size, args.num_workers, shuffle=True, drop_last=True, device=device,
                         seed=args.seed)
    val_loader = make_loader(val_ds, max(args.batch_size, 256), args.num_workers, device=device)

    model.reset_classifier(num_classes)
    head = model.get_classifier()
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    model.to(device)

    import timm.optim
    import timm.scheduler
    lr = args.lr * batch_size / 512.0
    optimizer = timm.optim.create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                               layer_decay=args.layer_decay)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=len(loader))

    ckpt_meta = {"model_name": info["model"], "img_size": info["img_size"], "patch_size": info["patch_size"],
                 "num_classes": num_classes, "classes": list(train_full.classes), "label_fraction": fraction}
    with open(out_dir / f"{FINETUNE_PREFIX}{tag}_log.jsonl", "w", buffering=1) as log_file:
        best, history, val_total = train(model, loader, val_loader, optimizer, scheduler, criterion, mixup_fn, args,
                                         device, num_classes, log_file, out_dir / f"{FINETUNE_PREFIX}{tag}_best.pt",
                                         ckpt_meta)

    path = ctx.write_report(f"{FINETUNE_PREFIX}{tag}.json", {
        "tag": tag, "label_fraction": fraction, "subset_file": str(subset_path), "subset_images": len(indices),
        "train_images_total": len(train_full), "val_images": val_total, "init": args.init, **ctx.weights,
        "top1": best["top1"], "top5": best.get("top5"), "best_epoch": best.get("epoch"),
        "final_top1": history[-1]["val_top1"], "final_top5": history[-1]["val_top5"],
        "batch_size": batch_size, "lr": lr, "data": spec.as_dict(), "config": _plain(vars(args)),
        "history": history,
    })
    print(f"finetune ({tag} of the labels, {len(indices)} images): best val top1 {best['top1']:.2f}; wrote {path}")
    return 0


def train(model: nn.Module, loader: Any, val_loader: Any, optimizer: Any, scheduler: Any, criterion: nn.Module,
          mixup_fn: Any | None, args: argparse.Namespace, device: torch.device, num_classes: int,
          log_file: Any, best_path: Path, ckpt_meta: dict) -> tuple[dict, list, int]:
    """The epoch loop: per-iteration lr schedule, evaluation every ``--val-freq`` epochs and at the end,
    the best weights saved atomically. Returns (best, per-evaluation history, val images counted)."""
    use_amp = not args.no_amp
    best: dict[str, Any] = {"top1": -1.0}
    history, val_total, updates = [], 0, 0
    for epoch in range(args.epochs):
        model.train()
        loss_sum, steps = 0.0, 0
        for batch in loader:
            if batch is None:
                continue
            images, targets = batch
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                if images.shape[0] % 2:  # an unreadable image was dropped from this batch
                    images, targets = images[:-1], targets[:-1]
                if images.shape[0] < 2:
                    continue
                images, targets = mixup_fn(images, targets)
            with autocast(device, use_amp):
                loss = criterion(model(images), targets)
            if not math.isfinite(loss.item()):
                raise UserError(f"finetuning loss became {loss.item()} at epoch {epoch}; lower --lr or set --clip-grad")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            loss_sum, steps = loss_sum + loss.item(), steps + 1
        if (epoch + 1) % args.val_freq and epoch + 1 != args.epochs:
            continue
        meter = evaluate(model, val_loader, device, use_amp, num_classes)
        val_total = meter.total
        line = {"epoch": epoch, "train_loss": loss_sum / max(1, steps), "lr": optimizer.param_groups[0]["lr"],
                "val_loss": meter.loss, "val_top1": meter.top1, "val_top5": meter.top5}
        history.append(line)
        log_file.write(json.dumps(line) + "\n")
        if meter.top1 > best["top1"]:
            best = {"top1": meter.top1, "top5": meter.top5, "epoch": epoch}
            save_atomic({"model": model.state_dict(), **ckpt_meta, "epoch": epoch, "top1": meter.top1,
                         "top5": meter.top5}, best_path)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {line['train_loss']:.4f}  val top1 {meter.top1:.2f}  "
              f"best {best['top1']:.2f}", flush=True)
    return best, history, val_total


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, use_amp: bool, num_classes: int) -> TopK:
    """Top-1/top-5 and cross-entropy of ``model`` over a whole loader."""
    model.eval()
    meter = TopK(num_classes)
    for batch in loader:
        if batch is None:
            continue
        images, targets = batch
        targets = targets.to(device)
        with autocast(device, use_amp):
            logits = model(images.to(device, non_blocking=True)).float()
        meter.update(logits, targets, nn.functional.cross_entropy(logits, targets).item())
    return meter


def _train_transform(args: argparse.Namespace, spec: Any) -> Any:
    from timm.data import create_transform
    aa = None if str(args.aa).lower() in ("", "none") else args.aa
    if not 0.0 <= args.reprob <= 1.0:
        raise UserError(f"--reprob must be in [0, 1], got {args.reprob}")
    lo, hi = args.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise UserError(f"--crop-scale must be 0 < lo <= hi <= 1, got {lo} {hi}")
    try:
        return create_transform(spec.img_size, is_training=True, scale=(lo, hi), auto_augment=aa,
                                interpolation="bicubic", mean=spec.mean, std=spec.std, re_prob=args.reprob,
                                re_mode="pixel", re_count=1)
    except (AssertionError, ValueError, KeyError) as e:
        raise UserError(f"bad augmentation setting (--aa {args.aa}): {e}") from None


def _label_subset(args: argparse.Namespace, train_full: Any) -> tuple[list[int], str, float]:
    """Indices, file tag and label fraction of the labelled subset."""
    if args.subset_file:
        indices = read_subset_file(args.subset_file, train_full.samples)
        return indices, Path(args.subset_file).stem, len(indices) / max(1, len(train_full))
    fraction = 0.1 if args.label_fraction is None else float(args.label_fraction)
    indices = select_subset(train_full.targets, fraction, args.subset_seed)
    return indices, f"{fraction:g}", fraction


def _loss(args: argparse.Namespace, num_classes: int) -> tuple[Any | None, nn.Module]:
    """Mixup/CutMix + soft-target CE, else label-smoothing CE, else plain CE (DeiT's order)."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if not 0.0 <= args.smoothing < 1.0:
        raise UserError(f"--smoothing must be in [0, 1), got {args.smoothing}")
    use_mixup = not args.no_mixup and (args.mixup > 0 or args.cutmix > 0) and args.mixup_prob > 0
    if use_mixup:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=args.smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return None, nn.CrossEntropyLoss()


def _timm_optimizer(text: str) -> str:
    """An optimizer name timm knows (a ``lookahead_`` prefix allowed), checked while the options are parsed."""
    import timm.optim
    name = text.lower()
    known = set(timm.optim.list_optimizers())
    if name not in known and name.split("_")[-1] not in known:
        raise argparse.ArgumentTypeError(f"unknown timm optimizer '{text}' (e.g. adamw, sgd, lamb, lion)")
    return name


def _plain(values: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
            if not k.startswith("_") and (v is None or isinstance(v, (str, int, float, bool, list, tuple)))}
