"""Released CONTAINER-LIGHT checkpoints load strictly and compute what the official blocks compute.

The checkpoint is synthetic: random tensors with exactly the released keys and shapes (from the shared
JSON key list). The references below use only those raw tensors and torch.nn.functional, never this
package's modules, so a wrong rename or a wrong head split would show up as a numeric mismatch.
"""

import copy
import json
import os
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import container_ssl  # noqa: F401  (registers the models)
from container_ssl.errors import UserError
from container_ssl.models import checkpoint_filter_fn, load_released_container_light

RELEASED_PARAMS = 20_633_643
HEADS = 16


def _keys_file() -> Path:
    env = os.environ.get("CONTAINER_SSL_SHARED_DATA")
    folder = Path(env) if env else Path(__file__).parents[2] / ".." / "shared" / "data"
    return folder / "container_light_official_keys.json"


@pytest.fixture(scope="module")
def official():
    path = _keys_file()
    if not path.is_file():
        msg = f"released key list not found at {path} (set CONTAINER_SSL_SHARED_DATA to its folder)"
        if os.environ.get("CONTAINER_SSL_REQUIRE_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    spec = json.loads(path.read_text())
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in spec["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", ".bias")):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("sa_weight"):
            state[key] = torch.randn(shape, generator=g)
        elif len(shape) == 1:  # norm weights
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # fan-in scaled so 18 blocks stay finite
            fan_in = torch.Size(shape[1:]).numel()
            state[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return spec, state


@pytest.fixture(scope="module")
def loaded(official):
    _, state = official
    model = timm.create_model("container_light_small")
    load_released_container_light(model, state)
    return model.eval()


def _d(state, key, dtype=torch.float64):
    return state[key].to(dtype)


def _bn(x, state, prefix):
    return F.batch_norm(x, _d(state, f"{prefix}.running_mean", x.dtype), _d(state, f"{prefix}.running_var", x.dtype),
                        _d(state, f"{prefix}.weight", x.dtype), _d(state, f"{prefix}.bias", x.dtype),
                        training=False, eps=1e-5)


def _conv(x, state, prefix, groups=1):
    weight = _d(state, f"{prefix}.weight", x.dtype)
    return F.conv2d(x, weight, _d(state, f"{prefix}.bias", x.dtype), padding=weight.shape[-1] // 2, groups=groups)


def _mlp(x, state, prefix):
    return _conv(F.gelu(_conv(x, state, f"{prefix}.fc1")), state, f"{prefix}.fc2")


def _official_cblock(x, state, p):
    c = x.shape[1]
    x = x + _conv(x, state, f"{p}.pos_embed", groups=c)
    h = _conv(_bn(x, state, f"{p}.norm1"), state, f"{p}.conv1")
    x = x + _conv(_conv(h, state, f"{p}.attn", groups=c), state, f"{p}.conv2")
    return x + _mlp(_bn(x, state, f"{p}.norm2"), state, f"{p}.mlp")


def _official_mixblock(x, state, p):
    b, c, hh, ww = x.shape
    d = c // HEADS
    x = x + _conv(x, state, f"{p}.pos_embed", groups=c)
    qkv = _conv(_bn(x, state, f"{p}.norm1"), state, f"{p}.conv1")
    q, k, v = (qkv[:, i * c:(i + 1) * c].reshape(b, HEADS, d, hh * ww) for i in range(3))
    affinity = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) * d ** -0.5, dim=-1)
    attn = torch.einsum("bhnm,bhdm->bhdn", affinity, v).reshape(b, c, hh, ww)
    conv = _conv(qkv[:, 2 * c:], state, f"{p}.conv", groups=c)
    alpha = torch.sigmoid(_d(state, f"{p}.sa_weight", x.dtype))
    x = x + _conv(alpha * attn + (1 - alpha) * conv, state, f"{p}.conv2")
    return x + _mlp(_bn(x, state, f"{p}.norm2"), state, f"{p}.mlp")


def _official_forward(x, state, dtype=torch.float64):
    depths = (3, 4, 8, 3)
    for stage, depth in enumerate(depths, start=1):
        p = f"patch_embed{stage}"
        x = F.conv2d(x, _d(state, f"{p}.proj.weight", dtype), _d(state, f"{p}.proj.bias", dtype),
                     stride=4 if stage == 1 else 2)
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], _d(state, f"{p}.norm.weight", dtype),
                         _d(state, f"{p}.norm.bias", dtype), eps=1e-5).permute(0, 3, 1, 2)
        for i in range(depth):
            block = _official_mixblock if stage == 4 else _official_cblock
            x = block(x, state, f"blocks{stage}.{i}")
    x = _bn(x, state, "norm").mean((2, 3))
    return F.linear(x, _d(state, "head.weight", dtype), _d(state, "head.bias", dtype))


def test_released_checkpoint_loads_strictly_with_released_param_count(official, loaded):
    spec, state = official
    assert sum(p.numel() for p in loaded.parameters()) == RELEASED_PARAMS == spec["params_total"]
    assert len(loaded.state_dict()) == len(state) == 422
    torch.testing.assert_close(loaded.stages[3].blocks[0].mixer.mix_logit, state["blocks4.0.sa_weight"])


def test_stage1_cblock_matches_official_computation(official, loaded):
    _, state = official
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        block = copy.deepcopy(loaded.stages[0].blocks[0]).double()
        torch.testing.assert_close(block(x), _official_cblock(x, state, "blocks1.0"),
                                   atol=1e-5, rtol=0)


def test_stage4_mixblock_matches_official_computation(official, loaded):
    _, state = official
    x = torch.randn(2, 512, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        block = copy.deepcopy(loaded.stages[3].blocks[1]).double()
        torch.testing.assert_close(block(x), _official_mixblock(x, state, "blocks4.1"),
                                   atol=1e-5, rtol=0)


def test_whole_model_matches_official_computation(official, loaded):
    # float32: CPU depthwise convs in float64 take a slow path; the float64 checks are the block tests above
    _, state = official
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = _official_forward(x, state, dtype=torch.float32)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)


def test_wrapped_and_native_dicts_and_files(official, loaded, tmp_path):
    _, state = official
    wrapped = {"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}}
    assert set(checkpoint_filter_fn(wrapped)) == set(loaded.state_dict())
    native = loaded.state_dict()
    assert checkpoint_filter_fn(native, loaded).keys() == native.keys()
    path = tmp_path / "released.pth"
    torch.save({"state_dict": state}, path)
    model = timm.create_model("container_light_small")
    assert load_released_container_light(model, path) == ([], [])


def test_other_architecture_is_one_readable_error(loaded):
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict()
    with pytest.raises(ValueError) as info:
        load_released_container_light(loaded, deit)
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys" in message and "unexpected keys" in message and "cls_token" in message


def test_wrong_size_reports_shape_mismatches(official):
    _, state = official
    tiny = timm.create_model("container_light_tiny")
    with pytest.raises(ValueError, match="shape mismatches"):
        load_released_container_light(tiny, state, strict=False)


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_released_container_light(timm.create_model("container_light_nano"), tmp_path / "nope.pth")
