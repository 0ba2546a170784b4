"""Rebuild a frozen backbone from any checkpoint the evaluators accept.

Why one loader: kNN, the linear probe and finetuning must evaluate exactly the same network. Three kinds
of file are accepted, recognised by their contents rather than by flags (:func:`container_ssl.run.read_checkpoint`):

* this package's pretraining checkpoint (``config`` + ``teacher``/``student`` of a MultiCropWrapper): the
  architecture is rebuilt from the run's PretrainConfig and only the ``backbone.`` entries are kept (the
  DINO head is a pretraining device, never evaluated);
* a released CONTAINER-LIGHT checkpoint (official key names ``patch_embed1.``/``blocks1.``), mapped onto
  this package's names by :func:`container_ssl.models.loading.checkpoint_filter_fn`;
* a plain timm ``state_dict`` (optionally under ``model``/``state_dict``), for which ``--model`` says the
  architecture.

Loading is strict (:func:`container_ssl.run.load_strict`): a key that does not fit means the wrong
``--model``/``--patch-size`` and would silently evaluate random weights, so every mismatch is listed in one
:class:`UserError`. The only tolerated difference is a classifier head, which evaluation never uses. A
DeiT position embedding is resampled when the evaluation image size differs from the pretraining one
(timm's ``resample_abs_pos_embed``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models import backbone_names, create_backbone
from ..models.loading import checkpoint_filter_fn
from ..run import RunCheckpoint, load_strict, read_checkpoint, unwrap_state_dict
from .finite import require_finite_weights
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["RELEASED_DEFAULT_MODEL", "build_model", "intermediate_count", "load_backbone", "preprocessing",
           "scratch_backbone"]

RELEASED_DEFAULT_MODEL = "container_light_small"


def build_model(name: str, img_size: int | None = None, patch_size: int | None = None,
                drop_path_rate: float = 0.0, num_classes: int = 0) -> nn.Module:
    """The package's backbone factory; other timm model names (plain timm state_dicts) go to timm directly."""
    kwargs: dict[str, Any] = {"drop_path_rate": drop_path_rate, "num_classes": num_classes}
    kwargs.update({k: int(v) for k, v in (("img_size", img_size), ("patch_size", patch_size)) if v is not None})
    if name in backbone_names():
        return create_backbone(name, **kwargs)
    import timm
    if not timm.is_model(name):
        raise UserError(f"unknown model '{name}'; see `container-ssl models` for the backbones")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError:  # architectures without img_size / patch_size
        return timm.create_model(name, pretrained=False, drop_path_rate=drop_path_rate, num_classes=num_classes)


