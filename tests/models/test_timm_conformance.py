"""timm's per-model contract for every registered Container model (and the DeiT baseline), on CPU.

Small inputs (32-64 px, stem_stride 1 for the CIFAR setting) and batch 2 keep the folder fast: the
20 M-param models run at 32 px (their last stage is then 1x1, the attention of container_small's early
stages is still exercised), and the 224-px checks run once, on container_light_small only.
"""

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

import container_ssl  # noqa: F401  (registers the models)
from container_ssl.models import backbone_names, create_backbone
from container_ssl.models.complexity import build_on_meta, count_macs, count_params
from container_ssl.models.factory import container_names

CONTAINERS = container_names()
ALL = backbone_names()
LIGHT = ["container_light_nano", "deit_tiny"] + [n for n in CONTAINERS if n.endswith("_tiny")]
HEAVY = [name for name in ALL if name not in LIGHT]
# (name, img_size, patch/stem stride): default stems, and the CIFAR setting for the small ones
CASES = ([(name, 64, None) for name in LIGHT] + [(name, 32, None) for name in HEAVY]
         + [("container_light_nano", 32, 1)] + [(name, 32, 1) for name in CONTAINERS if name.endswith("_tiny")])
CASE_IDS = [f"{n}-{s}px" + (f"-stem{p}" if p else "") for n, s, p in CASES]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(size, batch=2):
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize("name, size, stride", CASES, ids=CASE_IDS)
def test_forward_backward(name, size, stride):
    model = create_backbone(name, img_size=size, patch_size=stride, num_classes=10).train()
    out = model(_x(size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", ALL)
def test_default_cfg_and_classifier_reset(name):
    # img_size = the input size: the fixed-size (mlp / pam) families need it, the others ignore it
    model = create_backbone(name, num_classes=1000, img_size=32).eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == model.num_classes == 1000
    first_conv = model.get_submodule(cfg["first_conv"])
    assert first_conv.weight.shape[1] == 3
    classifier = model.get_submodule(cfg["classifier"])
    assert classifier is model.get_classifier() and classifier.out_features == 1000
    x = _x(32)
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
        model.reset_classifier(0)
        pooled = model(x)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(pooled, model.forward_head(model.forward_features(x), pre_logits=True))
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", LIGHT + ["container_light_small"])
def test_grad_checkpointing_is_equivalent(name):
    model = create_backbone(name, num_classes=0, img_size=32).eval()
    x = _x(32)
    expected = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), expected)


def test_grad_checkpointing_gives_same_gradients():
    model = create_backbone("container_light_nano", num_classes=0).train()
    x = _x(64)
    model(x).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], msg=n)


@pytest.mark.parametrize("name, size", [("container_light_nano", 64), ("container_light_tiny", 64),
                                        ("container_small", 32), ("container_attn_tiny", 64),
                                        ("container_mlp_tiny", 64), ("container_pam_tiny", 64)])
def test_forward_intermediates_and_features_only(name, size):
    model = timm.create_model(name, img_size=size).eval()
    x = _x(size)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert len(feats) == len(model.feature_info) == 4
        for feat, info in zip(feats, model.feature_info):
            assert feat.shape == (2, info["num_chs"], size // info["reduction"], size // info["reduction"])
        torch.testing.assert_close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[1], feats[3])
        features = timm.create_model(name, features_only=True, img_size=size).eval()
        maps = features(x)
    assert [m.shape[1] for m in maps] == features.feature_info.channels() == [i["num_chs"] for i in model.feature_info]
    assert features.feature_info.reduction() == [4, 8, 16, 32]


def test_prune_intermediate_layers():
    model = timm.create_model("container_light_nano").eval()
    assert model.prune_intermediate_layers((0, 1)) == [0, 1]
    assert len(model.stages) == 2 and model.num_features == 32 and isinstance(model.norm, torch.nn.Identity)
    with torch.no_grad():
        feats = model.forward_intermediates(_x(64), intermediates_only=True, indices=2)
    assert [f.shape[1] for f in feats] == [16, 32]


def test_optimizer_hooks():
    model = timm.create_model("container_light_nano")
    names = model.no_weight_decay()
    assert "stages.3.blocks.0.mixer.mix_logit" in names
    assert all(model.get_parameter(n).ndim <= 1 for n in names)
    grouped = group_parameters(model, model.group_matcher())
    assert sum(len(v) for v in grouped.values()) == len(list(model.parameters()))
    assert len(group_parameters(model, model.group_matcher(coarse=True))) == 6  # stem, 4 stages, norm
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_any_input_size():
    model = create_backbone("container_light_small").eval()
    with torch.no_grad():
        assert model(_x(224, batch=1)).shape == (1, 512)
        assert model(_x(96)).shape == (2, 512)
        for stride in (2, 1):
            small = create_backbone("container_light_small", img_size=32, patch_size=stride).eval()
            assert small.forward_features(_x(32)).shape[-1] == 32 // (stride * 8)
    with pytest.raises(ValueError, match=r"30x30.*total stride 32"):
        model(_x(30))
    with pytest.raises(ValueError, match=r"36x36.*total stride 8"):
        small(_x(36))


def test_released_size_and_cost():
    model = build_on_meta(lambda: timm.create_model("container_light_small"))
    assert count_params(model) == 20_633_643
    assert round(count_macs(model, 224) / 1e9, 2) == 3.85
    tiny = build_on_meta(lambda: timm.create_model("container_light_tiny"))
    assert 1e6 <= count_params(tiny) <= 3e6
