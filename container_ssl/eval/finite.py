"""Refuse non-finite numbers before they turn into an accuracy figure.

Why: a diverged run's teacher (or a feature overflow) gives NaN features; cosine similarities and logits
of NaN rank classes arbitrarily, so kNN and the probes print a chance-level figure that looks like a
real, bad result. Every evaluator therefore checks the weights it loads and the features it computes,
and stops with one line naming what holds the bad values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import UserError

__all__ = ["non_finite_counts", "require_finite_features", "require_finite_weights"]


def non_finite_counts(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``{key: number of NaN/inf entries}`` for every floating-point tensor of ``state`` that holds any."""
    counts = {}
    for key, value in state.items():
        if torch.is_tensor(value) and (value.is_floating_point() or value.is_complex()):
            bad = int(value.numel() - torch.isfinite(value).sum())
            if bad:
                counts[key] = bad
    return counts


def require_finite_weights(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise one :class:`UserError` when ``state`` (described by ``what``, e.g. "teacher weights of X") holds
    NaN/inf values, naming how many and the first tensors that hold them."""
    counts = non_finite_counts(state)
    if counts:
        keys = sorted(counts, key=lambda k: -counts[k])
        shown = ", ".join(f"{k} ({counts[k]})" for k in keys[:3]) + (", ..." if len(keys) > 3 else "")
        tensors = f"{len(keys)} tensor" + ("s" if len(keys) > 1 else "")
        raise UserError(f"{what} hold {sum(counts.values())} non-finite values in {tensors} ({shown}); "
                        "the run diverged before this checkpoint: evaluate an earlier one")


def require_finite_features(features: torch.Tensor, what: str) -> None:
    """Raise one :class:`UserError` when ``features`` (e.g. "train features of X") hold NaN/inf values."""
    bad = int(features.numel() - torch.isfinite(features).sum())
    if bad:
        rows = int((~torch.isfinite(features)).reshape(features.shape[0], -1).any(dim=1).sum()) if features.ndim else 1
        raise UserError(f"{what} hold {bad} non-finite values ({rows} of {features.shape[0] if features.ndim else 1} "
                        "images); the weights or the input overflow: try --no-amp or an earlier checkpoint")
