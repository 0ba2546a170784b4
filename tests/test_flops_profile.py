"""benchmarks/flops_profile.py counts what a DINO step computes, op kind by op kind.

Reference: FLOPs computed by hand for single layers (multiply-add = 2 FLOPs). A convolution's backward
is one forward pass for the input gradient and one for the weight gradient, depthwise or not; torch's
FlopCounterMode formula ignores ``groups`` in the backward, which overcounted Container-Light's
depthwise convolutions (the profile had them at 42% of Container-Light-S's step instead of 1.4%).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "flops_profile.py"
spec = importlib.util.spec_from_file_location("flops_profile", PATH)
flops_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flops_profile)


def _count(layer: nn.Module, x: torch.Tensor, backward: bool = True) -> dict[str, float]:
    counter = flops_profile.OpKindCounter()
    x = x.requires_grad_(True)
    with counter:
        y = layer(x)
        if backward:
            y.backward(torch.ones_like(y))
    return dict(counter.flops)


def test_depthwise_and_dense_convolutions_forward_and_backward():
    n, c, h, k = 2, 16, 8, 5
    with torch.device("meta"):
        depthwise = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
        dense = nn.Conv2d(c, 32, 1, bias=False)
        x = torch.empty(n, c, h, h)
    one_pass = 2 * n * c * h * h * k * k                  # each output element: k*k multiply-adds
    counted = _count(depthwise, x)
    assert counted["depthwise conv"] == 3 * one_pass     # forward + grad input + grad weight
    assert "conv" not in counted
    dense_pass = 2 * n * 32 * h * h * c
    assert _count(dense, x.clone())["conv"] == 3 * dense_pass


def test_linear_attention_norm_and_elementwise_kinds():
    with torch.device("meta"):
        linear = nn.Linear(64, 32)
        x = torch.empty(4, 10, 64)
        a, b = torch.empty(4, 10, 8), torch.empty(4, 8, 10)
    assert _count(linear, x, backward=False)["linear"] == 2 * 40 * 64 * 32
    counter = flops_profile.OpKindCounter()
    with counter:
        s = torch.bmm(a, b)                               # 4 x 10 x 10 outputs, 8 multiply-adds each
        s = s.softmax(-1)
        nn.functional.layer_norm(s, (10,))
        s + 1
    assert counter.flops["matmul-attention"] == 2 * 4 * 10 * 10 * 8
    assert counter.flops["norm"] == flops_profile.NORM_FLOPS_PER_ELEMENT * 400
    assert counter.flops["elementwise"] == 400 + 400      # softmax and the add: one per output element
