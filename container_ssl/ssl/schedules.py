"""Per-iteration hyper-parameter schedules (learning rate, weight decay, teacher momentum).

Why per iteration and precomputed: DINO changes these values at every optimisation step, and a plain
array indexed by the global iteration is trivial to resume from a checkpoint (no scheduler state to save)
and costs nothing inside the training loop.
"""

from __future__ import annotations

import math

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
