"""Load an exported backbone (``container-ssl export``) back through timm, in one call.

Why through timm: the export is meant to leave this package behind, so loading it must be exactly what a
timm user would write (``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...),
num_classes=0, **model_args)``); this helper only reads ``config.json`` for the arguments. Importing
``container_ssl`` is still needed for the Container architectures (it registers them with timm).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
from torch import nn

from . import models  # noqa: F401  (registers the Container architectures with timm)
from .errors import UserError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def load_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """The exported backbone in eval mode; ``model(x)`` returns the pooled feature of the run's teacher.

    ``kwargs`` override the saved model arguments (e.g. ``num_classes=10`` for a fresh classifier head,
    which then stays randomly initialised).
    """
    folder = Path(path)
    cfg_path = folder / CONFIG_NAME
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{cfg_path} not found; pass a folder written by `container-ssl export`") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {cfg_path}: {e}; re-run `container-ssl export`") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise UserError(f"{cfg_path} names no 'architecture'; re-run `container-ssl export`")
    if not isinstance(cfg.get("model_args", {}), dict):
        raise UserError(f"{cfg_path}: 'model_args' must be a mapping; re-run `container-ssl export`")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"{weights} not found; pass a folder written by `container-ssl export`")
    args = {**cfg.get("model_args", {}), "num_classes": 0, **kwargs}
    overlay = {"file": str(weights)}
    if args["num_classes"] == 0:
        overlay["num_classes"] = 0  # same head size as the file: timm then loads strictly
    model = timm.create_model(cfg["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **args)
    return model.eval()
