"""Linear probe on stored features: learns a separable problem; heads of different lrs never interact."""

from __future__ import annotations

import pytest
import torch

from container_ssl.errors import UserError
from container_ssl.eval.probe import LinearHeads, LinearProbe, train_linear_probe


def blobs(n: int, seed: int, classes: int = 10, dim: int = 32):
    g = torch.Generator().manual_seed(100)  # same class centres for train and val
    centres = 4.0 * torch.randn(classes, dim, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_learns_separable_problem():
    (xt, yt), (xv, yv) = blobs(600, 1), blobs(200, 2)
    _, records = train_linear_probe(xt, yt, xv, yv, base_lrs=(0.001, 0.1), epochs=15, batch_size=64)
    best = max(records, key=lambda r: r.best_top1)
    assert best.best_top1 >= 95.0 and best.best_top5 >= best.best_top1
    assert all(0 <= r.best_epoch < 15 and r.final_top1 is not None for r in records)


def test_heads_are_independent():
    (xt, yt), (xv, yv) = blobs(200, 3), blobs(50, 4)
    alone, _ = train_linear_probe(xt, yt, xv, yv, base_lrs=(0.01,), epochs=3, batch_size=32, seed=7)
    together, _ = train_linear_probe(xt, yt, xv, yv, base_lrs=(0.01, 1.0), epochs=3, batch_size=32, seed=7)
    a, b = alone.head_state(0), together.head_state(0)
    assert torch.allclose(a["weight"], b["weight"], atol=1e-6) and torch.allclose(a["bias"], b["bias"], atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_dino_initialisation_and_lr_scaling():
    heads = LinearHeads(64, 10, 2)
    for head in heads.heads:
        assert head.bias.abs().sum() == 0 and 0.005 < head.weight.std() < 0.015
    probe = LinearProbe(64, 10, base_lrs=(0.001, 0.1), batch_size=512, epochs=10)
    assert [g["lr"] for g in probe.optimizer.param_groups] == pytest.approx([0.002, 0.2])
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in probe.optimizer.param_groups)
    for _ in range(10):
        probe.scheduler.step()
    assert probe.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to zero


def test_bad_learning_rates():
    with pytest.raises(UserError):
        LinearProbe(8, 2, base_lrs=(), batch_size=8, epochs=1)
    with pytest.raises(UserError):
        LinearProbe(8, 2, base_lrs=(-1.0,), batch_size=8, epochs=1)
