"""The unified affinity operator of CONTAINER and the block built around it.

Why: the paper's central claim is that self-attention, depthwise convolution and MLP-Mixer token mixing
are one operator, ``Y = ((alpha * A_dyn(X) + beta * A_static) V) W + X``, that differs only in where the
token affinity ``A`` comes from. :class:`AffinityMixer` implements exactly that product for NCHW feature
maps so every variant (and every mix of them) shares one code path, and :class:`ContainerBlock` wraps it
with the positional conv, the norms and the channel MLP of the released CONTAINER-LIGHT.

Affinity kinds:

``attention``  dynamic: multi-head ``softmax(Q K^T / sqrt(d))`` with q, k, v from one 1x1 conv ``qkv``.
``conv``       static: a depthwise k x k conv applied to ``V`` (V from a 1x1 conv ``v``).
``mlp``        static: a learnable dense N x N token affinity (MLP-Mixer), shared across channels.
``mix``        ``sigmoid(m) * attention + (1 - sigmoid(m)) * conv`` on the same V (released CONTAINER-LIGHT
               stage 4 and CONTAINER).
``pam``        ``sigmoid(m) * attention + (1 - sigmoid(m)) * mlp`` on the same V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from ..errors import InvalidArgument

__all__ = ["AFFINITY_KINDS", "AffinityMixer", "ContainerBlock", "StaticTokenAffinity"]

AFFINITY_KINDS = ("attention", "conv", "mlp", "mix", "pam")

_DYNAMIC = frozenset({"attention", "mix", "pam"})
_STATIC_CONV = frozenset({"conv", "mix"})
_STATIC_MLP = frozenset({"mlp", "pam"})
_MIXED = frozenset({"mix", "pam"})


class StaticTokenAffinity(nn.Module):
    """A learnable dense N x N affinity over the token axis, shared by all channels (MLP-Mixer).

    Why its own module: it is the only affinity whose parameters depend on the input resolution, so it
    owns the token-count check and can say which input size the model was built for.
    """

    def __init__(self, num_tokens: int, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        if num_tokens < 1:
            raise InvalidArgument(f"mlp affinity needs a positive token count, got {num_tokens}; "
                                  "pass img_size so the feature-map size is known")
        self.num_tokens = num_tokens
        self.grid = grid
        self.weight = nn.Parameter(torch.empty(num_tokens, num_tokens))
        self.bias = nn.Parameter(torch.empty(num_tokens))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same rule as the model's Linear layers: a small init keeps the static path near zero at the start.
        trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        b, c, h, w = v.shape
        if h * w != self.num_tokens:
            built = f"{self.grid[0]}x{self.grid[1]}" if self.grid else f"{self.num_tokens} tokens"
            raise InvalidArgument(f"mlp affinity was built for a {built} feature map ({self.num_tokens} tokens) "
                                  f"but got {h}x{w} ({h * w} tokens); feed inputs of the img_size the model was "
                                  "created with, or create it with the new img_size")
        return F.linear(v.flatten(2), self.weight, self.bias).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}"


class AffinityMixer(nn.Module):
    """Token mixer ``((alpha * A_dyn + beta * A_static) V) W`` on NCHW maps; the residual is the block's.

    Args:
        dim: channels C.
        affinity: one of :data:`AFFINITY_KINDS`.
        num_heads: attention heads (dynamic kinds only); must divide ``dim``.
        kernel_size: static conv affinity size (odd, padded to keep the map size).
        num_tokens: token count N for the ``mlp``/``pam`` kinds (fixed at construction).
        grid: the (H, W) behind ``num_tokens``, only used to word error messages.
    """

    def __init__(
            self,
            dim: int,
            affinity: str = "conv",
            num_heads: int = 16,
            kernel_size: int = 5,
            num_tokens: int | None = None,
            grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if affinity not in AFFINITY_KINDS:
            raise InvalidArgument(f"unknown affinity {affinity!r}; use one of {', '.join(AFFINITY_KINDS)}")
        self.dim = dim
        self.affinity = affinity
        self.has_dynamic = affinity in _DYNAMIC

        if self.has_dynamic:
            if num_heads < 1 or dim % num_heads:
                raise InvalidArgument(f"attention heads ({num_heads}) must divide the stage width ({dim}); "
                                      "choose a head count that divides it")
            self.num_heads = num_heads
            # One 1x1 conv makes [q | k | v]; V is shared with the static path in the mixed kinds.
            self.qkv = nn.Conv2d(dim, dim * 3, 1)
        else:
            self.num_heads = 0
            self.v = nn.Conv2d(dim, dim, 1)

        if affinity in _STATIC_CONV:
            if kernel_size < 1 or kernel_size % 2 == 0:
                raise InvalidArgument(f"conv affinity kernel_size must be odd and positive, got {kernel_size}")
            self.static_conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        if affinity in _STATIC_MLP:
            if num_tokens is None:
                raise InvalidArgument(f"the {affinity!r} affinity needs a fixed token count; "
                                      "create the model with img_size set to the input size")
            self.static_mlp = StaticTokenAffinity(num_tokens, grid)
        if affinity in _MIXED:
            # Logit 0 -> the mix starts at 0.5 / 0.5, like the released model's sa_weight.
            self.mix_logit = nn.Parameter(torch.zeros(1))

        self.proj = nn.Conv2d(dim, dim, 1)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[q | k | v]`` map -> three ``(B, heads, N, head_dim)`` tensors, heads split inside each third."""
        b, _, h, w = qkv.shape
        head_dim = self.dim // self.num_heads
        # (B, 3, heads, head_dim, N) -> three (B, heads, N, head_dim) tensors
        q, k, v = qkv.reshape(b, 3, self.num_heads, head_dim, h * w).transpose(-1, -2).unbind(1)
        return q, k, v

    def dynamic(self, qkv: torch.Tensor) -> torch.Tensor:
        """Multi-head softmax attention from a ``[q | k | v]`` map."""
        b, _, h, w = qkv.shape
        q, k, v = self.split_heads(qkv)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(-1, -2).reshape(b, self.dim, h, w)

    def attention_map(self, qkv: torch.Tensor) -> torch.Tensor:
        """The dynamic affinity ``softmax(Q K^T / sqrt(d))`` itself, ``(B, heads, N, N)`` (for inspection).

        Why not from :meth:`dynamic`: the fused kernel never materialises the matrix; this recomputes it
        from the same head split, so what is shown is what the forward pass used.
        """
        q, k, _ = self.split_heads(qkv)
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)

    def static(self, v: torch.Tensor) -> torch.Tensor:
        """The input-independent affinity applied to V (depthwise conv or dense token MLP)."""
        if self.affinity in _STATIC_CONV:
            return self.static_conv(v)
        return self.static_mlp(v)

    def mix_weight(self) -> torch.Tensor:
        """alpha = sigmoid(m): the share of the dynamic affinity in the mixed kinds."""
        return torch.sigmoid(self.mix_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_dynamic:
            qkv = self.qkv(x)
            out = self.dynamic(qkv)
            if self.affinity in _MIXED:
                alpha = self.mix_weight()
                out = alpha * out + (1.0 - alpha) * self.static(qkv[:, 2 * self.dim:])
        else:
            out = self.static(self.v(x))
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, affinity={self.affinity!r}, num_heads={self.num_heads}"


class ContainerBlock(nn.Module):
    """One CONTAINER block: positional conv, affinity mixing, channel MLP, each with a residual.

    Why BatchNorm: the released CONTAINER-LIGHT normalises blocks with BatchNorm2d (LayerNorm only in the
    patch embeddings); keeping it makes released checkpoints load one-to-one.
    """

    def __init__(
            self,
            dim: int,
            affinity: str = "conv",
            mlp_ratio: float = 4.0,
            num_heads: int = 16,
            kernel_size: int = 5,
            num_tokens: int | None = None,
            grid: tuple[int, int] | None = None,
            drop_path: float = 0.0,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        self.mixer = AffinityMixer(dim, affinity, num_heads=num_heads, kernel_size=kernel_size,
                                   num_tokens=num_tokens, grid=grid)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, use_conv=True)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path1(self.mixer(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x
