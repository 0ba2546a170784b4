"""Parameter and MAC counts, measured the same way for every backbone.

Why measured rather than formula-based: the paper reports GMACs of conv + matmul work, and
``torch.utils.flop_counter.FlopCounterMode`` counts exactly those ops (convolutions, matmuls and fused
attention) for any model, ours or timm's. Counting on the ``meta`` device costs no memory and no compute,
so the ``models`` CLI and the tests can measure the 20 M-param models at 224 px instantly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["build_on_meta", "count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not); buffers such as BatchNorm statistics are not parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one eval-mode forward of a single ``img_size`` image (FLOPs / 2)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without allocating or initialising weights (only for counting)."""
    with torch.device("meta"):
        return factory()
