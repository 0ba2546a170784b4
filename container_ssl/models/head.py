"""The DINO projection head (Caron et al., 2021).

Why this shape: DINO projects backbone features through an MLP to a low-dimensional bottleneck, L2-normalises
it and scores it against ``out_dim`` prototypes with a weight-normalised linear layer. Normalising both sides
makes the logits cosine similarities, and fixing the prototype magnitude (``norm_last_layer``) is DINO's main
guard against collapse. The weight norm uses ``torch.nn.utils.parametrizations.weight_norm``; the old
``torch.nn.utils.weight_norm`` hook is deprecated.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..errors import InvalidArgument

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """MLP -> L2-normalise -> weight-normalised prototypes.

    Args:
        in_dim: backbone feature width.
        out_dim: number of prototypes K.
        use_bn: BatchNorm1d after each hidden Linear.
        norm_last_layer: freeze the prototype magnitude at 1 (pure cosine logits).
        nlayers: Linear layers in the MLP (>= 1).
        hidden_dim: MLP hidden width.
        bottleneck_dim: width before the prototypes.
    """

    def __init__(
            self,
            in_dim: int,
            out_dim: int = 65536,
            use_bn: bool = False,
            norm_last_layer: bool = True,
            nlayers: int = 3,
            hidden_dim: int = 2048,
            bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise InvalidArgument(f"DINO head nlayers must be at least 1, got {nlayers}")
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise InvalidArgument(f"DINO head sizes must be positive (in_dim={in_dim}, out_dim={out_dim}, "
                                  f"hidden_dim={hidden_dim}, bottleneck_dim={bottleneck_dim})")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            widths = [in_dim] + [hidden_dim] * (nlayers - 1)
            for a, b in pairwise(widths):
                layers.append(nn.Linear(a, b))
                if use_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for layer in self.mlp.modules():  # DINO's init: trunc-normal(0.02) weights, zero biases
            if isinstance(layer, nn.Linear):
                trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad = not norm_last_layer
        self.norm_last_layer = norm_last_layer

    def last_layer_params(self) -> list[nn.Parameter]:
        """Prototype parameters; DINO drops their gradients during the first epoch(s) to stabilise training."""
        return list(self.last_layer.parameters())

    def cancel_last_layer_gradients(self) -> None:
        """Drop the prototypes' gradients so the optimiser step leaves them as they are (DINO's frozen start).

        Why the head decides: it knows which of its parameters are the prototypes; matching parameter names
        from outside breaks as soon as a backbone has a layer of a similar name.
        """
        for p in self.last_layer_params():
            p.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)
