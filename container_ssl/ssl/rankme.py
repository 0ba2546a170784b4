"""Label-free health signals of a representation: effective rank (RankMe) and per-dimension spread.

Why: the DINO loss falls whether the representation improves or collapses, and an online kNN needs labels.
Two numbers computed from the teacher's embeddings of one fixed batch tell the two apart without labels:

* **RankMe** (Garrido et al., ICML 2023): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / ||s||_1 + eps``
  over the singular values ``s`` of the ``N x D`` embedding matrix. It is ~``min(N, D)`` for embeddings
  that use every direction and falls to 1 under complete collapse; the paper shows it tracks downstream
  accuracy across SSL methods.
* **Per-dimension std of the L2-normalised embeddings** (the SimSiam collapse check): ``1/sqrt(D)`` for
  isotropic embeddings, 0 when every image maps to one point. It is reported as a fraction of
  ``1/sqrt(D)`` so one threshold fits every width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["RANKME_EPS", "effective_rank", "embedding_std"]

RANKME_EPS = 1e-7  # the epsilon of the RankMe paper (keeps log p finite for zero singular values)


def effective_rank(embeddings: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe of an ``[N, D]`` embedding matrix (float64 SVD: small singular values matter here)."""
    if embeddings.ndim != 2 or min(embeddings.shape) < 1:
        raise ValueError(f"effective_rank needs an [N, D] matrix, got shape {tuple(embeddings.shape)}")
    s = torch.linalg.svdvals(embeddings.detach().double())
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the std of the L2-normalised embeddings, times ``sqrt(D)`` (1 = isotropic)."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embedding_std needs an [N >= 2, D] matrix, got shape {tuple(embeddings.shape)}")
    z = F.normalize(embeddings.detach().double(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))
