"""create_backbone contract (pooled feature with num_classes=0), registration, and the ``models`` CLI."""

import pytest
import timm
import torch

import container_ssl  # noqa: F401  (registers the models)
from container_ssl.cli import main
from container_ssl.models import backbone_names, create_backbone, feature_dim

CONTAINERS = ["container_attn_small", "container_attn_tiny", "container_light_nano", "container_light_small",
              "container_light_tiny", "container_mlp_small", "container_mlp_tiny", "container_pam_small",
              "container_pam_tiny", "container_small", "container_tiny"]


def test_names_and_timm_registration():
    assert backbone_names() == CONTAINERS + ["deit_tiny", "deit_small"]
    for name in CONTAINERS:
        assert timm.is_model(name)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*container_light_tiny.*deit_small"):
        create_backbone("resnet50")


def test_container_returns_global_average_pooled_feature():
    torch.manual_seed(0)
    model = create_backbone("container_light_nano", img_size=32, patch_size=2).eval()
    assert model.stem_stride == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, feature_dim(model)) == (2, 128)
        torch.testing.assert_close(out, model.forward_features(x).mean((2, 3)))
        torch.testing.assert_close(out, model.forward_head(model.forward_features(x), pre_logits=True))


def test_deit_returns_cls_token_at_any_size():
    torch.manual_seed(0)
    model = create_backbone("deit_tiny", img_size=32, patch_size=4).eval()
    assert model.patch_embed.patch_size == (4, 4) and model.global_pool == "token"
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        out = model(x)
        assert out.shape == (2, feature_dim(model)) == (2, 192)
        torch.testing.assert_close(out, model.forward_features(x)[:, 0])
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # multi-crop: smaller local crops


def test_deit_bad_patch_size():
    with pytest.raises(ValueError, match="patch_size"):
        create_backbone("deit_tiny", img_size=32, patch_size=5)


def test_models_cli_markdown(capsys):
    assert main(["models", "--img-size", "32", "--patch-size", "1", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| model | params (M) | GMACs | stem/patch | feature dim |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| container", "| deit"))]
    assert len(rows) == len(CONTAINERS) + 2 and all(" | 1 | " in r for r in rows)


def test_models_cli_bad_size_is_one_line_error(capsys):
    assert main(["models", "--img-size", "30", "--patch-size", "1"]) == 2
    assert "30x30" in capsys.readouterr().err
