"""Linear classifiers on frozen features (DINO's linear evaluation), several learning rates at once.

Protocol (DINO ``eval_linear.py``): one ``nn.Linear`` (weight ~ N(0, 0.01), bias 0) on the features,
SGD with momentum 0.9 and no weight decay, learning rate ``base_lr * batch_size / 256``, cosine-annealed
to 0 over the epochs (stepped per epoch), cross-entropy, accuracy measured every ``val_freq`` epochs.

Which split chooses the learning rate and the epoch: DINO reports the best val top-1 over epochs, i.e.
it selects on the split it reports. Here the choice is made on a held-out, class-balanced part of the
train split (:func:`holdout_split`) and the val split is evaluated once, after retraining on the whole
train split (see :mod:`container_ssl.eval.linear`); DINO's reporting is kept as an explicit option.

Why several heads: the probe's result depends strongly on the learning rate, and the backbone forward
pass costs far more than the heads. As in DINOv2, one head per candidate learning rate is trained on the
same feature batches (one pass over the data), and the best head is reported. Each head has its own
parameter group, so they never interact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.subsets import select_subset
from ..errors import UserError
from .metrics import TopK

__all__ = ["HeadRecord", "LinearHeads", "LinearProbe", "choose", "feature_batches", "fit_probe", "holdout_split",
           "train_epoch", "train_linear_probe"]


class LinearHeads(nn.Module):
    """``n`` independent linear classifiers fed the same (flattened) features."""

    def __init__(self, dim: int, num_classes: int, n_heads: int = 1):
        super().__init__()
        self.heads = nn.ModuleList(_dino_linear(dim, num_classes) for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.flatten(1)
        return [head(x) for head in self.heads]


def _dino_linear(dim: int, num_classes: int) -> nn.Linear:
    """Initialised as soon as created, so head ``i`` starts the same however many heads follow it."""
    head = nn.Linear(dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


@dataclass
class HeadRecord:
    """One learning rate's history; ``best_*`` are the best val top-1 and the epoch it was reached."""

    base_lr: float
    lr: float
    best_top1: float = -1.0
    best_top5: float | None = None
    best_epoch: int = -1
    final_top1: float | None = None
    final_top5: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class LinearProbe:
    """The heads, their SGD optimizer (one parameter group per learning rate) and the cosine schedule."""

    def __init__(self, dim: int, num_classes: int, base_lrs: Sequence[float], batch_size: int, epochs: int,
                 device: torch.device | str = "cpu", momentum: float = 0.9, weight_decay: float = 0.0):
        if not base_lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in base_lrs):
            raise UserError(f"learning rates must be positive numbers, got {list(base_lrs)}")
        if epochs < 1:
            raise UserError(f"epochs must be at least 1, got {epochs}")
        self.device = torch.device(device)
        self.num_classes = num_classes
        self.heads = LinearHeads(dim, num_classes, len(base_lrs)).to(self.device)
        self.records = [HeadRecord(float(b), float(b) * batch_size / 256.0) for b in base_lrs]
        groups = [{"params": head.parameters(), "lr": rec.lr} for head, rec in zip(self.heads.heads, self.records)]
        self.optimizer = torch.optim.SGD(groups, lr=self.records[0].lr, momentum=momentum, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs, eta_min=0.0)

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> list[float]:
        self.heads.train()
        logits = self.heads(features.to(self.device, non_blocking=True).float())
        labels = labels.to(self.device, non_blocking=True)
        losses = [F.cross_entropy(out, labels) for out in logits]
        self.optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()  # heads are disjoint: each gets only its own gradient
        self.optimizer.step()
        return [float(loss.detach()) for loss in losses]

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[TopK]:
        self.heads.eval()
        meters = [TopK(self.num_classes) for _ in self.heads.heads]
        for features, labels in batches:
            labels = labels.to(self.device)
            for meter, out in zip(meters, self.heads(features.to(self.device).float())):
                meter.update(out, labels, F.cross_entropy(out, labels).item())
        return meters

    def head_state(self, index: int) -> dict:
        head = self.heads.heads[index]
        return {"weight": head.weight.detach().cpu().clone(), "bias": head.bias.detach().cpu().clone()}


