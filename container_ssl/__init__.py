"""container-ssl: DINO self-supervised pretraining of CONTAINER-LIGHT and DeiT backbones.

Importing the package registers the Container models with timm, so that
``timm.create_model("container_light_small")`` works after ``import container_ssl``.
"""

__version__ = "0.1.0"

from . import models  # noqa: F401  (registers the timm entrypoints)
from .pretrained import load_pretrained  # noqa: F401  (an exported backbone through timm, in one call)
