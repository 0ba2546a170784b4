"""Rebuild a frozen backbone from any checkpoint the evaluators accept.

Why one loader: kNN, the linear probe and finetuning must evaluate exactly the same network. Three kinds
of file are accepted, recognised by their contents rather than by flags:

* this package's pretraining checkpoint (``config`` + ``teacher``/``student`` of a MultiCropWrapper): the
  architecture is rebuilt from ``config['model']`` and only the ``backbone.`` entries are kept (the DINO
  head is a pretraining device, never evaluated);
* a released CONTAINER-LIGHT checkpoint (official key names ``patch_embed1.``/``blocks1.``), mapped onto
  this package's names by :func:`container_ssl.models.loading.load_released_container_light`;
* a plain timm ``state_dict`` (optionally under ``model``/``state_dict``), for which ``--model`` says the
  architecture.

Loading is strict: a key that does not fit means the wrong ``--model``/``--patch-size`` and would silently
evaluate random weights, so every mismatch is listed in one :class:`UserError`. The only tolerated
difference is a classifier head, which evaluation never uses. A DeiT position embedding is resampled when
the evaluation image size differs from the pretraining one (timm's ``resample_abs_pos_embed``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint, strip_prefixes
from ..errors import UserError
from ..models import backbone_names, create_backbone
from ..models.loading import load_released_container_light
from .finite import require_finite_weights

__all__ = ["RELEASED_DEFAULT_MODEL", "build_model", "file_sha256", "intermediate_count", "load_backbone"]

RELEASED_DEFAULT_MODEL = "container_light_small"
_WRAPPERS = ("model", "state_dict", "model_ema")
_SHOW = 4


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (identifies the evaluated weights in reports and feature caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def build_model(name: str, img_size: int | None = None, patch_size: int | None = None,
                drop_path_rate: float = 0.0, num_classes: int = 0) -> nn.Module:
    """The package's backbone factory; other timm model names (plain timm state_dicts) go to timm directly."""
    kwargs: dict[str, Any] = {"drop_path_rate": drop_path_rate, "num_classes": num_classes}
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    if patch_size is not None:
        kwargs["patch_size"] = int(patch_size)
    if name in backbone_names():
        return create_backbone(name, **kwargs)
    return _create_timm(name, kwargs)


