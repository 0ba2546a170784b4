"""FLOPs of one DINO step per backbone, split by op kind: where a GPU step's time will go, known ahead of time.

The step is the one the trainer runs (ImageNet preset by default): the student (backbone + DINO head)
forward and backward on 2 global + N local crops (crops of one size batched together, as
MultiCropWrapper does), and the teacher forward on the 2 global crops. It is traced on the ``meta``
device, so nothing is computed and the count takes seconds on any CPU.

Counting: matmul-like ops (convolution, mm/addmm, bmm/baddbmm, attention) with torch's own formulas
(``torch.utils.flop_counter``, the ones FlopCounterMode uses), forward and backward as they are
dispatched, except a convolution's backward: it is counted as one forward pass for the input gradient
and one for the weight gradient, because torch's backward formula ignores ``groups`` and puts a depthwise
convolution's backward at ~4.5x its forward (which inflated Container-Light's step by half). Convolutions are split into dense and depthwise (``groups == in_channels``); mm/addmm are
the linear layers, bmm/baddbmm/scaled-dot-product the attention matmuls. Norms (batch/layer/group norm and
their backward) count a nominal 5 FLOPs per output element and every other pointwise or reduction op 1 per
output element: they are memory-bound, so their FLOP share understates their share of the time, which is
why the table also gives their element counts (the bytes they move, up to the dtype's size).

    python benchmarks/flops_profile.py                                  # ImageNet preset, batch 64
    python benchmarks/flops_profile.py --models container_light_small --json benchmarks/results/flops.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry

from container_ssl.models import DINOHead
from container_ssl.models.factory import backbone_names, create_backbone
from container_ssl.ssl.dino import MultiCropWrapper

PRESETS = {  # global size, local size, local crops, DeiT patch / Container stem stride
    "imagenet": {"global_size": 224, "local_size": 96, "n_local": 8, "patch": {"deit": 16, "container": 4}},
    "cifar": {"global_size": 32, "local_size": 16, "n_local": 6, "patch": {"deit": 4, "container": 1}},
}
KINDS = ["conv", "depthwise conv", "matmul-attention", "linear", "norm", "elementwise"]
aten = torch.ops.aten
ATTENTION = {aten.bmm, aten.baddbmm, aten._scaled_dot_product_efficient_attention,
             aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_cudnn_attention,
             aten._scaled_dot_product_efficient_attention_backward, aten._scaled_dot_product_flash_attention_backward,
             aten._scaled_dot_product_cudnn_attention_backward}
LINEAR = {aten.mm, aten.addmm}
CONV = {aten.convolution, aten.convolution_backward}
NORM_NAMES = ("batch_norm", "layer_norm", "group_norm")
NORM_FLOPS_PER_ELEMENT = 5


class OpKindCounter(TorchDispatchMode):
    """FLOPs and output elements per op kind, for every op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[str, float] = defaultdict(float)
        self.elements: dict[str, float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        kind, flops = self.classify(packet, func, args, kwargs, out)
        if kind is not None:
            self.flops[kind] += flops
            self.elements[kind] += _numel(out)
        return out

    @staticmethod
    def classify(packet, func, args, kwargs, out) -> tuple[str | None, float]:
        if packet in flop_registry and (packet in CONV or packet in LINEAR or packet in ATTENTION):
            if packet in CONV:
                if packet is aten.convolution:
                    inp, weight, out_shape, transposed, groups, passes = (args[0], args[1], out.shape, args[6],
                                                                          args[8], 1)
                else:  # each of grad_input and grad_weight costs one forward pass (torch's backward formula
                    # ignores groups and counts a depthwise backward as a dense one)
                    inp, weight, out_shape, transposed, groups = args[1], args[2], args[0].shape, args[7], args[9]
                    passes = int(args[10][0]) + int(args[10][1])
                flops = passes * conv_flop_count(inp.shape, weight.shape, out_shape, transposed)
                depthwise = groups > 1 and groups == inp.shape[1]
                return ("depthwise conv" if depthwise else "conv"), flops
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
            return ("linear" if packet in LINEAR else "matmul-attention"), flops
        name = packet.__name__
        if any(n in name for n in NORM_NAMES):  # the normalised tensor, not the saved mean/rstd beside it
            return "norm", NORM_FLOPS_PER_ELEMENT * _numel(out[0] if isinstance(out, (tuple, list)) else out)
        tags = getattr(func, "tags", ())
        is_float = isinstance(out, torch.Tensor) and out.is_floating_point()
        if is_float and (torch.Tag.pointwise in tags or torch.Tag.reduction in tags or "softmax" in name):
            return "elementwise", _numel(out)
        return None, 0.0


def _numel(out) -> float:
    if isinstance(out, torch.Tensor):
        return float(out.numel())
    if isinstance(out, (tuple, list)):
        return sum(_numel(o) for o in out)
    return 0.0


def build(model: str, preset: dict, out_dim: int) -> MultiCropWrapper:
    family = "deit" if model.startswith("deit") else "container"
    backbone = create_backbone(model, img_size=preset["global_size"], patch_size=preset["patch"][family])
    return MultiCropWrapper(backbone, DINOHead(backbone.num_features, out_dim=out_dim))


def profile(model: str, preset: dict, batch: int, out_dim: int) -> dict:
    """FLOPs per op kind of one DINO step (student forward + backward on all crops, teacher forward)."""
    with torch.device("meta"):
        student, teacher = build(model, preset, out_dim).train(), build(model, preset, out_dim).train()
        g, loc = preset["global_size"], preset["local_size"]
        views = [torch.empty(batch, 3, g, g)] * 2 + [torch.empty(batch, 3, loc, loc)] * preset["n_local"]
    parts = {}
    for part in ("teacher forward", "student forward", "student backward"):
        counter = OpKindCounter()
        if part == "teacher forward":
            with torch.no_grad(), counter:
                teacher(views[:2])
        elif part == "student forward":
            with counter:
                out = student(views)
        else:
            grad = torch.ones_like(out)
            with counter:
                out.backward(grad)
        parts[part] = counter
    flops = {k: sum(c.flops[k] for c in parts.values()) for k in KINDS}
    elements = {k: sum(c.elements[k] for c in parts.values()) for k in KINDS}
    total = sum(flops.values())
    return {"model": model, "batch": batch, "total_flops": total, "flops_per_image": total / batch,
            "by_part": {p: sum(c.flops.values()) for p, c in parts.items()},
            "by_kind": flops, "share": {k: flops[k] / total for k in KINDS}, "elements": elements}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="imagenet")
    p.add_argument("--models", nargs="+", default=backbone_names())
    p.add_argument("--batch-size", type=int, default=64, help="images per step (per GPU); default 64 as in the configs")
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--json")
    args = p.parse_args()
    preset = PRESETS[args.preset]
    rows = [profile(m, preset, args.batch_size, args.out_dim) for m in args.models]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"DINO step, {args.preset} preset: 2x{preset['global_size']} + {preset['n_local']}x{preset['local_size']} "
          f"crops, batch {args.batch_size}, head out_dim {args.out_dim}; FLOPs (multiply-add = 2)")
    head = ["model", "GFLOP/step", "GFLOP/img", "teacher fwd", "student fwd", "student bwd", *KINDS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" + "---:|" * (len(head) - 1))
    for r in rows:
        parts = [f"{100 * v / r['total_flops']:.1f}%" for v in r["by_part"].values()]
        shares = [f"{100 * r['share'][k]:.1f}%" for k in KINDS]
        print(f"| {r['model']} | {r['total_flops'] / 1e9:,.0f} | {r['flops_per_image'] / 1e9:.1f} | "
              + " | ".join(parts + shares) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "preset": args.preset,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