def load_backbone(checkpoint: str | os.PathLike | RunCheckpoint, checkpoint_key: str = "teacher",
                  model: str | None = None, img_size: int | None = None, patch_size: int | None = None,
                  drop_path_rate: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(backbone in eval mode on the CPU, info)``; ``model(x)`` gives pooled features ``[B, D]``.

    ``checkpoint`` is a path or a file already read by :func:`container_ssl.run.read_checkpoint`. ``info``
    holds ``checkpoint``, ``sha256``, ``checkpoint_key``, ``format`` (pretrain|released|timm), ``model``,
    ``img_size``, ``patch_size``, ``config`` (the run's PretrainConfig, or None) and ``epoch``.
    ``model``/``img_size``/``patch_size`` override what the checkpoint's config says.
    """
    ckpt = checkpoint if isinstance(checkpoint, RunCheckpoint) else read_checkpoint(checkpoint)
    path, config = ckpt.path, ckpt.config
    if config is not None:
        fmt = "pretrain"
        state = ckpt.backbone(checkpoint_key)
        require_finite_weights(state, f"{checkpoint_key} weights of {path}")
        name = model or config.model.name
        img_size = img_size or config.model.img_size
        patch_size = patch_size if patch_size is not None else config.model.patch_size
    else:
        state = unwrap_state_dict(ckpt.raw, checkpoint_key)  # checkpoint_key is tried first among the wrappers
        if _is_released_container(state):
            fmt, name = "released", model or RELEASED_DEFAULT_MODEL
        else:
            fmt, name = "timm", model
            if not name:
                raise UserError(f"checkpoint {path} is a plain state_dict without a config; pass --model NAME "
                                "to say which architecture it holds")
        require_finite_weights(state, f"weights of {path}")

    net = build_model(name, img_size=img_size, patch_size=patch_size, drop_path_rate=drop_path_rate)
    if fmt == "released":
        state = checkpoint_filter_fn(state, net)
    _fit_pos_embed(net, state)
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own or not _is_head_key(net, k)}
    load_strict(net, state, path, f"model '{name}'", "pass the right --model / --patch-size / --img-size")
    net.eval()
    info = {
        "checkpoint": str(path),
        "sha256": ckpt.sha256,
        "checkpoint_key": checkpoint_key if fmt == "pretrain" else None,
        "format": fmt,
        "model": name,
        "img_size": img_size,
        "patch_size": patch_size,
        "config": config,
        "epoch": ckpt.epoch,
    }
    return net, info


def scratch_backbone(ckpt: RunCheckpoint | None, model: str | None = None, img_size: int | None = None,
                     patch_size: int | None = None, drop_path_rate: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """A randomly initialised backbone (the supervised baseline), shaped by ``ckpt``'s config when given.

    ``info`` is laid out as :func:`load_backbone`'s, with ``format`` ``scratch`` and no ``sha256``.
    """
    config = ckpt.config if ckpt is not None else None
    name = model or (config.model.name if config is not None else None)
    if not name:
        raise UserError("--init scratch needs --model NAME (or a --checkpoint whose config names the model)")
    if config is not None:
        img_size = img_size or config.model.img_size or config.aug.global_size
        patch_size = patch_size if patch_size is not None else config.model.patch_size
    net = build_model(name, img_size=img_size, patch_size=patch_size, drop_path_rate=drop_path_rate)
    info = {"checkpoint": None if ckpt is None else str(ckpt.path), "sha256": None, "checkpoint_key": None,
            "format": "scratch", "model": name, "img_size": img_size, "patch_size": patch_size, "config": config,
            "epoch": None}
    return net, info


def preprocessing(info: dict[str, Any], img_size: int | None = None) -> tuple[int, tuple, tuple]:
    """Image size and normalisation to evaluate with: ``img_size``, else the run's global crop size (else
    the model's, else 224); the run's mean/std (ImageNet's for files pretraining did not write)."""
    config = info.get("config")
    aug = config.aug if config is not None else None
    size = img_size or (aug.global_size if aug is not None else None) or info.get("img_size") or 224
    mean = tuple(aug.mean) if aug is not None else IMAGENET_MEAN
    std = tuple(aug.std) if aug is not None else IMAGENET_STD
    return int(size), mean, std


def intermediate_count(model: nn.Module) -> tuple[int, str] | None:
    """How many blocks (ViT) or stages (hierarchical) ``forward_intermediates`` can return, and which."""
    if isinstance(getattr(model, "cls_token", None), torch.Tensor) and hasattr(model, "blocks"):
        return len(model.blocks), "blocks"
    if hasattr(model, "stages"):
        return len(model.stages), "stages"
    info = getattr(model, "feature_info", None)
    return (len(info), "stages") if isinstance(info, list) and info else None


def _is_released_container(state: Mapping) -> bool:
    return "patch_embed1.proj.weight" in state and any(k.startswith("blocks1.") for k in state)


def _is_head_key(net: nn.Module, key: str) -> bool:
    classifier = getattr(net, "pretrained_cfg", {}).get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return any(key == h or key.startswith(h + ".") for h in (*heads, "head", "fc"))


def _fit_pos_embed(net: nn.Module, state: dict) -> None:
    """Resample a ViT position embedding saved at another image size onto this model's grid."""
    own = getattr(net, "pos_embed", None)
    saved = state.get("pos_embed")
    if not isinstance(own, torch.Tensor) or saved is None or saved.shape == own.shape or saved.ndim != 3:
        return
    from timm.layers import resample_abs_pos_embed
    prefix = 0 if getattr(net, "no_embed_class", False) else getattr(net, "num_prefix_tokens", 1)
    grid = net.patch_embed.grid_size
    old_tokens = saved.shape[1] - prefix
    old_side = round(old_tokens ** 0.5)
    if old_side * old_side != old_tokens:
        return  # not a square grid: leave it to the strict check to report
    state["pos_embed"] = resample_abs_pos_embed(saved, list(grid), [old_side, old_side], num_prefix_tokens=prefix)
