"""Models: Container block, Container-Light/Container (timm-registered), DeiT baseline, DINO head.

Importing this package registers the Container models with timm (via :mod:`.container`).
"""

from . import container  # noqa: F401  (registers the timm entrypoints)
from .affinity import AFFINITY_KINDS, AffinityMixer, ContainerBlock
from .container import Container
from .factory import backbone_names, create_backbone, feature_dim
from .head import DINOHead
from .loading import checkpoint_filter_fn, load_released_container_light

__all__ = [
    "AFFINITY_KINDS",
    "AffinityMixer",
    "Container",
    "ContainerBlock",
    "DINOHead",
    "backbone_names",
    "checkpoint_filter_fn",
    "create_backbone",
    "feature_dim",
    "load_released_container_light",
]
