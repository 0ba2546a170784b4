"""Label-free monitors: RankMe and the normalised embedding std against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from container_ssl.ssl.rankme import RANKME_EPS, effective_rank, embedding_std


def numpy_rankme(x: np.ndarray, eps: float = RANKME_EPS) -> float:
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / np.abs(s).sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def numpy_std(x: np.ndarray) -> float:
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(z.std(axis=0, ddof=1).mean() * np.sqrt(x.shape[1]))


@pytest.mark.parametrize("rank", [1, 3, 16, 32])
def test_effective_rank_matches_numpy_svd(rank):
    g = np.random.default_rng(rank)
    x = g.standard_normal((200, rank)) @ g.standard_normal((rank, 32))
    assert effective_rank(torch.from_numpy(x).float()) == pytest.approx(numpy_rankme(x.astype(np.float32)), rel=1e-5)


def test_effective_rank_counts_used_directions():
    g = np.random.default_rng(0)
    # equal singular values in k directions: the entropy is log k, so RankMe is k (up to eps)
    q, _ = np.linalg.qr(g.standard_normal((64, 64)))
    for k in (1, 5, 20):
        x = q[:, :k] @ np.eye(k, 48) * 3.0
        assert effective_rank(torch.from_numpy(x)) == pytest.approx(k, rel=1e-3)


def test_embedding_std_matches_numpy_and_flags_collapse():
    g = np.random.default_rng(1)
    x = g.standard_normal((4000, 64))
    assert embedding_std(torch.from_numpy(x)) == pytest.approx(numpy_std(x), rel=1e-9)
    assert embedding_std(torch.from_numpy(x)) == pytest.approx(1.0, abs=0.03)  # isotropic
    collapsed = np.tile(g.standard_normal((1, 64)), (100, 1)) + 1e-6 * g.standard_normal((100, 64))
    assert embedding_std(torch.from_numpy(collapsed)) < 1e-4
    assert effective_rank(torch.from_numpy(collapsed)) < 1.01
