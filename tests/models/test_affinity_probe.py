"""Affinity probes: attention maps against hand-computed ones, alpha, kernel spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from container_ssl.models import create_backbone
from container_ssl.models.affinity import AffinityMixer
from container_ssl.models.affinity_probe import (
    attention_entropy,
    kernel_spread,
    last_attention,
    mix_weights,
    static_kernels,
)


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mixer_attention_map_is_the_hand_computed_one():
    """dim 4, 2 heads, a 2x2 map: q, k from fixed 1x1-conv weights, softmax(q k^T / sqrt(2)) by hand."""
    torch.manual_seed(0)
    mixer = AffinityMixer(4, "mix", num_heads=2, kernel_size=3)
    w = torch.arange(48, dtype=torch.float32).reshape(12, 4, 1, 1) % 7 / 7 - 0.4
    with torch.no_grad():
        mixer.qkv.weight.copy_(w)
        mixer.qkv.bias.zero_()
    x = torch.tensor([[[[1.0, -1.0], [0.5, 2.0]], [[0.0, 1.0], [1.0, 0.0]],
                       [[-0.5, 0.5], [2.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]]])  # (1, 4, 2, 2)
    tokens = x[0].reshape(4, 4).T.numpy()  # (N=4 positions, C=4), row-major positions
    qkv = tokens @ w[:, :, 0, 0].numpy().T  # (4, 12): channels [q(4) | k(4) | v(4)]
    want = np.stack([_softmax(qkv[:, 2 * h:2 * h + 2] @ qkv[:, 4 + 2 * h:4 + 2 * h + 2].T / math.sqrt(2))
                     for h in range(2)])
    got = mixer.attention_map(mixer.qkv(x))
    np.testing.assert_allclose(got[0].detach().numpy(), want, rtol=1e-5, atol=1e-6)
    # and it is the matrix the forward pass used: attn @ V reproduces the fused dynamic output
    qkv_map = mixer.qkv(x)
    v = mixer.split_heads(qkv_map)[2]
    np.testing.assert_allclose((got @ v).transpose(-1, -2).reshape(1, 4, 2, 2).detach().numpy(),
                               mixer.dynamic(qkv_map).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_last_attention_of_container_and_deit_match_their_forward():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    net = create_backbone("container_light_nano", img_size=32, patch_size=2).eval()
    maps = last_attention(net, x)
    assert maps.block == "stages.3.blocks.0.mixer" and maps.grid == (2, 2) and maps.prefix == 0
    assert maps.attn.shape == (2, 4, 4, 4)
    torch.testing.assert_close(maps.attn.sum(-1), torch.ones(2, 4, 4))

    vit = create_backbone("deit_tiny", img_size=32, patch_size=8).eval()
    maps = last_attention(vit, x)
    assert maps.grid == (4, 4) and maps.prefix == 1 and maps.attn.shape == (2, 3, 17, 17)
    # reference: timm's own non-fused attention path on the last block's input
    block = vit.blocks[-1]
    seen = {}
    handle = block.norm1.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        vit(x)
    handle.remove()
    a = block.attn
    b, n, c = seen["x"].shape
    qkv = (seen["x"] @ a.qkv.weight.T + a.qkv.bias).reshape(b, n, 3, a.num_heads, c // a.num_heads)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    want = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // a.num_heads), -1)
    torch.testing.assert_close(maps.attn, want, rtol=1e-4, atol=1e-5)


def test_mix_weights_kernels_and_spread():
    net = create_backbone("container_light_nano", img_size=32, patch_size=2)
    with torch.no_grad():
        net.stages[3].blocks[0].mixer.mix_logit.fill_(1.5)
    assert mix_weights(net) == {"stages.3.blocks.0.mixer": pytest.approx(1 / (1 + math.exp(-1.5)))}
    kernels = static_kernels(net)
    assert sorted(kernels) == [0, 1, 2, 3] and kernels[0][0][1].shape == (16, 1, 5, 5)

    centre = torch.zeros(2, 1, 5, 5)
    centre[:, :, 2, 2] = 3.0
    assert kernel_spread(centre) == 0.0
    ring = torch.zeros(1, 1, 5, 5)
    ring[0, 0, 2, 0] = -1.0  # 2 px left of the centre
    ring[0, 0, 1, 1] = 1.0   # sqrt(2) px diagonal
    assert kernel_spread(ring) == pytest.approx((2 + math.sqrt(2)) / 2)
    # uniform kernel: the mean distance of the 25 taps from the centre
    d = [math.hypot(i - 2, j - 2) for i in range(5) for j in range(5)]
    assert kernel_spread(torch.ones(1, 1, 5, 5)) == pytest.approx(sum(d) / 25)


def test_attention_entropy_uniform_and_one_hot():
    uniform = torch.full((1, 2, 3, 8), 1 / 8)
    one_hot = torch.zeros(1, 1, 3, 8)
    one_hot[..., 0] = 1
    assert attention_entropy(uniform) == [pytest.approx(math.log(8))] * 2
    assert attention_entropy(one_hot) == [pytest.approx(0.0, abs=1e-12)]
