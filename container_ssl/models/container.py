"""CONTAINER and CONTAINER-LIGHT (Gao et al., NeurIPS 2021) as timm-registered models.

Why here: DINO, k-NN/linear evaluation and layer-wise lr decay all talk to backbones through timm's
interface (``forward_features``, ``forward_head``, ``reset_classifier``, ``group_matcher``,
``forward_intermediates`` ...), so the backbone is written as a timm model and registered with
``@register_model``; ``import container_ssl`` makes ``timm.create_model("container_light_small")`` work.

Layout: a ``stem`` (the stage-1 patch embedding, stride ``stem_stride``), then four ``stages``, each a
stride-2 patch embedding (``downsample``; identity in stage 1) followed by :class:`ContainerBlock` s, a final
BatchNorm ``norm``, global average pooling and a Linear ``head``. ``stem_stride`` defaults to 4 (ImageNet);
use 1 or 2 for 32-px CIFAR so the last stage is not 1x1.

Registered models (params with a 1000-class head, GMACs at 224 px with the default stem):

``container_light_small``  the released CONTAINER-LIGHT: dims 64/128/320/512, depths 3/4/8/3, MLP ratios
                           8/8/4/4, conv/conv/conv/mix affinities, 16 heads in stage 4 (20.63 M, 3.85 GMACs).
``container_small``        CONTAINER, the paper's full model: same sizes, ``mix`` in every stage with
                           ``dim // 64`` heads (1/2/5/8), i.e. 64-channel heads throughout.
``container_light_tiny``   a CPU-friendly CONTAINER-LIGHT for DINO on CIFAR: dims 32/64/128/256, depths
                           1/1/3/1, MLP ratio 4, 8 heads in stage 4.
``container_tiny``         CONTAINER at container_light_tiny's sizes (``mix`` everywhere, 32-channel heads).
``container_light_nano``   the smallest one, for tests: dims 16/32/64/128, depths 1/1/1/1, 4 heads.

The affinity zoo, each family at ``_small`` (Container-Light-S's dims, depths and MLP ratios) and ``_tiny``
(container_light_tiny's); only the affinity (and the heads it needs) changes:

``container_attn_*``       attention in every stage: a hierarchical DeiT (64- / 32-channel heads).
``container_mlp_*``        the static dense token affinity in every stage: a hierarchical multi-head MLP-Mixer.
                           Built for one ``img_size`` (its N x N affinities); other sizes are refused.
``container_pam_*``        attention + static MLP affinity mixed by a learnt alpha (the paper's CONTAINER-PAM);
                           fixed ``img_size`` like ``container_mlp``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d, SelectAdaptivePool2d, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ..errors import InvalidArgument
from .affinity import AFFINITY_KINDS, ContainerBlock
from .loading import checkpoint_filter_fn

__all__ = ["Container", "ContainerStage", "PatchEmbed"]

IntOrSeq = int | Sequence[int]


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: Conv(kernel = stride = p) then LayerNorm over channels.

    Why LayerNorm here but BatchNorm in the blocks: that is how the released model normalises, and
    matching it keeps released checkpoints loadable.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size=stride, stride=stride)
        self.norm = LayerNorm2d(out_chs, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ContainerStage(nn.Module):
    """A patch embedding (identity for stage 1, whose embedding is the model's stem) then blocks."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = PatchEmbed(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _per_stage(value, num_stages: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * num_stages
    if len(values) != num_stages:
        raise InvalidArgument(f"{name} has {len(values)} entries but the model has {num_stages} stages; "
                              f"give one value per stage")
    return values


class Container(nn.Module):
    """CONTAINER / CONTAINER-LIGHT backbone with a timm-native interface.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs; 0 makes ``forward`` return the pooled feature.
        global_pool: timm pool type for the head ('avg'; '' keeps the map).
        dims: channels per stage.
        depths: blocks per stage.
        mlp_ratios: channel-MLP expansion per stage (one value or one per stage).
        affinities: affinity kind per stage (see :mod:`container_ssl.models.affinity`).
        num_heads: attention heads per stage (one value or one per stage; conv/mlp stages ignore it).
        kernel_size: static conv affinity size.
        stem_stride: patch size of the stage-1 embedding; later stages always halve the map.
        img_size: only needed by the fixed-size ``mlp``/``pam`` affinities (their token count).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate, increased linearly over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            dims: Sequence[int] = (64, 128, 320, 512),
            depths: Sequence[int] = (3, 4, 8, 3),
            mlp_ratios: float | Sequence[float] = (8, 8, 4, 4),
            affinities: str | Sequence[str] = ("conv", "conv", "conv", "mix"),
            num_heads: IntOrSeq = 16,
            kernel_size: int = 5,
            stem_stride: int = 4,
            img_size: IntOrSeq = 224,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        num_stages = len(dims)
        if num_stages < 1 or len(depths) != num_stages:
            raise InvalidArgument(f"dims ({len(dims)} entries) and depths ({len(depths)} entries) must have one "
                                  "entry per stage")
        mlp_ratios = _per_stage(mlp_ratios, num_stages, "mlp_ratios")
        affinities = _per_stage(affinities, num_stages, "affinities")
        num_heads = _per_stage(num_heads, num_stages, "num_heads")
        for kind in affinities:
            if kind not in AFFINITY_KINDS:
                raise InvalidArgument(f"unknown affinity {kind!r}; use one of {', '.join(AFFINITY_KINDS)}")
        if not isinstance(stem_stride, int):
            raise TypeError(f"stem_stride must be a positive integer, got {stem_stride!r}")
        if stem_stride < 1:
            raise InvalidArgument(f"stem_stride must be a positive integer, got {stem_stride!r}")

        self.drop_rate = drop_rate
        self.stem_stride = stem_stride
        self.total_stride = stem_stride * 2 ** (num_stages - 1)
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        img_h, img_w = to_2tuple(img_size)

        self.stem = PatchEmbed(in_chans, dims[0], stem_stride)
        drop_rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.feature_info = []
        stages, prev_dim, reduction, block_index = [], dims[0], stem_stride, 0
        for i in range(num_stages):
            stride = 1 if i == 0 else 2
            reduction = reduction * stride
            grid = (img_h // reduction, img_w // reduction)
            blocks = []
            for _ in range(depths[i]):
                blocks.append(ContainerBlock(
                    dims[i], affinities[i], mlp_ratio=mlp_ratios[i], num_heads=num_heads[i],
                    kernel_size=kernel_size, num_tokens=grid[0] * grid[1], grid=grid,
                    drop_path=drop_rates[block_index]))
                block_index += 1
            stages.append(ContainerStage(prev_dim, dims[i], stride, blocks))
            self.feature_info.append({"num_chs": dims[i], "reduction": reduction, "module": f"stages.{i}"})
            prev_dim = dims[i]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(self.num_features)

        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)

    # ---- timm interface -------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Mixing logits, biases and norm affines: 1-D parameters that weight decay would only distort."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str | list]:
        """Parameter groups for layer-wise lr decay: the stem first, then stages (or blocks), norm last."""
        return {
            "stem": r"^stem",
            "blocks": r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (memory for compute), per stage."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (0 = no head: ``forward`` returns the pooled feature) and optionally the pool.

        The head is the model's only Linear: it alone gets the released model's init (trunc-normal 0.02, zero
        bias); the other layers keep their own.
        """
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        """Fail early, in words, when the patch embeddings would silently crop the input."""
        h, w = x.shape[-2:]
        if h % self.total_stride or w % self.total_stride:
            raise InvalidArgument(
                f"input size {h}x{w} is not divisible by the model's total stride {self.total_stride} "
                f"(stem stride {self.stem_stride} x {self.total_stride // self.stem_stride} from the later stages); "
                f"resize or crop to a multiple of {self.total_stride}, or create the model with another stem_stride")

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns stage outputs.

        Args:
            x: input images.
            indices: last n stages if int, all if None, else the listed stage indices.
            norm: apply the final norm to the last stage's output when it is taken.
            stop_early: stop after the last requested stage.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the intermediates.

        Returns:
            The list of intermediates, or (final features, intermediates).
        """
        if output_fmt != "NCHW":
            raise InvalidArgument(f"output_fmt {output_fmt!r} is not supported by Container; use 'NCHW'")
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_index = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]

        intermediates = []
        x = self.stem(x)
        feat_index = 0
        for feat_index, stage in enumerate(stages):
            x = stage(x)
            if feat_index in take_indices:
                intermediates.append(self.norm(x) if norm and feat_index == last_index else x)
        if intermediates_only:
            return intermediates
        if feat_index == last_index:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and norm/head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()  # sized for the last stage only
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW features after the final norm."""
        self._check_input(x)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (+ dropout) and classify; ``pre_logits=True`` returns the pooled feature."""
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---- registration --------------------------------------------------------------------------------------

def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj", "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


# The zoo: one backbone, different affinities (the paper's "reproduces several past models by changing a
# few parameters"). Every family comes at Container-Light-S's sizes (``_small``) and at the CPU/CIFAR sizes
# of container_light_tiny (``_tiny``), so a family comparison changes only the affinity.
_SMALL = {"dims": (64, 128, 320, 512), "depths": (3, 4, 8, 3), "mlp_ratios": (8, 8, 4, 4)}
_TINY = {"dims": (32, 64, 128, 256), "depths": (1, 1, 3, 1), "mlp_ratios": 4}
_SMALL_HEADS = (1, 2, 5, 8)  # 64-channel heads, as in the paper's CONTAINER
_TINY_HEADS = (1, 2, 4, 8)   # 32-channel heads, as in container_light_tiny's stage 4
_LIGHT = ("conv", "conv", "conv", "mix")  # CONTAINER-LIGHT: static conv affinities, attention mixed in at stage 4

default_cfgs = generate_default_cfgs({
    name: _cfg() for name in (
        "container_light_small", "container_small", "container_light_tiny", "container_tiny",
        "container_light_nano",
        "container_attn_small", "container_attn_tiny", "container_mlp_small", "container_mlp_tiny",
        "container_pam_small", "container_pam_tiny",
    )
})


def _create_container(variant: str, pretrained: bool, kwargs: dict, **model_args) -> Container:
    """Build ``variant`` from its ``model_args``; the caller's ``kwargs`` (img_size, stem_stride ...) win."""
    return build_model_with_cfg(
        Container, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": (0, 1, 2, 3), "feature_cls": "getter"},
        **dict(model_args, **kwargs),
    )


@register_model
def container_light_small(pretrained: bool = False, **kwargs) -> Container:
    """CONTAINER-LIGHT exactly as released (20,633,643 params, 3.85 GMACs at 224 px)."""
    return _create_container("container_light_small", pretrained, kwargs, **_SMALL, affinities=_LIGHT, num_heads=16)


@register_model
def container_small(pretrained: bool = False, **kwargs) -> Container:
    """CONTAINER: attention + conv mixed in every stage, 64-channel heads (1/2/5/8 heads)."""
    return _create_container("container_small", pretrained, kwargs, **_SMALL, affinities="mix", num_heads=_SMALL_HEADS)


@register_model
def container_light_tiny(pretrained: bool = False, **kwargs) -> Container:
    """A ~1.8 M-param CONTAINER-LIGHT for DINO on CIFAR on a CPU (pass stem_stride=1 or 2 for 32 px)."""
    return _create_container("container_light_tiny", pretrained, kwargs, **_TINY, affinities=_LIGHT, num_heads=8)


@register_model
def container_tiny(pretrained: bool = False, **kwargs) -> Container:
    """CONTAINER at container_light_tiny's sizes: the attention + conv mix in every stage, 32-channel heads."""
    return _create_container("container_tiny", pretrained, kwargs, **_TINY, affinities="mix", num_heads=_TINY_HEADS)


@register_model
def container_light_nano(pretrained: bool = False, **kwargs) -> Container:
    """The smallest CONTAINER-LIGHT, for tests and smoke runs."""
    return _create_container("container_light_nano", pretrained, kwargs, dims=(16, 32, 64, 128),
                             depths=(1, 1, 1, 1), mlp_ratios=4, affinities=_LIGHT, num_heads=4)


@register_model
def container_attn_small(pretrained: bool = False, **kwargs) -> Container:
    """A hierarchical DeiT: the dynamic (attention) affinity in every stage, 64-channel heads."""
    return _create_container("container_attn_small", pretrained, kwargs, **_SMALL,
                             affinities="attention", num_heads=_SMALL_HEADS)


@register_model
def container_attn_tiny(pretrained: bool = False, **kwargs) -> Container:
    """container_attn at container_light_tiny's sizes (32-channel heads), for CIFAR on a CPU."""
    return _create_container("container_attn_tiny", pretrained, kwargs, **_TINY,
                             affinities="attention", num_heads=_TINY_HEADS)


@register_model
def container_mlp_small(pretrained: bool = False, **kwargs) -> Container:
    """A hierarchical multi-head MLP-Mixer: the static dense token affinity in every stage.

    Its affinities are N x N per block, so the model is built for one ``img_size`` (default 224) and
    refuses other input sizes with the size it was built for.
    """
    return _create_container("container_mlp_small", pretrained, kwargs, **_SMALL, affinities="mlp")


@register_model
def container_mlp_tiny(pretrained: bool = False, **kwargs) -> Container:
    """container_mlp at container_light_tiny's sizes; pass the CIFAR ``img_size`` (32) it will be fed."""
    return _create_container("container_mlp_tiny", pretrained, kwargs, **_TINY, affinities="mlp")


@register_model
def container_pam_small(pretrained: bool = False, **kwargs) -> Container:
    """CONTAINER-PAM: attention and the static MLP affinity, mixed by a learnt alpha, in every stage."""
    return _create_container("container_pam_small", pretrained, kwargs, **_SMALL,
                             affinities="pam", num_heads=_SMALL_HEADS)


@register_model
def container_pam_tiny(pretrained: bool = False, **kwargs) -> Container:
    """container_pam at container_light_tiny's sizes (fixed ``img_size``, like container_mlp)."""
    return _create_container("container_pam_tiny", pretrained, kwargs, **_TINY, affinities="pam", num_heads=_TINY_HEADS)
