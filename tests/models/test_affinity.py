"""The unified affinity operator against independent PyTorch references (float64, atol 1e-5)."""

import pytest
import torch
from torch import nn

from container_ssl.models.affinity import AffinityMixer, ContainerBlock

B, C, H, W, HEADS = 2, 16, 4, 4, 4
N = H * W
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x():
    return torch.randn(B, C, H, W, dtype=torch.float64)


def _conv1x1_from(weight, bias):
    ref = nn.Conv2d(weight.shape[1], weight.shape[0], 1).double()
    with torch.no_grad():
        ref.weight.copy_(weight)
        ref.bias.copy_(bias)
    return ref


def _dwconv_from(conv):
    k = conv.kernel_size[0]
    ref = nn.Conv2d(C, C, k, padding=k // 2, groups=C).double()
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
        ref.bias.copy_(conv.bias)
    return ref


def _mha_from(mixer, with_proj=True):
    """nn.MultiheadAttention with the mixer's qkv (and optionally proj) weights."""
    mha = nn.MultiheadAttention(C, HEADS, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(mixer.qkv.weight.reshape(3 * C, C))
        mha.in_proj_bias.copy_(mixer.qkv.bias)
        if with_proj:
            mha.out_proj.weight.copy_(mixer.proj.weight.reshape(C, C))
            mha.out_proj.bias.copy_(mixer.proj.bias)
        else:
            mha.out_proj.weight.copy_(torch.eye(C))
            mha.out_proj.bias.zero_()
    return mha


def _attend(mha, x):
    tokens = x.flatten(2).transpose(1, 2)
    out, _ = mha(tokens, tokens, tokens, need_weights=False)
    return out.transpose(1, 2).reshape(B, C, H, W)


def _token_linear_from(static_mlp):
    ref = nn.Linear(N, N).double()
    with torch.no_grad():
        ref.weight.copy_(static_mlp.weight)
        ref.bias.copy_(static_mlp.bias)
    return ref


def _over_tokens(linear, v):
    return linear(v.flatten(2)).reshape(v.shape)


def _randomise(module):
    """Non-trivial values for parameters whose init is small or zero (static MLP, mix logit)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "static_mlp" in name:
                p.normal_(0, 0.3)


def test_attention_matches_multihead_attention():
    mixer = AffinityMixer(C, "attention", num_heads=HEADS).double()
    x = _x()
    torch.testing.assert_close(mixer(x), _attend(_mha_from(mixer), x), atol=ATOL, rtol=0)


def test_conv_matches_depthwise_conv_between_1x1_convs():
    mixer = AffinityMixer(C, "conv", kernel_size=5).double()
    v, dw, w = _conv1x1_from(mixer.v.weight, mixer.v.bias), _dwconv_from(mixer.static_conv), \
        _conv1x1_from(mixer.proj.weight, mixer.proj.bias)
    x = _x()
    torch.testing.assert_close(mixer(x), w(dw(v(x))), atol=ATOL, rtol=0)


def test_mlp_matches_dense_linear_over_tokens():
    mixer = AffinityMixer(C, "mlp", num_tokens=N).double()
    _randomise(mixer)
    v, w = _conv1x1_from(mixer.v.weight, mixer.v.bias), _conv1x1_from(mixer.proj.weight, mixer.proj.bias)
    linear = _token_linear_from(mixer.static_mlp)
    x = _x()
    torch.testing.assert_close(mixer(x), w(_over_tokens(linear, v(x))), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["mix", "pam"])
def test_mixed_affinity_is_sigmoid_weighted_sum_on_shared_v(kind):
    kwargs = {"num_tokens": N} if kind == "pam" else {}
    mixer = AffinityMixer(C, kind, num_heads=HEADS, **kwargs).double()
    _randomise(mixer)
    with torch.no_grad():
        mixer.mix_logit.fill_(0.8)
    x = _x()
    dynamic = _attend(_mha_from(mixer, with_proj=False), x)
    v = _conv1x1_from(mixer.qkv.weight[2 * C:], mixer.qkv.bias[2 * C:])(x)
    static = _dwconv_from(mixer.static_conv)(v) if kind == "mix" else \
        _over_tokens(_token_linear_from(mixer.static_mlp), v)
    alpha = torch.sigmoid(torch.tensor(0.8, dtype=torch.float64))
    expected = _conv1x1_from(mixer.proj.weight, mixer.proj.bias)(alpha * dynamic + (1 - alpha) * static)

    out = mixer(x)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    out.square().sum().backward()
    assert mixer.mix_logit.grad is not None and mixer.mix_logit.grad.abs().item() > 0


def _reference_mixer(mixer, x):
    """The mixer's output rebuilt from independent torch modules holding its weights, per affinity kind."""
    alpha = torch.sigmoid(mixer.mix_logit.detach()) if mixer.affinity in ("mix", "pam") else None
    if mixer.affinity == "attention":
        return _attend(_mha_from(mixer), x)
    proj = _conv1x1_from(mixer.proj.weight, mixer.proj.bias)
    if mixer.affinity in ("conv", "mlp"):
        v = _conv1x1_from(mixer.v.weight, mixer.v.bias)(x)
    else:
        v = _conv1x1_from(mixer.qkv.weight[2 * C:], mixer.qkv.bias[2 * C:])(x)
    static = _dwconv_from(mixer.static_conv)(v) if mixer.affinity in ("conv", "mix") else \
        _over_tokens(_token_linear_from(mixer.static_mlp), v)
    if alpha is None:
        return proj(static)
    return proj(alpha * _attend(_mha_from(mixer, with_proj=False), x) + (1 - alpha) * static)


@pytest.mark.parametrize("kind", ["mix", "pam"])
@pytest.mark.parametrize("logit, special_case", [(40.0, "attention"), (-40.0, "static")])
def test_mixed_affinity_reduces_to_its_special_cases(kind, logit, special_case):
    """alpha = 1 is plain multi-head attention; alpha = 0 is the static affinity alone (conv or token MLP)."""
    kwargs = {"num_tokens": N} if kind == "pam" else {}
    mixer = AffinityMixer(C, kind, num_heads=HEADS, **kwargs).double()
    _randomise(mixer)
    with torch.no_grad():
        mixer.mix_logit.fill_(logit)
    x = _x()
    if special_case == "attention":
        expected = _attend(_mha_from(mixer), x)
    else:
        v = _conv1x1_from(mixer.qkv.weight[2 * C:], mixer.qkv.bias[2 * C:])(x)
        static = _dwconv_from(mixer.static_conv)(v) if kind == "mix" else \
            _over_tokens(_token_linear_from(mixer.static_mlp), v)
        expected = _conv1x1_from(mixer.proj.weight, mixer.proj.bias)(static)
    torch.testing.assert_close(mixer(x), expected, atol=ATOL, rtol=0)


def test_mix_logit_starts_at_half():
    mixer = AffinityMixer(C, "mix", num_heads=HEADS)
    assert mixer.mix_logit.shape == (1,)
    assert mixer.mix_weight().item() == pytest.approx(0.5)


def test_mlp_wrong_token_count_names_the_needed_size():
    mixer = AffinityMixer(C, "mlp", num_tokens=N, grid=(H, W))
    with pytest.raises(ValueError, match=r"4x4.*16 tokens.*8x8"):
        mixer(torch.randn(B, C, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    ({"affinity": "nope"}, "unknown affinity"),
    ({"affinity": "attention", "num_heads": 3}, "heads"),
    ({"affinity": "mlp"}, "token count"),
    ({"affinity": "conv", "kernel_size": 4}, "odd"),
])
def test_bad_construction_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AffinityMixer(C, **kwargs)


@pytest.mark.parametrize("kind", ["attention", "conv", "mlp", "mix", "pam"])
def test_block_of_each_kind_matches_the_independent_reference(kind):
    """The whole block, with its token mixing recomputed by the kind's reference (MHA, depthwise conv, ...)."""
    block = ContainerBlock(C, kind, mlp_ratio=2, num_heads=HEADS, num_tokens=N, grid=(H, W)).double().eval()
    _randomise(block)
    if kind in ("mix", "pam"):
        with torch.no_grad():
            block.mixer.mix_logit.fill_(-0.6)
    x = _x()
    y = x + block.pos_embed(x)
    y = y + _reference_mixer(block.mixer, block.norm1(y))
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    y = y + _conv1x1_from(fc2.weight, fc2.bias)(nn.functional.gelu(_conv1x1_from(fc1.weight, fc1.bias)(block.norm2(y))))
    torch.testing.assert_close(block(x), y, atol=ATOL, rtol=0)


def test_block_is_positional_conv_plus_residual_mixer_and_mlp():
    block = ContainerBlock(C, "mix", mlp_ratio=2, num_heads=HEADS).double().eval()
    x = _x()
    y = x + block.pos_embed(x)
    y = y + block.mixer(block.norm1(y))
    y = y + block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x), y, atol=ATOL, rtol=0)
    assert block.mlp.fc1.out_channels == 2 * C and block.mlp.fc1.kernel_size == (1, 1)
    assert isinstance(block.norm1, nn.BatchNorm2d) and block.pos_embed.groups == C
