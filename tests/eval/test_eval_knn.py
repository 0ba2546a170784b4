"""Weighted kNN: torch and faiss back-ends agree exactly, and both match a brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from container_ssl.errors import UserError
from container_ssl.eval.knn import (
    check_class_sets,
    knn_classify,
    nearest_neighbours,
    resolve_backend,
)

KS = (1, 5, 10, 20, 100, 200, 1000)  # 1000 > bank size: capped
T = 0.07


def clustered(n_train: int = 400, n_test: int = 57, dim: int = 24, classes: int = 10, seed: int = 0):
    """Noisy class clusters (so accuracies are neither 0 nor 100) with a few exact duplicate bank rows."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y_train = torch.randint(0, classes, (n_train,), generator=g)
    y_test = torch.randint(0, classes, (n_test,), generator=g)
    x_train = centres[y_train] + 1.5 * torch.randn(n_train, dim, generator=g)
    x_test = centres[y_test] + 1.5 * torch.randn(n_test, dim, generator=g)
    x_train[1::37] = x_train[0]  # exact ties in the bank
    y_train[1::37] = y_train[0]
    return x_train, y_train, x_test, y_test


def reference(x_train, y_train, x_test, y_test, k: int, classes: int):
    """Brute force: sklearn's cosine neighbour sets, then the weighted vote in plain Python."""
    k = min(k, len(x_train))
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(x_train.double().numpy())
    _, sk_idx = nn.kneighbors(x_test.double().numpy())
    bank = [[float(v) for v in row] for row in x_train.double()]
    norms = [math.sqrt(sum(v * v for v in row)) for row in bank]
    predictions, neighbour_sets = [], []
    for qi, query in enumerate(x_test.double().tolist()):
        qn = math.sqrt(sum(v * v for v in query))
        votes = [0.0] * classes
        for j in sk_idx[qi]:
            sim = sum(a * b for a, b in zip(query, bank[j])) / (qn * norms[j])
            votes[int(y_train[j])] += math.exp(sim / T)
        ranking = sorted(range(classes), key=lambda c: (-votes[c], c))
        predictions.append(ranking[:5])
        neighbour_sets.append({int(j) for j in sk_idx[qi]})
    top1 = 100.0 * sum(p[0] == int(t) for p, t in zip(predictions, y_test)) / len(y_test)
    top5 = 100.0 * sum(int(t) in p for p, t in zip(predictions, y_test)) / len(y_test)
    return predictions, neighbour_sets, top1, top5


@pytest.fixture(scope="module")
def data():
    return clustered()


def test_backends_agree_exactly(data):
    torch_res = knn_classify(*data, ks=KS, temperature=T, backend="torch")
    faiss_res = knn_classify(*data, ks=KS, temperature=T, backend="faiss")
    for a, b in zip(torch_res, faiss_res):
        assert a.as_dict() == b.as_dict()
        assert torch.equal(a.predictions, b.predictions)
    sims_t, idx_t = nearest_neighbours(data[0], data[2], 50, backend="torch")
    sims_f, idx_f = nearest_neighbours(data[0], data[2], 50, backend="faiss")
    assert torch.equal(idx_t, idx_f) and torch.equal(sims_t, sims_f)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_matches_brute_force_reference(data, backend):
    x_train, y_train, x_test, y_test = data
    results = knn_classify(x_train, y_train, x_test, y_test, ks=(1, 10, 20, 100), temperature=T, backend=backend)
    _, idx = nearest_neighbours(x_train, x_test, 100, backend=backend)
    for r in results:
        preds, sets, top1, top5 = reference(x_train, y_train, x_test, y_test, r.k, 10)
        assert r.predictions.tolist() == preds
        assert r.top1 == pytest.approx(top1, abs=1e-9) and r.top5 == pytest.approx(top5, abs=1e-9)
        ours = [set(row[: r.k].tolist()) for row in idx]
        dup = {0, *range(1, len(x_train), 37)}  # exact duplicates may swap places at the k-th position
        for mine, theirs in zip(ours, sets):
            assert mine == theirs or (mine ^ theirs) <= dup
    assert 10.0 < results[2].top1 < 100.0  # a non-trivial problem


def test_chunk_sizes_give_identical_results(data):
    runs = [knn_classify(*data, ks=KS, backend="torch", chunk_size=c) for c in (1, 7, None, 10_000)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.as_dict() == b.as_dict() and torch.equal(a.predictions, b.predictions)


def test_few_queries_and_k_beyond_bank():
    x_train, y_train, x_test, y_test = clustered(n_train=30, n_test=3)
    for backend in ("torch", "faiss"):
        results = knn_classify(x_train, y_train, x_test, y_test, ks=(5, 200), backend=backend)
        assert [r.k_used for r in results] == [5, 30]
        assert results[1].predictions.shape == (3, 5)
    single = knn_classify(x_train, y_train, x_test[:1], y_test[:1], ks=(10,), backend="torch")
    assert single[0].top1 in (0.0, 100.0)


def test_top5_only_with_five_classes():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 8, generator=g), torch.arange(40) % 3
    result = knn_classify(x, y, x[:6], y[:6], ks=(1,), backend="torch")[0]
    assert result.top5 is None and result.top1 == 100.0  # each query is in the bank


def test_mismatched_classes_raise():
    with pytest.raises(UserError, match="only in val: horse"):
        check_class_sets(["cat", "dog"], ["cat", "horse"])
    with pytest.raises(UserError, match="different order"):
        check_class_sets(["cat", "dog"], ["dog", "cat"])
    x = torch.randn(10, 4)
    with pytest.raises(UserError, match="share one class list"):
        knn_classify(x, torch.zeros(10, dtype=torch.long), x[:2], torch.tensor([0, 3]), ks=(3,), num_classes=2)


def test_bad_arguments_raise():
    x = torch.randn(10, 4)
    y = torch.zeros(10, dtype=torch.long)
    with pytest.raises(UserError):
        knn_classify(x, y, x, y, ks=(0,))
    with pytest.raises(UserError):
        knn_classify(x, y, x, y, temperature=0.0)
    with pytest.raises(UserError):
        knn_classify(x, y, torch.randn(3, 5), y[:3])
    with pytest.raises(UserError):
        resolve_backend("annoy", 10)
    assert resolve_backend("auto", 10) == "torch"  # small bank: torch even with a GPU
