"""DeiT baseline backbones (timm's ViT) for the Container-vs-DeiT comparison.

Why a wrapper: DINO on small images needs the patch size and image size changed (patch 4 for 32-px
CIFAR) and multi-crop needs several input sizes through one model, so the timm model is built with
``dynamic_img_size=True`` and no pretrained weights. Its pooled feature is the CLS token
(timm ``global_pool='token'``).
"""

from __future__ import annotations

import timm
from torch import nn

from ..errors import InvalidArgument

__all__ = ["DEIT_SIZES", "create_deit"]

DEIT_SIZES = ("tiny", "small")


def create_deit(
        size: str = "tiny",
        img_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        **kwargs,
) -> nn.Module:
    """timm ``deit_{size}_patch16_224`` with the given image/patch size, random init, any input size."""
    if size not in DEIT_SIZES:
        raise InvalidArgument(f"unknown DeiT size {size!r}; use one of {', '.join(DEIT_SIZES)}")
    if patch_size < 1 or img_size % patch_size:
        raise InvalidArgument(f"DeiT img_size {img_size} is not divisible by patch_size {patch_size}; "
                              "choose a patch size that divides the image size")
    return timm.create_model(
        f"deit_{size}_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        img_size=img_size,
        patch_size=patch_size,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
