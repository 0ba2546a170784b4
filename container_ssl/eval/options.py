"""The evaluator context: command-line options, and what they resolve to, shared by ``knn``, ``linear`` and
``finetune``.

Why: the three commands must read a checkpoint, find the data and pick the device the same way, so a
user learns the flags once and each command's module holds its protocol only. Anything not given on the
command line comes from the run's PretrainConfig (data path and splits, image size, normalisation), so
``container-ssl knn --checkpoint runs/x/checkpoint.pt`` evaluates on the data the run was trained on.
Results go next to the checkpoint (``<run>/eval``), where ``container-ssl report`` looks for them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..argtypes import float_range, int_range
from ..data import build_dataset
from ..distributed import pick_device
from ..errors import UserError
from ..run import eval_dir, read_checkpoint
from .backbone import load_backbone, preprocessing, scratch_backbone
from .features import cached_features
from .finite import require_finite_features
from .knn import check_class_sets
from .seeding import seed_everything
from .transforms import eval_transform

__all__ = [
    "DataSpec",
    "EvalContext",
    "add_checkpoint_args",
    "add_data_args",
    "add_runtime_args",
    "write_json",
]


def add_checkpoint_args(parser: argparse.ArgumentParser, required: bool = True) -> argparse._ArgumentGroup:
    """The ``weights`` options; the group is returned so that a command can add its own (finetune's --init)."""
    g = parser.add_argument_group("weights")
    g.add_argument("--checkpoint", required=required, metavar="PATH",
                   help="pretraining checkpoint (<run>/checkpoint.pt), a released Container-Light file, "
                        "or a plain timm state_dict (then --model is needed)")
    g.add_argument("--checkpoint-key", default="teacher", choices=("teacher", "student"),
                   help="which network of a pretraining checkpoint to evaluate (default: teacher, as DINO)")
    g.add_argument("--model", default=None, metavar="NAME",
                   help="architecture; default: the checkpoint's config.model.name")
    g.add_argument("--patch-size", type=int_range(1), default=None,
                   help="DeiT patch size / Container stem stride; default: the checkpoint's config")
    return g


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="ImageFolder root with train/ and val/, a .tar/.tar.gz of one, or cifar10; "
                        "default: the checkpoint's config.data.path")
    g.add_argument("--train-split", default=None, help="default: config.data.train_split or 'train'")
    g.add_argument("--val-split", default=None, help="default: config.data.val_split or 'val'")
    g.add_argument("--data-cache-dir", default=None, metavar="DIR",
                   help="where archives are extracted; default: config.data.cache_dir or ~/.cache/container-ssl")
    g.add_argument("--img-size", type=int_range(1), default=None,
                   help="evaluation image size; default: the pretraining global crop size")
    g.add_argument("--crop-ratio", type=float_range(0, 1, lo_open=True), default=None,
                   help="resize to img_size/crop_ratio then centre-crop (default 0.875, or 1.0 at <= 64 px)")


def add_runtime_args(parser: argparse.ArgumentParser, batch_size: int = 256, feature_cache: bool = False) -> None:
    """The ``runtime`` options, after the ``feature cache`` ones of the frozen evaluators (knn, linear)."""
    if feature_cache:
        g = parser.add_argument_group("feature cache")
        g.add_argument("--feature-cache", default=None, metavar="DIR",
                       help="folder of cached features, shared by knn and linear (default: <output-dir>/feature_cache)")
        g.add_argument("--no-feature-cache", action="store_true", help="always recompute features")
    g = parser.add_argument_group("runtime")
    g.add_argument("--batch-size", type=int_range(1), default=batch_size, help=f"default {batch_size}")
    g.add_argument("--num-workers", type=int_range(0), default=min(4, os.cpu_count() or 1),
                   help="data-loading processes (default: min(4, CPU cores); 0 = in-process)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    g.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    g.add_argument("--output-dir", default=None, metavar="DIR", help="default: <checkpoint's folder>/eval")


@dataclass
class DataSpec:
    """Where the evaluation data is and how its images are prepared."""

    path: str
    train_split: str
    val_split: str
    cache_dir: str
    img_size: int
    mean: tuple
    std: tuple
    on_bad_image: str = "skip"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "train_split": self.train_split, "val_split": self.val_split,
                "img_size": self.img_size, "mean": list(self.mean), "std": list(self.std)}


