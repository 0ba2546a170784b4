"""EMA teacher: exact update formula, buffers untouched, DDP-style names."""

import pytest
import torch
from torch import nn

from container_ssl.ssl.dino import update_teacher


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))


class _Wrapped(nn.Module):
    """Stands in for DistributedDataParallel: parameters are named ``module.*``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def _built(seed):
    torch.manual_seed(seed)
    net = _net()
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer and touch the BN statistics
    return net


def test_update_matches_formula_and_leaves_buffers():
    student, teacher = _built(0), _built(1)
    with torch.no_grad():
        teacher[1].running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = 0.9
    update_teacher(student, teacher, m)
    s_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, m * before[name] + (1 - m) * s_params[name], rtol=0, atol=1e-7)
    for name, b in teacher.named_buffers():
        assert torch.equal(b, before[name]), name


def test_wrapped_student_matches_by_name():
    student, teacher = _built(0), _built(1)
    expected = {n: 0.5 * p.detach() + 0.5 * dict(student.named_parameters())[n].detach()
                for n, p in teacher.named_parameters()}
    update_teacher(_Wrapped(student), teacher, 0.5)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, expected[name])


def test_mismatched_models_fail_loudly():
    with pytest.raises(KeyError):
        update_teacher(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)
