"""The RNG states a checkpoint holds for an exact resume, and putting them back.

Why every rank's state: stochastic depth and the batched GPU augmentation draw from torch's global RNG in the
training process, so a resume that restores it draws exactly what the uninterrupted run would have
(worker-side augmentation is seeded per sample, :mod:`.sampling`). Stored as tensors and plain containers, so
the checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's torch, numpy, python (and CUDA) RNG state, in rank order (one outside distributed runs)."""
    np_state = np.random.get_state()
    mine = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["cuda"] = torch.cuda.get_rng_state_all()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore one rank's entry of :func:`gather_rng_states`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x: Any) -> Any:
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
