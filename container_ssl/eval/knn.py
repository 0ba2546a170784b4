"""DINO's weighted k-nearest-neighbour classifier on frozen features, with a torch and a faiss back-end.

Protocol (Wu et al. 2018, as used by DINO): L2-normalise train and test features, take the ``k`` train
features of highest cosine similarity to each test feature, weight each neighbour by ``exp(sim / T)``
(``T = 0.07``) and sum the weights per class; the class ranking gives top-1 and top-5 (top-5 only with at
least five classes). ``k`` is capped at the size of the labelled bank.

Why two back-ends, and why they agree exactly: the torch back-end (chunked matmul + top-k, memory bounded
by ``chunk_size`` queries at a time, any number of queries, unlike the reference implementation that
assumes at least 100) needs nothing but torch; faiss (``IndexFlatIP``, on the GPU when faiss sees one)
is faster for very large banks on a GPU. Float32 similarities from two BLAS libraries differ in the last
bits, so neither back-end's ranking is final: each proposes ``k + margin`` candidates, and one shared
routine recomputes their similarities in float64 on the CPU (row-wise products, the same arithmetic
whichever back-end proposed them), ranks them by (similarity desc, train index asc) and votes. So the
two back-ends return identical neighbours and predictions unless more than ``margin`` bank entries are
within float32 error of the k-th similarity (e.g. many exact duplicate images).

``backend="auto"`` picks faiss only when faiss sees a GPU and the bank has at least
:data:`AUTO_FAISS_MIN_BANK` entries; otherwise torch (on the CPU both are one BLAS product, and torch
avoids copying the bank into faiss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError

__all__ = [
    "AUTO_FAISS_MIN_BANK",
    "DEFAULT_KS",
    "DEFAULT_TEMPERATURE",
    "KnnResult",
    "check_class_sets",
    "knn_classify",
    "nearest_neighbours",
    "resolve_backend",
    "weighted_vote",
]

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
AUTO_FAISS_MIN_BANK = 100_000
CANDIDATE_MARGIN = 16
_CHUNK_BYTES = 1 << 29  # similarity block of one torch chunk (512 MiB)
_RERANK_ELEMENTS = 1 << 24  # float64 elements gathered per re-ranking block (128 MiB)


@dataclass
class KnnResult:
    """Accuracy at one ``k``; ``predictions`` ranks classes per query ``[N, min(5, C)]``."""

    k: int
    k_used: int
    top1: float
    top5: float | None
    predictions: torch.Tensor

    def as_dict(self) -> dict:
        return {"k": self.k, "k_used": self.k_used, "top1": self.top1, "top5": self.top5}


def check_class_sets(train_classes: Sequence[str], val_classes: Sequence[str]) -> None:
    """Train and val must list the same classes in the same order (labels are indices into them)."""
    if list(train_classes) != list(val_classes):
        only = {"train": sorted(set(train_classes) - set(val_classes)),
                "val": sorted(set(val_classes) - set(train_classes))}
        detail = [f"only in {split}: {', '.join(names[:5])}" for split, names in only.items() if names]
        raise UserError("train and val splits have different classes (" + ("; ".join(detail) or "different order")
                        + "); both need the same class folders")


def resolve_backend(backend: str, bank_size: int) -> str:
    """``torch`` or ``faiss`` for ``backend`` in auto|torch|faiss (see the module docstring for ``auto``)."""
    if backend not in ("auto", "torch", "faiss"):
        raise UserError(f"kNN backend must be auto, torch or faiss, got '{backend}'")
    if backend == "torch":
        return "torch"
    try:
        import faiss
    except ImportError:
        if backend == "faiss":
            raise UserError("kNN backend faiss needs the faiss package (pip install faiss-cpu or faiss-gpu)") from None
        return "torch"
    if backend == "faiss":
        return "faiss"
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return "faiss" if gpus > 0 and bank_size >= AUTO_FAISS_MIN_BANK else "torch"


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, ks: Sequence[int] = DEFAULT_KS,
                 temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None,
                 backend: str = "auto", chunk_size: int | None = None,
                 device: torch.device | str | None = None) -> list[KnnResult]:
    """Weighted kNN accuracy of ``test`` against the labelled ``train`` bank for every ``k`` in ``ks``."""
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64).cpu()
    test_labels = torch.as_tensor(test_labels, dtype=torch.int64).cpu()
    _check_inputs(train_features, train_labels, test_features, test_labels, ks, temperature)
    labels = torch.cat([train_labels, test_labels])
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UserError(f"labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}; "
                        "train and val must share one class list")
    kmax = min(max(ks), train_features.shape[0])
    sims, idx = nearest_neighbours(train_features, test_features, kmax, backend, chunk_size, device)
    results = []
    for k in ks:
        k_used = min(int(k), kmax)
        predictions = weighted_vote(sims[:, :k_used], train_labels[idx[:, :k_used]], num_classes, temperature)
        top1 = (predictions[:, 0] == test_labels).double().mean().item() * 100.0
        top5 = None
        if num_classes >= 5:
            top5 = (predictions[:, :5] == test_labels[:, None]).any(dim=1).double().mean().item() * 100.0
        results.append(KnnResult(int(k), k_used, top1, top5, predictions))
    return results


def nearest_neighbours(train_features: torch.Tensor, test_features: torch.Tensor, k: int, backend: str = "auto",
                       chunk_size: int | None = None, device: torch.device | str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities (float64, descending) and train indices ``[N_test, k]`` of the ``k`` nearest."""
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float(), dim=1)
    k = min(int(k), bank.shape[0])
    n_candidates = min(k + CANDIDATE_MARGIN, bank.shape[0])
    chosen = resolve_backend(backend, bank.shape[0])
    if chosen == "faiss":
        candidates = _faiss_candidates(bank, queries, n_candidates)
    else:
        candidates = _torch_candidates(bank, queries, n_candidates, chunk_size, device)
    return _rerank(bank.cpu(), queries.cpu(), candidates.cpu(), k)