def load_backbone(checkpoint: str | os.PathLike, checkpoint_key: str = "teacher", model: str | None = None,
                  img_size: int | None = None, patch_size: int | None = None,
                  drop_path_rate: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(backbone in eval mode on the CPU, info)``; ``model(x)`` gives pooled features ``[B, D]``.

    ``info`` holds ``checkpoint``, ``sha256``, ``checkpoint_key``, ``format`` (pretrain|released|timm),
    ``model``, ``img_size``, ``patch_size``, ``config`` (the pretraining config, or ``{}``) and ``epoch``.
    ``model``/``img_size``/``patch_size`` override what the checkpoint's config says.
    """
    path = Path(checkpoint)
    raw = load_checkpoint(path)
    config = raw.get("config") if isinstance(raw.get("config"), Mapping) else {}
    model_cfg = config.get("model") if isinstance(config.get("model"), Mapping) else None

    if model_cfg is not None:
        fmt = "pretrain"
        state = _pretrain_backbone_state(raw, checkpoint_key, path)
        require_finite_weights(state, f"{checkpoint_key} weights of {path}")
        name = model or model_cfg.get("name")
        if not name:
            raise UserError(f"checkpoint {path} has no config.model.name; pass --model")
        img_size = img_size or model_cfg.get("img_size")
        patch_size = patch_size if patch_size is not None else model_cfg.get("patch_size")
    else:
        state = _unwrap(raw, checkpoint_key)
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
        result = load_released_container_light(net, state, strict=False)
        extra = [k for k in result.unexpected_keys if not _is_head_key(net, k)]
        if result.missing_keys or extra:
            raise UserError(_mismatch_message(path, name, result.missing_keys, extra, []))
    else:
        _load_strict(net, state, path, name)
    net.eval()
    info = {
        "checkpoint": str(path),
        "sha256": file_sha256(path),
        "checkpoint_key": checkpoint_key if fmt == "pretrain" else None,
        "format": fmt,
        "model": name,
        "img_size": img_size,
        "patch_size": patch_size,
        "config": dict(config),
        "epoch": raw.get("epoch") if isinstance(raw.get("epoch"), int) else None,
    }
    return net, info


def intermediate_count(model: nn.Module) -> tuple[int, str] | None:
    """How many blocks (ViT) or stages (hierarchical) ``forward_intermediates`` can return, and which."""
    if isinstance(getattr(model, "cls_token", None), torch.Tensor) and hasattr(model, "blocks"):
        return len(model.blocks), "blocks"
    if hasattr(model, "stages"):
        return len(model.stages), "stages"
    info = getattr(model, "feature_info", None)
    return (len(info), "stages") if isinstance(info, list) and info else None


def _pretrain_backbone_state(raw: Mapping, key: str, path: Path) -> dict:
    if key not in raw:
        have = [k for k, v in raw.items() if isinstance(v, Mapping) and k != "config"]
        raise UserError(f"checkpoint {path} has no '{key}' weights (it has: {', '.join(have) or 'none'}); "
                        "use --checkpoint-key teacher or student")
    entry = raw[key]
    if not isinstance(entry, Mapping):
        raise UserError(f"checkpoint {path}: '{key}' is a {type(entry).__name__}, not a state dict "
                        "(parameter name -> tensor); the file was not written by container-ssl pretrain")
    odd = [f"{k} ({type(v).__name__})" for k, v in entry.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if odd:
        raise UserError(f"checkpoint {path}: '{key}' is not a state dict: {len(odd)} entries are not tensors "
                        f"({_names(odd)}); the file was not written by container-ssl pretrain")
    state = strip_prefixes(dict(entry), ("module.", "_orig_mod."))
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise UserError(f"checkpoint {path}: '{key}' holds no 'backbone.' weights; is it a pretraining checkpoint?")
    return strip_prefixes(backbone)


def _unwrap(raw: Mapping, key: str) -> dict:
    state: Mapping = raw
    for _ in range(4):
        inner = next((state[k] for k in (key, *_WRAPPERS) if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    return strip_prefixes({k: v for k, v in state.items() if torch.is_tensor(v)})


def _is_released_container(state: Mapping) -> bool:
    return "patch_embed1.proj.weight" in state and any(k.startswith("blocks1.") for k in state)


def _is_head_key(net: nn.Module, key: str) -> bool:
    classifier = getattr(net, "pretrained_cfg", {}).get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return any(key == h or key.startswith(h + ".") for h in (*heads, "head", "fc"))


def _load_strict(net: nn.Module, state: dict, path: Path, name: str) -> None:
    own = net.state_dict()
    _fit_pos_embed(net, state)
    state = {k: v for k, v in state.items() if k in own or not _is_head_key(net, k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise UserError(_mismatch_message(path, name, missing, unexpected, mismatched))
    net.load_state_dict(state, strict=True)


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


def _mismatch_message(path: Path, name: str, missing: list, unexpected: list, mismatched: list) -> str:
    parts = [f"{len(missing)} missing keys" + (f" ({_names(missing)})" if missing else ""),
             f"{len(unexpected)} unexpected keys" + (f" ({_names(unexpected)})" if unexpected else "")]
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({_names(mismatched)})")
    return (f"checkpoint {path} does not fit model '{name}': " + "; ".join(parts)
            + "; pass the right --model / --patch-size / --img-size")


def _names(keys: list) -> str:
    return ", ".join(keys[:_SHOW]) + (", ..." if len(keys) > _SHOW else "")


def _create_timm(name: str, kwargs: dict) -> nn.Module:
    import timm
    if not timm.is_model(name):
        raise UserError(f"unknown model '{name}'; see `container-ssl models` for the backbones")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError:  # architectures without img_size / patch_size
        kwargs = {k: v for k, v in kwargs.items() if k in ("drop_path_rate", "num_classes")}
        return timm.create_model(name, pretrained=False, **kwargs)
