"""One entry point for every backbone the pipeline can pretrain.

Why: configs name a backbone by string (``container_light_tiny``, ``deit_small`` ...) and the trainer and
evaluators must not care whether it is a timm-registered Container or a timm DeiT. Every backbone built here
exposes the same contract: ``num_classes=0`` makes ``model(x)`` return the pooled feature (global average
for Container, CLS token for DeiT) of width :func:`feature_dim`.

The DeiT baselines are timm's ``deit_{size}_patch16_224`` with no pretrained weights and
``dynamic_img_size=True``: DINO on small images needs other patch and image sizes (patch 4 for 32-px CIFAR),
and multi-crop sends several input sizes through one model.
"""

from __future__ import annotations

import timm
from timm.models import model_entrypoint
from torch import nn

from ..errors import InvalidArgument
from . import container

__all__ = ["backbone_names", "container_names", "create_backbone", "feature_dim"]

DEIT_SIZES = ("tiny", "small")


def container_names() -> list[str]:
    """The Container models this package registers with timm."""
    return sorted(n for n in timm.list_models(module="container")
                  if model_entrypoint(n).__module__ == container.__name__)


def backbone_names() -> list[str]:
    """Every name :func:`create_backbone` accepts."""
    return container_names() + [f"deit_{size}" for size in DEIT_SIZES]


def create_backbone(
        name: str,
        img_size: int = 224,
        patch_size: int | None = None,
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
        **kwargs,
) -> nn.Module:
    """Build a backbone by name.

    ``patch_size`` is the stem stride for Container models (default 4) and the patch size for DeiT
    (default 16). ``img_size`` is the DeiT position-embedding grid (any input size still works) and the
    token count of fixed-size Container affinities; Container itself accepts any multiple of its total stride.
    """
    if name.startswith("deit_") and name[len("deit_"):] in DEIT_SIZES:
        patch_size = 16 if patch_size is None else patch_size
        if patch_size < 1 or img_size % patch_size:
            raise InvalidArgument(f"DeiT img_size {img_size} is not divisible by patch_size {patch_size}; "
                                  "choose a patch size that divides the image size")
        return timm.create_model(f"{name}_patch16_224", pretrained=False, num_classes=num_classes, img_size=img_size,
                                 patch_size=patch_size, dynamic_img_size=True, drop_path_rate=drop_path_rate,
                                 **kwargs)
    if name in container_names():
        if patch_size is not None:
            kwargs["stem_stride"] = patch_size
        return timm.create_model(name, num_classes=num_classes, drop_path_rate=drop_path_rate,
                                 img_size=img_size, **kwargs)
    raise InvalidArgument(f"unknown backbone {name!r}; valid names: {', '.join(backbone_names())}")


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled feature that ``model(x)`` returns with ``num_classes=0``."""
    width = getattr(model, "num_features", None)
    if not isinstance(width, int):
        raise TypeError(f"{type(model).__name__} does not expose num_features; build it with create_backbone")
    return width
