"""Seed every random generator an evaluation run draws from.

Why all of them: torch's generator alone is not enough. timm's Mixup/CutMix draws its mixing ratio and
its choice between the two from numpy's global generator, RandAugment draws its ops from Python's
``random``, and DataLoader workers derive their seeds from torch's generator (torch then seeds
``random``, numpy and torch inside each worker). Two finetunes with the same ``--seed`` differed by more
than half a point of top-1 until numpy and ``random`` were seeded as well.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
