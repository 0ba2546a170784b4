"""DINO loss against an explicit loop reference, centre update, the temperature it is given, gradient flow."""

import math

import numpy as np
import pytest
import torch

from container_ssl.ssl.loss import DINOLoss
from container_ssl.ssl.schedules import teacher_temp_schedule

OUT_DIM, BATCH, NCROPS = 7, 3, 4
WARM_EPOCHS, NEPOCHS = 10, 20


def _reference_loss(student, teacher, center, student_temp, teacher_temp):
    """Plain python loops over pairs, samples and dimensions, float64."""
    s = student.double().tolist()
    t = teacher.double().tolist()
    c = center.double().view(-1).tolist()
    total, pairs = 0.0, 0
    for i in range(2):
        for v in range(NCROPS):
            if v == i:
                continue
            pair = 0.0
            for b in range(BATCH):
                tz = [(t[i * BATCH + b][k] - c[k]) / teacher_temp for k in range(OUT_DIM)]
                tmax = max(tz)
                tden = sum(math.exp(z - tmax) for z in tz)
                q = [math.exp(z - tmax) / tden for z in tz]
                sz = [s[v * BATCH + b][k] / student_temp for k in range(OUT_DIM)]
                smax = max(sz)
                log_den = smax + math.log(sum(math.exp(z - smax) for z in sz))
                pair += sum(-q[k] * (sz[k] - log_den) for k in range(OUT_DIM))
            total += pair / BATCH
            pairs += 1
    return total / pairs


def _make(**kw):
    return DINOLoss(OUT_DIM, NCROPS, **kw).double()


def _temps():
    """The trainer's per-epoch teacher temperatures for this module's warm-up (0.04 -> 0.07 over WARM_EPOCHS)."""
    return teacher_temp_schedule(0.04, 0.07, WARM_EPOCHS, NEPOCHS)


@pytest.mark.parametrize("epoch", [0, 4])
def test_loss_matches_loop_reference(epoch):
    g = torch.Generator().manual_seed(epoch)
    student = torch.randn(NCROPS * BATCH, OUT_DIM, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * BATCH, OUT_DIM, generator=g, dtype=torch.float64)
    loss_fn = _make()
    loss_fn.center.copy_(torch.randn(1, OUT_DIM, generator=g, dtype=torch.float64) * 0.3)  # non-zero centre
    center_before = loss_fn.center.clone()
    temp = 0.04 + (0.07 - 0.04) * epoch / (WARM_EPOCHS - 1)
    expected = _reference_loss(student, teacher, center_before, 0.1, temp)
    loss = loss_fn(student, teacher, float(_temps()[epoch]))
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert loss_fn.last_stats["teacher_temp"] == pytest.approx(temp)
    assert float(loss_fn.last_stats["loss"]) == pytest.approx(expected, rel=1e-6)


def test_center_update_formula():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(NCROPS * BATCH, OUT_DIM, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * BATCH, OUT_DIM, generator=g, dtype=torch.float64)
    loss_fn = _make(center_momentum=0.8)
    loss_fn.center.fill_(0.5)
    loss_fn(student, teacher, 0.04)
    expected = 0.8 * 0.5 + 0.2 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, expected)
    assert not loss_fn.center.requires_grad


def test_teacher_temperature_schedule():
    temps = list(_temps())
    assert len(temps) == NEPOCHS  # one per epoch of the run
    np.testing.assert_allclose(temps[:WARM_EPOCHS], np.linspace(0.04, 0.07, WARM_EPOCHS))
    assert temps[0] == pytest.approx(0.04)
    assert all(t == pytest.approx(0.07) for t in temps[WARM_EPOCHS - 1:])


def test_the_temperature_given_is_the_one_used():
    """The loss has no schedule of its own: the same outputs at two temperatures give the reference at each."""
    g = torch.Generator().manual_seed(5)
    student = torch.randn(NCROPS * BATCH, OUT_DIM, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * BATCH, OUT_DIM, generator=g, dtype=torch.float64)
    for temp in (0.03, 0.2):
        loss_fn = _make()
        assert loss_fn(student, teacher, temp).item() == pytest.approx(
            _reference_loss(student, teacher, loss_fn.center * 0, 0.1, temp), rel=1e-10)
        assert loss_fn.last_stats["teacher_temp"] == temp
    with pytest.raises(ValueError, match="teacher temperature"):
        _make()(student, teacher, 0.0)


def test_gradient_flows_to_student_only():
    student = torch.randn(NCROPS * BATCH, OUT_DIM, requires_grad=True)
    teacher = torch.randn(2 * BATCH, OUT_DIM, requires_grad=True)
    loss = DINOLoss(OUT_DIM, NCROPS)(student, teacher, 0.04)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_collapse_diagnostics():
    loss_fn = DINOLoss(OUT_DIM, NCROPS)
    student = torch.zeros(NCROPS * BATCH, OUT_DIM)
    # Identical constant teacher rows -> uniform teacher distribution: entropy log K, mean is uniform.
    loss_fn(student, torch.zeros(2 * BATCH, OUT_DIM), 0.04)
    stats = loss_fn.last_stats
    assert float(stats["teacher_entropy"]) == pytest.approx(math.log(OUT_DIM), rel=1e-5)
    assert float(stats["teacher_kl_uniform"]) == pytest.approx(0.0, abs=1e-5)
    # One dominant prototype for every sample -> entropy ~0, KL to uniform ~log K.
    loss_fn = DINOLoss(OUT_DIM, NCROPS)
    teacher = torch.zeros(2 * BATCH, OUT_DIM)
    teacher[:, 2] = 50.0
    loss_fn(student, teacher, 0.04)
    stats = loss_fn.last_stats
    assert float(stats["teacher_entropy"]) == pytest.approx(0.0, abs=1e-4)
    assert float(stats["teacher_kl_uniform"]) == pytest.approx(math.log(OUT_DIM), rel=1e-4)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="ncrops"):
        DINOLoss(OUT_DIM, NCROPS)(torch.zeros(5, OUT_DIM), torch.zeros(2, OUT_DIM), 0.04)



def test_center_is_all_reduced_across_ranks(monkeypatch):
    """Emulate 2 ranks: the centre and diagnostics must use the sum over ranks / (world x batch)."""
    import torch.distributed as dist

    g = torch.Generator().manual_seed(7)
    data = [(torch.randn(NCROPS * BATCH, OUT_DIM, generator=g), torch.randn(2 * BATCH, OUT_DIM, generator=g))
            for _ in range(2)]
    recorded = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    # Rank 1 alone (world of 1) records what it would contribute to the all-reduce.
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: recorded.setdefault("rank1", t.clone()))
    rank1 = DINOLoss(OUT_DIM, NCROPS, center_momentum=0.5)
    rank1(*data[1], 0.04)
    # Rank 0 in a world of 2: the all-reduce adds rank 1's contribution.
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: t.add_(recorded["rank1"]))
    rank0 = DINOLoss(OUT_DIM, NCROPS, center_momentum=0.5)
    rank0(*data[0], 0.04)
    expected = 0.5 * torch.cat([data[0][1], data[1][1]]).mean(0, keepdim=True)
    torch.testing.assert_close(rank0.center, expected)
    monkeypatch.undo()
    alone = DINOLoss(OUT_DIM, NCROPS)
    alone(*data[0], 0.04)
    entropies = [float(alone.last_stats["teacher_entropy"]), float(rank1.last_stats["teacher_entropy"])]
    mean_entropy = sum(entropies) / 2
    assert float(rank0.last_stats["teacher_entropy"]) == pytest.approx(mean_entropy, rel=1e-5)
