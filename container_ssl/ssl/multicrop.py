"""Run a backbone + projection head over a list of multi-resolution crops.

Why grouping: DINO feeds 2 global and several local crops. Calling the backbone once per crop wastes
kernel launches and gives BatchNorm tiny batches; one call per distinct resolution (crops of the same size
concatenated along the batch) is the cheapest correct option, and the head, whose input is the pooled
feature vector, runs once on everything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MultiCropWrapper(nn.Module):
    """``forward(crops)`` -> head outputs of all crops, concatenated in input order along the batch.

    ``backbone(x)`` must return pooled features ``[B, D]`` (timm backbones built with ``num_classes=0``).
    Consecutive crops with the same spatial size share one backbone call.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        if len(crops) == 0:
            raise ValueError("MultiCropWrapper needs at least one crop batch")
        sizes = torch.tensor([tuple(c.shape[-2:]) for c in crops])
        _, counts = torch.unique_consecutive(sizes, dim=0, return_counts=True)
        features = []
        start = 0
        for count in counts.tolist():
            group = crops[start:start + count]
            features.append(self.backbone(torch.cat(group) if count > 1 else group[0]))
            start += count
        return self.head(torch.cat(features) if len(features) > 1 else features[0])
