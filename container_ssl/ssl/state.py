"""Everything a checkpoint must hold for an exact resume, and putting it back.

Why RNG states per rank: stochastic depth and the batched GPU augmentation draw from torch's global RNG
in the training process. Restoring each rank's generator state makes the resumed steps draw exactly the
numbers the uninterrupted run would have drawn. (Worker-side augmentation is seeded per sample and needs
no state; see :mod:`container_ssl.ssl.sampling`.) States are stored as tensors and plain containers so the
checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a list of one outside distributed runs)."""
    mine = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def _as_tuples(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_as_tuples(v) for v in x)
    if isinstance(x, tuple):
        return tuple(_as_tuples(v) for v in x)
    return x
