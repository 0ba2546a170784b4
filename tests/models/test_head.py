"""DINO projection head: hand-computed output, cosine logits, frozen prototype magnitude."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from container_ssl.models import DINOHead


def _head(**kw):
    torch.manual_seed(0)
    args = {"in_dim": 12, "out_dim": 20, "hidden_dim": 24, "bottleneck_dim": 8}
    args.update(kw)
    return DINOHead(**args).double()


def test_output_matches_hand_computation():
    head = _head()
    x = torch.randn(4, 12, dtype=torch.float64)
    l1, l2, l3 = [m for m in head.mlp if isinstance(m, nn.Linear)]
    h = F.linear(F.gelu(F.linear(F.gelu(F.linear(x, l1.weight, l1.bias)), l2.weight, l2.bias)), l3.weight, l3.bias)
    z = h / h.norm(dim=-1, keepdim=True)
    direction = head.last_layer.parametrizations.weight.original1
    prototypes = direction / direction.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ prototypes.T, atol=1e-10, rtol=0)


def test_logits_are_cosines_and_init_is_dino():
    head = _head()
    out = head(torch.randn(5, 12, dtype=torch.float64))
    assert out.shape == (5, 20) and out.abs().max() <= 1 + 1e-9
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(20, dtype=torch.float64))
    for layer in (m for m in head.mlp if isinstance(m, nn.Linear)):
        assert torch.all(layer.bias == 0) and layer.weight.std().item() < 0.03
    assert parametrize.is_parametrized(head.last_layer, "weight")  # new-style weight norm, not the hook


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_norm_last_layer_freezes_magnitude(norm_last_layer):
    head = _head(norm_last_layer=norm_last_layer)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert torch.all(magnitude == 1)
    assert magnitude.requires_grad is (not norm_last_layer)
    head(torch.randn(3, 12, dtype=torch.float64)).sum().backward()
    assert (magnitude.grad is None) is norm_last_layer
    assert head.last_layer.parametrizations.weight.original1.grad is not None
    assert {id(p) for p in head.last_layer_params()} == {id(p) for p in head.last_layer.parameters()}
    head.cancel_last_layer_gradients()  # the frozen first epoch(s): the prototypes get no update, the MLP does
    assert all(p.grad is None for p in head.last_layer.parameters())
    assert all(p.grad is not None for p in head.mlp.parameters())


def test_bn_and_depth_options():
    assert sum(isinstance(m, nn.BatchNorm1d) for m in _head(use_bn=True).mlp.modules()) == 2
    assert isinstance(_head(nlayers=1).mlp, nn.Linear)
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(12, nlayers=0)
