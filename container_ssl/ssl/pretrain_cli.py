"""``container-ssl pretrain``: the command line of :func:`container_ssl.ssl.trainer.pretrain`.

Why apart from the trainer: the training loop is a library function (plain process, torchrun, a submitit
job); reading a command line into its config is the command's business, and ``submit`` reuses
:func:`config_from_args` to validate a pretraining job before it is queued.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig

from ..config import OnNan, load_config
from ..run import CHECKPOINT
from .trainer import pretrain


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file from configs/pretrain/ (keys: container_ssl/config.py)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.epochs=10 data.path=/data/imagenet")
    p.add_argument("--output-dir", help="same as output_dir=...")
    p.add_argument("--resume", metavar="CKPT",
                   help="checkpoint to resume from (default: OUTPUT_DIR/checkpoint.pt when it exists)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUTPUT_DIR has a checkpoint")
    p.add_argument("--on-nan", choices=[m.value for m in OnNan],
                   help="non-finite loss: stop with the step number (default) or skip that step and count it")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume although the training set differs from the checkpoint's (the run is no longer exact)")


def config_from_args(args: argparse.Namespace) -> DictConfig:
    """The run's config from the pretrain command line (also used by ``submit`` to validate before submitting)."""
    overrides = list(args.overrides or [])
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.on_nan:
        overrides.append(f"on_nan={args.on_nan}")
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    summary = pretrain(cfg, resume=args.resume, auto_resume=not args.no_resume,
                       allow_data_change=args.allow_data_change)
    stopped = (summary or {}).get("stopped_by")
    if stopped:  # not finished: a non-zero status (128 + the signal), and where to go on from
        ckpt = Path(cfg.output_dir) / CHECKPOINT
        where = (f"checkpoint written to {ckpt}; run the same command again to resume" if ckpt.is_file()
                 else "no step was trained, no checkpoint written")
        print(f"stopped by {stopped} after iteration {summary['iteration']} of {summary['iterations']}: {where}",
              file=sys.stderr, flush=True)
        return 128 + int(signal.Signals[stopped])
    return 0
