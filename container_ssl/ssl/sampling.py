"""Deterministic, resumable sampling and augmentation randomness.

Why: "resume continues exactly" needs two things a plain DataLoader does not give.
1. The order of an epoch must be a pure function of (seed, epoch), and a resumed epoch must start at the
   batch after the last one trained. :class:`ResumableSampler` shards a seeded permutation across ranks
   (as DistributedSampler does) and can start at an offset.
2. The random augmentation of a sample must not depend on which worker drew it or on how many samples
   that worker decoded before. The sampler yields ``(epoch, index)`` pairs and :class:`SeededViews`
   seeds torch's RNG from (seed, epoch, index) before transforming the sample. So a run with 0 or 8
   workers, interrupted or not, sees the same crops.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset, Sampler

from ..data import Skipped
from ..errors import UserError


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes and Python runs."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x ^= (v + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class ResumableSampler(Sampler):
    """Seeded per-epoch permutation, sharded across ranks, yielding ``(epoch, index)`` from a start offset."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if num_samples < batch_size * world_size:
            raise UserError(f"the dataset has {num_samples} images, fewer than one global batch "
                            f"({batch_size} x {world_size} ranks); lower optim.batch_size_per_gpu")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per rank (the last partial global batch is dropped, as DINO does)."""
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=g)
        used = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:used][self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self._indices()[self.start_batch * self.batch_size:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class SeededViews(Dataset):
    """Wraps a dataset; item ``(epoch, index)`` is transformed under a RNG seeded by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int, transform: Optional[Callable] = None):
        self.dataset, self.seed, self.transform = dataset, seed, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        item = self.dataset[index]
        if item is None or isinstance(item, Skipped):  # an unreadable image the dataset chose to skip
            return item
        image, target = item
        if self.transform is not None:
            state = torch.random.get_rng_state()
            torch.manual_seed(_mix(self.seed, epoch, index))
            try:
                image = self.transform(image)
            finally:
                torch.random.set_rng_state(state)
        return image, target
