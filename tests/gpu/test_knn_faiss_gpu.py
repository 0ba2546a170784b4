"""faiss on the GPU gives the torch kNN's neighbours and top-1.

Reference: the chunked torch kNN (on the device) on the same clustered synthetic features. The GPU index
must really be used: ``faiss.index_cpu_to_gpu`` is wrapped to count its calls.
"""

from __future__ import annotations

import pytest
import torch

from container_ssl.eval.knn import knn_classify

from .conftest import cuda_only

pytestmark = pytest.mark.cuda


def _features(n: int, g: torch.Generator, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, centres.shape[0], (n,), generator=g)
    return centres[y] + 0.9 * torch.randn(n, centres.shape[1], generator=g), y


def test_faiss_gpu_matches_torch_knn(device, monkeypatch):
    cuda_only(device, "faiss on the GPU")
    import faiss

    assert faiss.get_num_gpus() >= 1, ("faiss sees no GPU: install the gpu extra (faiss-gpu) in place of "
                                       "faiss-cpu, as benchmarks/gpu_check.sh does")
    calls = []
    to_gpu = faiss.index_cpu_to_gpu
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda *a, **k: calls.append(1) or to_gpu(*a, **k))
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 64, generator=g)
    train_f, train_y = _features(20_000, g, centres)
    test_f, test_y = _features(2_000, g, centres)
    ks = [1, 20]
    ours = knn_classify(train_f, train_y, test_f, test_y, ks=ks, backend="torch", device=device)
    gpu = knn_classify(train_f, train_y, test_f, test_y, ks=ks, backend="faiss", device=device)
    assert calls, "the faiss back-end did not move its index to the GPU"
    for a, b in zip(ours, gpu):
        assert 30.0 < a.top1 < 100.0  # the clusters overlap: neither chance nor trivial
        assert b.top1 == pytest.approx(a.top1, abs=0.05), (a.k, a.top1, b.top1)
        assert (a.predictions[:, 0] != b.predictions[:, 0]).float().mean() < 0.001