def weighted_vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
                  temperature: float) -> torch.Tensor:
    """Classes ranked by ``sum_i exp(sim_i / T)`` over neighbours of each class; ties go to the lower class.

    Accumulated in float64 on the CPU with a sequential scatter-add, so the result depends only on its
    inputs, not on the device or back-end.
    """
    weights = (sims.double().cpu() / temperature).exp()
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, neighbour_labels.cpu(), weights)
    order = torch.sort(votes, dim=1, descending=True, stable=True).indices
    return order[:, :min(5, num_classes)]


def _torch_candidates(bank: torch.Tensor, queries: torch.Tensor, m: int, chunk_size: int | None,
                      device: torch.device | str | None) -> torch.Tensor:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if chunk_size is None:
        chunk_size = max(1, min(1024, _CHUNK_BYTES // (4 * bank.shape[0])))
    if chunk_size < 1:
        raise UserError(f"kNN chunk size must be at least 1, got {chunk_size}")
    bank_t = bank.to(dev).t().contiguous()
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start:start + chunk_size].to(dev) @ bank_t
        out.append(sims.topk(m, dim=1).indices.cpu())
    return torch.cat(out) if out else torch.empty(0, m, dtype=torch.int64)


def _faiss_candidates(bank: torch.Tensor, queries: torch.Tensor, m: int) -> torch.Tensor:
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    index.add(bank.cpu().numpy())
    _, ids = index.search(queries.cpu().numpy(), m)
    return torch.from_numpy(ids).long()


def _rerank(bank: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor, k: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 similarities of the candidates, ordered by (similarity desc, index asc); first ``k`` kept."""
    n, m = candidates.shape
    block = max(1, _RERANK_ELEMENTS // max(1, m * bank.shape[1]))
    sims_out, idx_out = [], []
    for start in range(0, n, block):
        cand = candidates[start:start + block]
        q = queries[start:start + block].double()
        sims = (bank[cand].double() * q[:, None, :]).sum(dim=-1)
        by_index = torch.sort(cand, dim=1, stable=True)
        sims = sims.gather(1, by_index.indices)
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
        sims_out.append(sims.gather(1, order))
        idx_out.append(by_index.values.gather(1, order))
    if not sims_out:
        return torch.empty(0, k, dtype=torch.float64), torch.empty(0, k, dtype=torch.int64)
    return torch.cat(sims_out), torch.cat(idx_out)


def _check_inputs(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                  ks: Sequence[int], temperature: float) -> None:
    if train_f.ndim != 2 or test_f.ndim != 2 or train_f.shape[1] != test_f.shape[1]:
        raise UserError(f"kNN needs 2-d features of one width, got train {tuple(train_f.shape)} "
                        f"and test {tuple(test_f.shape)}")
    if train_f.shape[0] == 0:
        raise UserError("kNN needs at least one train feature")
    if train_y.shape[0] != train_f.shape[0] or test_y.shape[0] != test_f.shape[0]:
        raise UserError("kNN: features and labels differ in length")
    if not ks or any(int(k) < 1 for k in ks):
        raise UserError(f"k must be positive integers, got {list(ks)}")
    if not temperature > 0:
        raise UserError(f"kNN temperature must be positive, got {temperature}")
