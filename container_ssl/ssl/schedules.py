"""Hyper-parameter schedules: per iteration (learning rate, weight decay, teacher momentum) and per epoch
(teacher temperature).

Why per iteration and precomputed: DINO changes these values at every optimisation step, and a plain
array indexed by the global iteration is trivial to resume from a checkpoint (no scheduler state to save)
and costs nothing inside the training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError


def cosine_schedule(base_value: float, final_value: float, epochs: int, iters_per_epoch: int,
                    warmup_epochs: float = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """Linear warm-up then a half-cosine, one value per iteration (length ``epochs * iters_per_epoch``).

    The warm-up covers ``round(warmup_epochs * iters_per_epoch)`` iterations and rises linearly from
    ``start_warmup_value`` to ``base_value`` (its last iteration is exactly ``base_value``). The cosine part
    then falls from ``base_value`` at its first iteration to exactly ``final_value`` at the very last
    iteration of training, so the schedule ends where the config says it ends.
    """
    if epochs <= 0 or iters_per_epoch <= 0:
        raise UserError(f"a schedule needs epochs > 0 and iterations per epoch > 0, "
                        f"got {epochs} and {iters_per_epoch}")
    if warmup_epochs < 0 or warmup_epochs > epochs:
        raise UserError(f"warmup_epochs must lie in [0, epochs={epochs}], got {warmup_epochs}")
    total = int(epochs) * int(iters_per_epoch)
    warmup_iters = min(round(float(warmup_epochs) * iters_per_epoch), total)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters, dtype=np.float64)
    n = total - warmup_iters
    if n == 1:
        cosine = np.array([final_value], dtype=np.float64)
    else:
        steps = np.arange(n, dtype=np.float64)
        phase = np.cos(math.pi * steps / max(n - 1, 1))
        cosine = final_value + 0.5 * (base_value - final_value) * (1.0 + phase)
    return np.concatenate([warmup, cosine])


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int,
                          nepochs: int) -> np.ndarray:
    """Teacher temperature per epoch: linear from the warm-up value to the final one, then constant.

    Why a warm-up: a too-sharp teacher at initialisation makes the first epochs unstable; the temperature is
    raised to its final value over ``warmup_teacher_temp_epochs`` epochs (the last warm-up epoch already
    uses ``teacher_temp``). The array covers at least ``nepochs`` epochs.
    """
    if warmup_teacher_temp_epochs < 0 or nepochs <= 0:
        raise UserError(f"teacher temperature schedule needs warm-up epochs >= 0 and epochs > 0, got "
                        f"{warmup_teacher_temp_epochs} and {nepochs}")
    if warmup_teacher_temp <= 0 or teacher_temp <= 0:
        raise UserError(f"teacher temperatures must be > 0, got {warmup_teacher_temp} -> {teacher_temp}")
    warm = np.linspace(warmup_teacher_temp, teacher_temp, int(warmup_teacher_temp_epochs))
    rest = np.full(max(int(nepochs) - int(warmup_teacher_temp_epochs), 0), float(teacher_temp))
    return np.concatenate([warm, rest])


def due(every: int, epoch: int, epochs: int) -> bool:
    """Whether a task done every ``every`` epochs (0: never) is due after ``epoch`` (0-based): always after the last."""
    return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


@dataclass(frozen=True)
class Schedules:
    """A run's schedules: ``lr``, ``wd`` and teacher ``momentum`` per iteration, ``teacher_temp`` per epoch."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def for_run(cls, cfg: Any, iters_per_epoch: int, world_size: int) -> Schedules:
        """From the config's ``optim`` and ``loss`` sections; the learning rate scales with the global batch."""
        o, lc, epochs = cfg.optim, cfg.loss, cfg.optim.epochs
        global_batch = o.batch_size_per_gpu * world_size
        return cls(
            lr=cosine_schedule(o.base_lr * global_batch / 256.0, o.min_lr, epochs, iters_per_epoch,
                               warmup_epochs=o.warmup_epochs),
            wd=cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, iters_per_epoch),
            momentum=cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, epochs, iters_per_epoch),
            teacher_temp=teacher_temp_schedule(lc.warmup_teacher_temp, lc.teacher_temp, lc.warmup_teacher_temp_epochs,
                                               epochs))
