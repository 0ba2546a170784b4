"""Optimiser set-up for DINO: parameter groups, per-parameter clipping.

Why these rules (facebookresearch/dino's recipe):
- weight decay only on weights of rank ≥ 2; biases, norm parameters, the Container mix logits and any
  other 1-D parameter (and names the model lists in ``no_weight_decay``) get none, since decaying them
  pulls gates and scales towards zero for no regularisation benefit;
- gradients are clipped per parameter tensor (each tensor's norm ≤ clip), as DINO does, which damps the
  rare exploding layer without rescaling every other layer;
- the head's last layer gets no update in the first epoch(s), which DINO found stabilises the start: the
  head drops those gradients itself (:meth:`container_ssl.models.DINOHead.cancel_last_layer_gradients`).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..config import OptimizerName


def param_groups(model: nn.Module, skip_names: Iterable[str] = ()) -> list[dict]:
    """Two groups: ``regularized`` (weight decay follows the schedule) and ``not_regularized`` (wd 0)."""
    skip = set(skip_names)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = name.split("module.", 1)[-1]
        if p.ndim <= 1 or name.endswith(".bias") or any(short.endswith(s) or s in short for s in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "name": "regularized"},
            {"params": no_decay, "name": "not_regularized", "weight_decay": 0.0}]


def build_optimizer(name: OptimizerName | str, groups: list[dict], lr: float = 0.0,
                    fused: bool = False) -> torch.optim.Optimizer:
    """AdamW (DINO's default for ViT-like backbones) or SGD with momentum 0.9; lr is set per iteration."""
    if OptimizerName(name) is OptimizerName.adamw:  # ValueError if not a member
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("name") == "regularized":
            group["weight_decay"] = wd


@torch.no_grad()
def clip_per_parameter(parameters: Iterable[nn.Parameter], clip: float) -> torch.Tensor:
    """Scale each gradient tensor so its L2 norm is at most ``clip``; returns the norms before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    scale = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, scale.tolist())
    return norms
