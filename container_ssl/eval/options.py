"""Command-line options and defaults shared by the ``knn``, ``linear`` and ``finetune`` commands.

Why: the three commands must read a checkpoint, find the data and pick the device the same way, so a
user learns the flags once. Anything not given on the command line comes from the pretraining
checkpoint's config (data path and splits, image size, normalisation), so
``container-ssl knn --checkpoint runs/x/checkpoint.pt`` evaluates on the data the run was trained on.
Results go next to the checkpoint (``<run>/eval``), where ``container-ssl report`` looks for them.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..argtypes import float_range, int_range
from ..data import build_dataset
from ..distributed import pick_device
from ..errors import UserError
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DataSpec",
    "add_checkpoint_args",
    "add_data_args",
    "add_feature_cache_args",
    "add_runtime_args",
    "build_split",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "resolve_data",
    "resolve_device",
    "resolve_feature_cache",
    "resolve_output_dir",
    "write_json",
]


positive_int = int_range(lo=1)
non_negative_int = int_range(lo=0)
positive_float = float_range(lo=0, lo_open=True)
non_negative_float = float_range(lo=0)
fraction = float_range(lo=0, hi=1, lo_open=True)  # (0, 1]
probability = float_range(lo=0, hi=1)  # [0, 1]


def add_checkpoint_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("weights")
    g.add_argument("--checkpoint", required=required, metavar="PATH",
                   help="pretraining checkpoint (<run>/checkpoint.pt), a released Container-Light file, "
                        "or a plain timm state_dict (then --model is needed)")
    g.add_argument("--checkpoint-key", default="teacher", choices=("teacher", "student"),
                   help="which network of a pretraining checkpoint to evaluate (default: teacher, as DINO)")
    g.add_argument("--model", default=None, metavar="NAME",
                   help="architecture; default: the checkpoint's config.model.name")
    g.add_argument("--patch-size", type=positive_int, default=None,
                   help="DeiT patch size / Container stem stride; default: the checkpoint's config")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="ImageFolder root with train/ and val/, a .tar/.tar.gz of one, or cifar10; "
                        "default: the checkpoint's config.data.path")
    g.add_argument("--train-split", default=None, help="default: config.data.train_split or 'train'")
    g.add_argument("--val-split", default=None, help="default: config.data.val_split or 'val'")
    g.add_argument("--data-cache-dir", default=None, metavar="DIR",
                   help="where archives are extracted; default: config.data.cache_dir or ~/.cache/container-ssl")
    g.add_argument("--img-size", type=positive_int, default=None,
                   help="evaluation image size; default: the pretraining global crop size")
    g.add_argument("--crop-ratio", type=fraction, default=None,
                   help="resize to img_size/crop_ratio then centre-crop (default 0.875, or 1.0 at <= 64 px)")


def add_runtime_args(parser: argparse.ArgumentParser, batch_size: int = 256) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"default {batch_size}")
    g.add_argument("--num-workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
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


def resolve_data(args: argparse.Namespace, config: dict | None = None, model_img_size: int | None = None
                 ) -> DataSpec:
    """Command-line values first, then the pretraining config, then defaults."""
    config = config or {}
    data = config.get("data") or {}
    aug = config.get("aug") or {}
    path = args.data or data.get("path")
    if not path:
        raise UserError("no data: pass --data PATH (the checkpoint's config does not name its dataset)")
    img_size = args.img_size or aug.get("global_size") or model_img_size or 224
    mean = tuple(aug.get("mean") or IMAGENET_MEAN)
    std = tuple(aug.get("std") or IMAGENET_STD)
    return DataSpec(path=str(path), train_split=args.train_split or data.get("train_split") or "train",
                    val_split=args.val_split or data.get("val_split") or "val",
                    cache_dir=args.data_cache_dir if args.data_cache_dir is not None else (data.get("cache_dir") or ""),
                    img_size=int(img_size), mean=mean, std=std, on_bad_image=data.get("on_bad_image") or "skip")


def build_split(spec: DataSpec, split: str, transform: Any) -> Any:
    """The dataset of one split (``container_ssl.data.build_dataset``)."""
    return build_dataset(spec.path, split, transform=transform, cache_dir=spec.cache_dir,
                         on_bad_image=spec.on_bad_image)


def resolve_output_dir(args: argparse.Namespace, checkpoint: str | None) -> Path:
    if args.output_dir:
        out = Path(args.output_dir)
    elif checkpoint:
        out = Path(checkpoint).resolve().parent / "eval"
    else:
        raise UserError("pass --output-dir (there is no checkpoint to put the results next to)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output dir {out}: {e.strerror or e}") from None
    return out


def resolve_feature_cache(args: argparse.Namespace, output_dir: Path) -> str:
    """``--feature-cache DIR``, ``''`` with ``--no-feature-cache``, else ``<output-dir>/feature_cache``."""
    if getattr(args, "no_feature_cache", False):
        return ""
    return str(getattr(args, "feature_cache", None) or output_dir / "feature_cache")


def add_feature_cache_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("feature cache")
    g.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="folder of cached features, shared by knn and linear (default: <output-dir>/feature_cache)")
    g.add_argument("--no-feature-cache", action="store_true", help="always recompute features")


def resolve_device(name: str) -> torch.device:
    return pick_device(name)


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
