"""``container-ssl models``: a table of every backbone with its params, GMACs, stem stride and feature width.

Why: choosing a backbone for a compute budget (e.g. DINO on CIFAR on a laptop CPU) needs the cost at the
*actual* input size and stem/patch stride, not at ImageNet's 224 px. Models are built on the ``meta``
device, so even the 20 M-param ones are measured instantly and without memory.
"""

from __future__ import annotations

import argparse
from functools import partial

from ..argtypes import int_range
from .complexity import build_on_meta, count_macs, count_params
from .factory import backbone_names, create_backbone, feature_dim

__all__ = ["configure_parser", "format_table", "run", "summary_rows"]

_HEADER = ("model", "params (M)", "GMACs", "stem/patch", "feature dim")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--img-size", type=int_range(lo=1), default=224, help="input size in pixels (default 224)")
    parser.add_argument("--patch-size", type=int_range(lo=1), default=None,
                        help="stem stride for Container (default 4) / patch size for DeiT (default 16)")
    parser.add_argument("--num-classes", type=int_range(lo=0), default=1000,
                        help="classifier outputs counted in the params (default 1000; 0 = backbone only)")
    parser.add_argument("--format", choices=("text", "markdown"), default="text",
                        help="plain text table (default) or a markdown table for the README")


def summary_rows(img_size: int = 224, patch_size: int | None = None, num_classes: int = 1000) -> list[tuple]:
    """One row per backbone: (name, params M, GMACs at ``img_size``, stem stride / patch, feature dim)."""
    rows = []
    for name in backbone_names():
        model = build_on_meta(partial(create_backbone, name, img_size=img_size, patch_size=patch_size,
                                      num_classes=num_classes))
        stride = getattr(model, "stem_stride", None) or model.patch_embed.patch_size[0]
        rows.append((name, count_params(model) / 1e6, count_macs(model, img_size) / 1e9, stride,
                     feature_dim(model)))
    rows.sort(key=lambda r: (r[0].startswith("deit"), r[1]))
    return rows


def format_table(rows: list[tuple], markdown: bool = False) -> str:
    cells = [_HEADER] + [(n, f"{p:.3f}", f"{g:.3f}", str(s), str(d)) for n, p, g, s, d in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join(["---"] + ["---:"] * (len(_HEADER) - 1)) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(_HEADER))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def run(args: argparse.Namespace) -> int:
    rows = summary_rows(args.img_size, args.patch_size, args.num_classes)
    print(f"# {args.img_size}x{args.img_size} input, {args.num_classes}-class head, "
          "GMACs = conv + matmul FLOPs / 2 (torch FlopCounterMode)")
    print(format_table(rows, markdown=args.format == "markdown"))
    return 0