def feature_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of stored features, shuffled when a generator is given."""
    n = features.shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield features[idx], labels[idx]


EpochCallback = Callable[[int, "LinearProbe", list, list], None]


def train_epoch(probe: LinearProbe, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """One epoch over ``batches`` then one step of the schedule; the mean training loss of each head."""
    sums = [0.0] * len(probe.records)
    steps = 0
    for features, labels in batches:
        for i, loss in enumerate(probe.train_step(features, labels)):
            sums[i] += loss
        steps += 1
    probe.scheduler.step()
    if steps == 0:
        raise UserError("the linear probe got no training batch; is the train split empty?")
    return [s / steps for s in sums]


def fit_probe(probe: LinearProbe, train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
              val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], epochs: int,
              val_freq: int = 1, on_epoch: EpochCallback | None = None) -> list[HeadRecord]:
    """Train for ``epochs``, evaluating every ``val_freq`` epochs and at the end; return the records.

    ``val_batches`` is whatever split the choice of learning rate and epoch is made on: the held-out part
    of the train split (the default protocol) or, with DINO's reporting, the val split itself.
    ``on_epoch(epoch, probe, train_losses, val_meters)`` runs after each evaluation (logging, checkpoints).
    """
    for epoch in range(epochs):
        losses = train_epoch(probe, train_batches(epoch))
        if (epoch + 1) % val_freq == 0 or epoch == epochs - 1:
            meters = probe.evaluate(val_batches())
            for rec, meter in zip(probe.records, meters):
                rec.final_top1, rec.final_top5 = meter.top1, meter.top5
                if meter.top1 > rec.best_top1:
                    rec.best_top1, rec.best_top5, rec.best_epoch = meter.top1, meter.top5, epoch
            if on_epoch is not None:
                on_epoch(epoch, probe, losses, meters)
    return probe.records


def choose(records: Sequence[HeadRecord]) -> int:
    """Index of the head with the best selection top-1 (the first one on ties: the order of ``--lrs``)."""
    return max(range(len(records)), key=lambda i: (records[i].best_top1, -i))


def holdout_split(labels: Sequence[int] | torch.Tensor, fraction: float, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, held_out)`` indices of a class-balanced, seeded split of a labelled train split.

    Why: choosing the learning rate and the epoch on the split one then reports (DINO's ``eval_linear``)
    makes the figure an optimistic maximum over many tries. The choice is made on ``held_out``
    (``round(fraction * n_c)`` images of each class ``c``, drawn like the label fractions of
    :func:`container_ssl.data.subsets.select_subset`), which the probe never trains on during the choice.
    Every class keeps at least one image on each side.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    counts = torch.bincount(labels) if labels.numel() else torch.zeros(0, dtype=torch.int64)
    small = [c for c, n in enumerate(counts.tolist()) if n == 1]
    if small:
        raise UserError(f"classes {small[:5]} have a single train image; the held-out choice of lr and epoch "
                        "needs at least 2 per class (use --selection val, or more images)")
    held = select_subset(labels.tolist(), fraction, seed)
    mask = torch.zeros(labels.numel(), dtype=torch.bool)
    mask[held] = True
    if mask.all():
        raise UserError(f"--holdout-fraction {fraction} leaves no train image to fit the probe on; use a smaller one")
    return (~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)


def train_linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                       val_labels: torch.Tensor, base_lrs: Sequence[float] = (0.001,), epochs: int = 100,
                       batch_size: int = 256, num_classes: int | None = None, device: torch.device | str = "cpu",
                       val_freq: int = 1, seed: int = 0, on_epoch: EpochCallback | None = None
                       ) -> tuple[LinearProbe, list[HeadRecord]]:
    """Train heads on stored features (no augmentation): the fast probe, seconds instead of hours on a CPU."""
    if num_classes is None:
        num_classes = int(torch.cat([train_labels, val_labels]).max()) + 1
    torch.manual_seed(seed)
    probe = LinearProbe(train_features.shape[1], num_classes, base_lrs, batch_size, epochs, device)
    train_features, train_labels = train_features.to(probe.device), train_labels.to(probe.device)
    generator = torch.Generator().manual_seed(seed)
    records = fit_probe(probe, lambda epoch: feature_batches(train_features, train_labels, batch_size, generator),
                        lambda: feature_batches(val_features, val_labels, max(batch_size, 1024)),
                        epochs, val_freq, on_epoch)
    return probe, records
