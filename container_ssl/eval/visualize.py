"""``container-ssl visualize``: what a pretrained backbone attends to, and how its affinities are mixed.

Why: DINO's best-known output is a picture of its attention, and the Container paper's analysis is about
affinities: how much each mixed block leans on the dynamic (attention) versus the static (conv) affinity,
and whether the static kernels are local and convolution-like. This command draws both from any
checkpoint the evaluators accept, and writes the same facts as numbers (``affinity.json``) so runs can be
compared without looking at pictures.

Per image (``<out>/<image stem>.png``):

* Container: one row per head of the last stage's attention: the attention from each query point
  (``--query``, the centre by default) and the mean attention each token receives, upsampled and laid
  over the image; the top row shows the image, the query points and alpha = sigmoid(m) per mixed block.
* DeiT: the CLS token's attention per head of the last block (DINO's picture); with ``--threshold`` also
  DINO's mask that keeps the tokens holding the top ``threshold`` of the attention mass.

Container also gets ``<out>/kernels.png``: per stage the mean ``|w|`` of the depthwise static kernels and
a sample of channels. ``affinity.json`` holds alpha per mixed block, the attention entropy per head and
the kernels' spatial spread (mean distance from the centre, weighted by ``|w|``) per stage.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..argtypes import int_range
from ..distributed import pick_device
from ..errors import UserError
from ..models.affinity_probe import (
    attention_entropy,
    kernel_spread,
    last_attention,
    mix_weights,
    static_kernels,
)
from .backbone import load_backbone, preprocessing
from .options import add_checkpoint_args, write_json

__all__ = ["dino_mask", "load_image", "query_index", "visualize"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Draw the last attention block per head over each image (Container: query points and "
                          "mean received attention; DeiT: CLS attention), the static kernels per stage, and "
                          "write affinity.json (alpha, attention entropy, kernel spread).")
    add_checkpoint_args(parser)
    parser.add_argument("--images", nargs="+", required=True, metavar="IMG", help="image files (PNG, JPEG ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--img-size", type=int_range(1), default=None,
                        help="images are resized to this square size; default: the run's global crop size")
    parser.add_argument("--query", nargs="+", default=["0.5,0.5"], metavar="ROW,COL",
                        help="Container query points as fractions of the height and width (default: the centre)")
    parser.add_argument("--threshold", type=float, default=None, metavar="MASS",
                        help="DeiT: also draw DINO's mask keeping the top MASS of the CLS attention (e.g. 0.6)")
    parser.add_argument("--samples", type=int_range(1), default=8, help="kernel channels shown per stage")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="default: cuda when available")


def run(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be between 0 and 1 (a share of the attention mass), got {args.threshold}")
    queries = [_parse_query(q) for q in args.query]
    net, info = load_backbone(args.checkpoint, args.checkpoint_key, args.model, patch_size=args.patch_size)
    img_size, mean, std = preprocessing(info, args.img_size)
    summary = visualize(net, [Path(p) for p in args.images], Path(args.out), img_size, mean, std, queries,
                        threshold=args.threshold, samples=args.samples, device=pick_device(args.device))
    summary.update({"checkpoint": info["checkpoint"], "checkpoint_key": info["checkpoint_key"],
                    "model": info["model"]})
    path = write_json(Path(args.out) / "affinity.json", summary)
    for name in summary["files"]:
        print(f"wrote {Path(args.out) / name}")
    print(f"wrote {path}")
    return 0


def visualize(net: torch.nn.Module, images: list[Path], out: Path, img_size: int, mean: tuple, std: tuple,
              queries: list[tuple[float, float]], threshold: float | None = None, samples: int = 8,
              device: torch.device | str = "cpu") -> dict[str, Any]:
    """Write the PNGs into ``out`` and return the numbers of ``affinity.json`` (without the checkpoint)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror or e}") from None
    net = net.eval().to(device)
    alpha = mix_weights(net)
    files, entropies = [], {}
    is_vit = getattr(net, "stages", None) is None
    for path in images:
        pixels = load_image(path, img_size)
        x = ((pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None].to(device)
        maps = last_attention(net, x)
        attn = maps.attn[0].float().cpu()
        entropies[path.name] = attention_entropy(maps.attn)
        name = _unique_png(path, files)
        if is_vit:
            fig = _vit_figure(pixels, attn, maps.grid, maps.prefix, threshold)
        else:
            fig = _container_figure(pixels, attn, maps.grid, queries, alpha)
        fig.savefig(out / name)
        files.append(name)
    kernels = static_kernels(net)
    spread = {f"stage{s}": kernel_spread(torch.cat([w for _, w in ks])) for s, ks in sorted(kernels.items())}
    if kernels:
        _kernel_figure(kernels, spread, samples).savefig(out / "kernels.png")
        files.append("kernels.png")
    heads = np.mean(list(entropies.values()), axis=0).tolist()
    tokens = maps.grid[0] * maps.grid[1] + maps.prefix
    return {
        "img_size": img_size,
        "block": maps.block,
        "tokens": tokens,
        "alpha": alpha,
        "attention_entropy": {"per_head": heads, "max": math.log(tokens), "per_image": entropies,
                              "unit": "nats, mean over queries"},
        "kernel_spread": spread,
        "kernel_spread_per_block": {n: kernel_spread(w) for ks in kernels.values() for n, w in ks},
        "files": files,
    }


def load_image(path: Path, size: int) -> torch.Tensor:
    """RGB image in [0, 1], ``(3, size, size)``, resized without cropping (so the whole picture is shown)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {path}: {e}; pass PNG/JPEG files") from None
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def query_index(query: tuple[float, float], grid: tuple[int, int]) -> int:
    """Token index of a (row, col) point given as fractions of the height and width."""
    row = min(int(query[0] * grid[0]), grid[0] - 1)
    col = min(int(query[1] * grid[1]), grid[1] - 1)
    return row * grid[1] + col


def dino_mask(attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """DINO's mask: keep the largest attention weights that together hold ``threshold`` of the mass.

    ``attn`` is ``(..., N)``; returns a bool tensor of the same shape.
    """
    values, order = torch.sort(attn, dim=-1)
    cumulative = torch.cumsum(values / values.sum(-1, keepdim=True), dim=-1)
    keep = cumulative > (1 - threshold)
    return torch.zeros_like(keep).scatter(-1, order, keep)


# ---- figures -----------------------------------------------------------------------------------------

def _parse_query(text: str) -> tuple[float, float]:
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--query {text!r} must be ROW,COL fractions such as 0.5,0.5") from None
    if not (0 <= row <= 1 and 0 <= col <= 1):
        raise UserError(f"--query {text!r}: ROW and COL are fractions of the image, between 0 and 1")
    return row, col


def _unique_png(path: Path, taken: list[str]) -> str:
    name, i = f"{path.stem}.png", 1
    while name in taken or name == "kernels.png":
        name, i = f"{path.stem}_{i}.png", i + 1
    return name


def _upsample(values: torch.Tensor, grid: tuple[int, int], size: int) -> np.ndarray:
    return F.interpolate(values.reshape(1, 1, *grid), size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def _overlay(ax: Any, pixels: torch.Tensor, values: torch.Tensor, grid: tuple[int, int], title: str) -> None:
    size = pixels.shape[-1]
    ax.imshow(pixels.permute(1, 2, 0).numpy())
    ax.imshow(_upsample(values, grid, size), cmap="inferno", alpha=0.6)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _figure(rows: int, cols: int) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.7 * cols, 1.7 * rows), dpi=110, layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _container_figure(pixels: torch.Tensor, attn: torch.Tensor, grid: tuple[int, int],
                      queries: list[tuple[float, float]], alpha: dict[str, float]) -> Any:
    heads = attn.shape[0]
    fig, axes = _figure(heads + 1, max(len(queries) + 1, 2))
    size = pixels.shape[-1]
    axes[0, 0].imshow(pixels.permute(1, 2, 0).numpy())
    for row, col in queries:
        axes[0, 0].plot((col * size,), (row * size,), marker="+", color="cyan", markersize=10, mew=2)
    axes[0, 0].set_title("image, query points", fontsize=7)
    if alpha:
        ax = axes[0, 1]
        ax.axis("on")
        names = [n.replace("stages.", "s").replace(".blocks.", ".b").replace(".mixer", "") for n in alpha]
        ax.barh(names, list(alpha.values()), color="tab:orange")
        ax.set_xlim(0, 1)
        ax.axvline(0.5, color="grey", linewidth=0.5)
        ax.tick_params(labelsize=6)
        ax.set_title("alpha = sigmoid(m)\n(dynamic share)", fontsize=7)
    for h in range(heads):
        for j, q in enumerate(queries):
            _overlay(axes[h + 1, j], pixels, attn[h, query_index(q, grid)], grid,
                     f"head {h}: from ({q[0]:.2f},{q[1]:.2f})")
        _overlay(axes[h + 1, len(queries)], pixels, attn[h].mean(0), grid, f"head {h}: mean received")
    return fig


def _vit_figure(pixels: torch.Tensor, attn: torch.Tensor, grid: tuple[int, int], prefix: int,
                threshold: float | None) -> Any:
    heads = attn.shape[0]
    cls = attn[:, 0, prefix:]  # (heads, patches): the CLS query over the patch tokens
    fig, axes = _figure(1 if threshold is None else 2, 1 + heads)
    axes[0, 0].imshow(pixels.permute(1, 2, 0).numpy())
    axes[0, 0].set_title("image", fontsize=7)
    for h in range(heads):
        _overlay(axes[0, h + 1], pixels, cls[h], grid, f"head {h}: CLS attention")
    if threshold is not None:
        masks = dino_mask(cls, threshold).float()
        for h in range(heads):
            up = _upsample(masks[h], grid, pixels.shape[-1]) >= 0.5
            axes[1, h + 1].imshow(pixels.permute(1, 2, 0).numpy() * up[..., None])
            axes[1, h + 1].set_title(f"head {h}: top {threshold:.0%} mass", fontsize=7)
    return fig


def _kernel_figure(kernels: dict[int, list[tuple[str, torch.Tensor]]], spread: dict[str, float], samples: int) -> Any:
    stages = sorted(kernels)
    fig, axes = _figure(len(stages), 1 + samples)
    for r, s in enumerate(stages):
        mean_abs = torch.cat([w for _, w in kernels[s]])[:, 0].abs().mean(0)  # over all channels of the stage
        axes[r, 0].imshow(mean_abs.numpy(), cmap="viridis")
        axes[r, 0].set_title(f"stage {s + 1}: mean |w|\nspread {spread[f'stage{s}']:.2f} px", fontsize=7)
        first = kernels[s][0][1][:, 0]
        picks = np.linspace(0, first.shape[0] - 1, min(samples, first.shape[0])).round().astype(int)
        for j, c in enumerate(picks):
            k = first[c].numpy()
            lim = float(np.abs(k).max()) or 1.0
            axes[r, j + 1].imshow(k, cmap="coolwarm", vmin=-lim, vmax=lim)
            axes[r, j + 1].set_title(f"ch {c}", fontsize=7)
    return fig
