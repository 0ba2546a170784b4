"""Read a backbone's affinities: attention maps, the dynamic share alpha, and the static kernels.

Why a probe module: the Container paper's analysis is about *which* affinity a block leans on (alpha =
sigmoid(m) of the mixed blocks) and *what* the static affinities look like (local, convolution-like
kernels), and DINO's best-known output is the last block's attention. None of that is a model output, so
it is read here with forward hooks and from the parameters, leaving the models untouched. The attention
is recomputed from the very ``qkv`` activation of the forward pass, with the model's own head split
(:meth:`AffinityMixer.attention_map`; timm's ``Attention`` layout for ViTs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidArgument
from .affinity import AffinityMixer

__all__ = ["AttentionMaps", "attention_entropy", "kernel_spread", "last_attention", "mix_weights",
           "static_kernels"]


@dataclass
class AttentionMaps:
    """The attention of one block: ``attn`` ``(B, heads, N, N)`` over ``prefix`` extra tokens + a ``grid``."""

    attn: torch.Tensor
    grid: tuple[int, int]
    prefix: int
    block: str


def mix_weights(model: nn.Module) -> dict[str, float]:
    """alpha = sigmoid(m) of every mixed block (``mix``/``pam`` affinities), by module name."""
    return {name: float(m.mix_weight().detach().reshape(())) for name, m in model.named_modules()
            if isinstance(m, AffinityMixer) and hasattr(m, "mix_logit")}


def static_kernels(model: nn.Module) -> dict[int, list[tuple[str, torch.Tensor]]]:
    """The depthwise static-conv kernels ``(C, 1, k, k)`` of every Container stage, by stage index."""
    out: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, m in model.named_modules():
        if isinstance(m, AffinityMixer) and hasattr(m, "static_conv"):
            stage = int(name.split(".")[1]) if name.startswith("stages.") else -1
            out.setdefault(stage, []).append((name, m.static_conv.weight.detach().cpu()))
    return out


def kernel_spread(weight: torch.Tensor) -> float:
    """Mean distance from the kernel centre weighted by ``|w|`` (in pixels), averaged over channels.

    A kernel that only uses its centre tap scores 0; one spread evenly over a 5x5 window about 1.9.
    """
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"kernel_spread needs (C, 1, k, k) kernels, got {tuple(weight.shape)}")
    k = weight.shape[-1]
    r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    dist = (r[:, None] ** 2 + r[None, :] ** 2).sqrt()
    mag = weight.detach().double().abs().flatten(0, 1)  # (C, k, k)
    per_channel = (mag * dist).sum((-2, -1)) / mag.sum((-2, -1)).clamp_min(1e-12)
    return float(per_channel.mean())


def attention_entropy(attn: torch.Tensor) -> list[float]:
    """Per head: the entropy (nats) of each query's attention row, averaged over queries and images."""
    ent = -(attn.double() * attn.double().clamp_min(1e-30).log()).sum(-1)  # (B, heads, N)
    return [float(v) for v in ent.mean((0, 2))]


def last_attention(model: nn.Module, x: torch.Tensor) -> AttentionMaps:
    """Run ``model(x)`` once and return the attention of its last attention block.

    Container: the last block of the last stage that has a dynamic affinity. ViT (timm): the last block.
    """
    name, attn_module = _last_attention_module(model)
    captured: dict[str, torch.Tensor] = {}
    handle = attn_module.qkv.register_forward_hook(lambda _module, _inputs, output: captured.update(qkv=output))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    qkv = captured["qkv"]
    if isinstance(attn_module, AffinityMixer):
        return AttentionMaps(attn_module.attention_map(qkv), tuple(qkv.shape[-2:]), 0, name)
    b, n, _ = qkv.shape
    q, k, _ = qkv.reshape(b, n, 3, attn_module.num_heads, attn_module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn_module.q_norm(q), attn_module.k_norm(k)
    attn = torch.softmax((q * attn_module.scale) @ k.transpose(-2, -1), dim=-1)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    patch = model.patch_embed.patch_size
    grid = (x.shape[-2] // patch[0], x.shape[-1] // patch[1])
    if grid[0] * grid[1] != n - prefix:
        raise InvalidArgument(f"cannot map {n - prefix} attention tokens onto a {grid[0]}x{grid[1]} patch grid")
    return AttentionMaps(attn, grid, prefix, name)


def _last_attention_module(model: nn.Module) -> tuple[str, nn.Module]:
    """(block name, attention module): a Container :class:`AffinityMixer` or a timm ViT ``Attention``."""
    stages = getattr(model, "stages", None)
    if stages is not None:
        last = len(stages) - 1
        dynamic = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, AffinityMixer) and m.has_dynamic and name.startswith(f"stages.{last}.")]
        if not dynamic:
            raise InvalidArgument(f"{type(model).__name__} has no attention (dynamic affinity) in its last stage; "
                                  "visualize needs a model with an attention, mix or pam stage 4")
        return dynamic[-1]
    blocks = getattr(model, "blocks", None)
    attn = getattr(blocks[-1], "attn", None) if blocks is not None and len(blocks) else None
    if attn is None or not hasattr(attn, "qkv"):
        raise InvalidArgument(f"{type(model).__name__} is neither a Container nor a timm ViT; "
                              "visualize supports the backbones listed by `container-ssl models`")
    return f"blocks.{len(blocks) - 1}.attn", attn
