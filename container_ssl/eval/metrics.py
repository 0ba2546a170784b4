"""Top-k accuracy bookkeeping shared by the linear probe and finetuning.

Why counts, not per-batch percentages: the last batch is usually smaller, and averaging per-batch
percentages would over-weight it; counts summed over the set give the exact accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["TopK"]


@dataclass
class TopK:
    """Running top-1 / top-5 counts over batches; top-5 is ``None`` with fewer than five classes."""

    num_classes: int
    correct1: int = 0
    correct5: int = 0
    total: int = 0
    loss_sum: float = 0.0
    _loss_n: int = field(default=0, repr=False)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: float | None = None) -> None:
        k = min(5, self.num_classes)
        top = logits.topk(k, dim=1).indices
        hit = top == targets[:, None]
        self.correct1 += int(hit[:, 0].sum())
        self.correct5 += int(hit.any(dim=1).sum())
        self.total += int(targets.shape[0])
        if loss is not None:
            self.loss_sum += float(loss) * int(targets.shape[0])
            self._loss_n += int(targets.shape[0])

    @property
    def top1(self) -> float:
        return 100.0 * self.correct1 / max(1, self.total)

    @property
    def top5(self) -> float | None:
        return 100.0 * self.correct5 / max(1, self.total) if self.num_classes >= 5 else None

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self._loss_n if self._loss_n else None