@dataclass
class EvalContext:
    """What an evaluation command works with, resolved once from its command line."""

    args: argparse.Namespace
    model: nn.Module
    info: dict[str, Any]  # load_backbone's: checkpoint, sha256, checkpoint_key, format, model, config, ...
    data: DataSpec
    output_dir: Path
    device: torch.device
    feature_cache: str = ""  # '' = no cache (finetune, or --no-feature-cache)
    started: float = field(default_factory=time.time)

    @classmethod
    def from_args(cls, args: argparse.Namespace, weights: bool = True, drop_path_rate: float = 0.0) -> EvalContext:
        """Seed (when the command has ``--seed``), read the checkpoint once, build the backbone (with its
        weights, or randomly initialised when ``weights`` is false), resolve data, output folder and device."""
        started = time.time()
        if getattr(args, "seed", None) is not None:
            seed_everything(args.seed)
        ckpt = read_checkpoint(args.checkpoint) if args.checkpoint else None
        shape = (args.model, args.img_size, args.patch_size)
        if weights:
            model, info = load_backbone(ckpt, args.checkpoint_key, *shape, drop_path_rate=drop_path_rate)
        else:
            model, info = scratch_backbone(ckpt, *shape, drop_path_rate=drop_path_rate)
        data = resolve_data(args, info)
        out = resolve_output_dir(args, args.checkpoint)
        cache = ""
        if hasattr(args, "feature_cache") and not getattr(args, "no_feature_cache", False):
            cache = str(args.feature_cache or out / "feature_cache")
        return cls(args=args, model=model, info=info, data=data, output_dir=out, device=pick_device(args.device),
                   feature_cache=cache, started=started)

    @property
    def runtime(self) -> dict[str, Any]:
        """Batch size, device, workers and precision, as the feature extractors take them."""
        a = self.args
        return {"batch_size": a.batch_size, "device": self.device, "num_workers": a.num_workers,
                "use_amp": not a.no_amp}

    @property
    def weights(self) -> dict[str, Any]:
        """Which weights were evaluated, for the command's JSON report."""
        i = self.info
        return {"checkpoint": i["checkpoint"], "checkpoint_sha256": i["sha256"],
                "checkpoint_key": i["checkpoint_key"], "model": i["model"]}

    def split(self, which: str, transform: Any = None) -> Any:
        """The ``train`` or ``val`` split's dataset (the centre-crop evaluation transform by default)."""
        d = self.data
        if transform is None:
            transform = eval_transform(d.img_size, d.mean, d.std, self.args.crop_ratio)
        return build_dataset(d.path, d.train_split if which == "train" else d.val_split, transform=transform,
                             cache_dir=d.cache_dir, on_bad_image=d.on_bad_image)

    def splits(self, train_transform: Any = None) -> tuple[Any, Any]:
        """Train and val datasets, refused when they do not list the same classes."""
        train, val = self.split("train", train_transform), self.split("val")
        check_class_sets(train.classes, val.classes)
        return train, val

    def features(self, which: str, dataset: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached frozen features of a ``train``/``val`` dataset, refused when not finite."""
        f, y = cached_features(self.model, self.info, dataset, self.feature_cache, desc=f"{which} features",
                               **self.runtime, **kwargs)
        require_finite_features(f, self.what(which))
        return f, y

    def what(self, which: str) -> str:
        """``<split> features of <checkpoint>``: how error messages name a split's features."""
        split = self.data.train_split if which == "train" else self.data.val_split
        return f"{split} features of {self.info['checkpoint']}"

    def write_report(self, name: str, report: dict[str, Any]) -> Path:
        """Write ``<output-dir>/<name>``, adding the wall time since the context was built; returns its path."""
        return write_json(self.output_dir / name, {**report, "wall_time_s": round(time.time() - self.started, 2)})


def resolve_data(args: argparse.Namespace, info: dict[str, Any]) -> DataSpec:
    """Command-line values first, then the run's PretrainConfig, then defaults."""
    config = info.get("config")
    data = config.data if config is not None else None
    path = args.data or (data.path if data is not None else None)
    if not path:
        raise UserError("no data: pass --data PATH (the checkpoint's config does not name its dataset)")
    img_size, mean, std = preprocessing(info, args.img_size)
    cache_dir = args.data_cache_dir if args.data_cache_dir is not None else (data.cache_dir if data else "")
    return DataSpec(path=str(path), train_split=args.train_split or (data.train_split if data else "train"),
                    val_split=args.val_split or (data.val_split if data else "val"), cache_dir=cache_dir or "",
                    img_size=img_size, mean=mean, std=std, on_bad_image=data.on_bad_image if data else "skip")


def resolve_output_dir(args: argparse.Namespace, checkpoint: str | None) -> Path:
    if args.output_dir:
        out = Path(args.output_dir)
    elif checkpoint:
        out = eval_dir(checkpoint)
    else:
        raise UserError("pass --output-dir (there is no checkpoint to put the results next to)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output dir {out}: {e.strerror or e}") from None
    return out


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
