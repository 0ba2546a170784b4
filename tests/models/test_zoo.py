"""The affinity zoo: each family is the shared backbone with only its affinity changed.

Checked from the built models' structure (the AffinityMixer of every block), not from hard-coded counts:
every family's ``_tiny`` / ``_small`` has container_light_tiny's / container_light_small's stage widths and
depths, and the affinities each family promises in each stage.
"""

import pytest
import timm
import torch

import container_ssl  # noqa: F401  (registers the models)
from container_ssl.models import AffinityMixer, create_backbone
from container_ssl.models.complexity import build_on_meta
from container_ssl.models.factory import container_names

# family -> affinity of each of the four stages
FAMILIES = {
    "container_light": ("conv", "conv", "conv", "mix"),
    "container": ("mix",) * 4,
    "container_attn": ("attention",) * 4,
    "container_mlp": ("mlp",) * 4,
    "container_pam": ("pam",) * 4,
}
ZOO = [f"{family}_{size}" for family in FAMILIES for size in ("tiny", "small")
       if f"{family}_{size}" in container_names()]
REFERENCE = {"tiny": "container_light_tiny", "small": "container_light_small"}


def _build(name, **kwargs):
    return build_on_meta(lambda: create_backbone(name, img_size=32, patch_size=2, **kwargs))


def _stage_kinds(model):
    return [[block.mixer.affinity for block in stage.blocks] for stage in model.stages]


def _shape(model):
    return [(info["num_chs"], len(stage.blocks)) for info, stage in zip(model.feature_info, model.stages)]


def test_every_family_has_tiny_and_small_and_timm_lists_them():
    listed = set(timm.list_models("container*"))
    for family in FAMILIES:
        for size in ("tiny", "small"):
            assert f"{family}_{size}" in listed and f"{family}_{size}" in container_names()


@pytest.mark.parametrize("name", ZOO)
def test_family_affinities_and_shared_sizes(name):
    family, size = name.rsplit("_", 1)
    model = _build(name)
    kinds = _stage_kinds(model)
    mixers = [m for m in model.modules() if isinstance(m, AffinityMixer)]
    assert len(mixers) == sum(len(stage) for stage in kinds)  # every block has its mixer, nothing else mixes
    assert [set(stage) for stage in kinds] == [{kind} for kind in FAMILIES[family]]
    assert _shape(model) == _shape(_build(REFERENCE[size]))


@pytest.mark.parametrize("name", [n for n in ZOO if "attn" in n or "pam" in n or n.startswith("container_small")])
def test_attention_heads_are_one_width_per_family(name):
    """Dynamic stages keep a constant head width (64 channels at _small, 32 at _tiny) across the stages."""
    model = _build(name)
    widths = {block.mixer.dim // block.mixer.num_heads for stage in model.stages for block in stage.blocks}
    assert widths == {64 if name.endswith("_small") else 32}


@pytest.mark.parametrize("name", ["container_mlp_tiny", "container_pam_tiny"])
def test_fixed_size_families_refuse_other_sizes_in_words(name):
    torch.manual_seed(0)
    model = create_backbone(name, img_size=32, patch_size=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 256)
        with pytest.raises(ValueError, match=r"built for a 16x16 feature map.*8x8.*img_size"):
            model(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("name", ["container_pam_tiny", "container_small"])
def test_mixed_families_start_at_an_even_mix(name):
    model = create_backbone(name, img_size=32, patch_size=2)
    blocks = [block for stage in model.stages for block in stage.blocks]
    alphas = [block.mixer.mix_weight().item() for block in blocks]
    assert alphas and all(a == pytest.approx(0.5) for a in alphas)
