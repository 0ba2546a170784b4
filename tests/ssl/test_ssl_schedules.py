"""Schedules: cosine warm-up end points, exact final value, monotone decay, length; a run's schedules."""

import numpy as np
import pytest

from container_ssl.config import load_config
from container_ssl.errors import UserError
from container_ssl.ssl.schedules import (
    Schedules,
    cosine_schedule,
    teacher_temp_schedule,
)


def test_warmup_then_cosine_end_points():
    s = cosine_schedule(0.5, 1e-3, epochs=10, iters_per_epoch=7, warmup_epochs=2, start_warmup_value=0.01)
    warm = 2 * 7
    assert len(s) == 70
    assert s[0] == pytest.approx(0.01)
    assert s[warm - 1] == pytest.approx(0.5)      # last warm-up iteration reaches the base value
    assert s[warm] == pytest.approx(0.5)          # cosine starts at the base value
    assert abs(s[-1] - 1e-3) < 1e-9               # and ends exactly at the final value
    assert np.all(np.diff(s[:warm]) > 0)
    assert np.all(np.diff(s[warm:]) < 0)


def test_no_warmup_and_increasing_schedule():
    s = cosine_schedule(0.996, 1.0, epochs=3, iters_per_epoch=5)
    assert len(s) == 15 and s[0] == pytest.approx(0.996) and abs(s[-1] - 1.0) < 1e-9
    assert np.all(np.diff(s) > 0)
    cfg = load_config(overrides=["optim.epochs=3", "optim.warmup_epochs=0", "optim.momentum_teacher=0.996",
                                 "optim.momentum_teacher_end=1.0"])
    np.testing.assert_array_equal(Schedules.for_run(cfg, iters_per_epoch=5, world_size=1).momentum, s)


def test_cosine_midpoint_is_average():
    s = cosine_schedule(1.0, 0.0, epochs=1, iters_per_epoch=101)
    assert s[50] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"epochs": 0, "iters_per_epoch": 3},
                                    {"epochs": 2, "iters_per_epoch": 3, "warmup_epochs": 3}])
def test_bad_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError):
        cosine_schedule(1.0, 0.0, **kwargs)


def test_run_schedules_follow_the_config():
    """lr scaled by the global batch / 256 with its warm-up, wd and momentum per iteration, temperature per epoch."""
    cfg = load_config(overrides=["optim.epochs=4", "optim.base_lr=0.001", "optim.batch_size_per_gpu=64",
                                 "optim.warmup_epochs=1", "optim.min_lr=1e-5", "loss.warmup_teacher_temp=0.03",
                                 "loss.teacher_temp=0.06", "loss.warmup_teacher_temp_epochs=2"])
    s = Schedules.for_run(cfg, iters_per_epoch=3, world_size=2)
    assert len(s.lr) == len(s.wd) == len(s.momentum) == 12 and len(s.teacher_temp) == 4
    assert s.lr[2] == pytest.approx(0.001 * 128 / 256) and s.lr[-1] == pytest.approx(1e-5)
    np.testing.assert_allclose(s.teacher_temp, [0.03, 0.06, 0.06, 0.06])


def test_teacher_temperature_warmup_longer_than_the_run():
    temps = teacher_temp_schedule(0.04, 0.07, warmup_teacher_temp_epochs=10, nepochs=4)
    np.testing.assert_allclose(temps[:4], np.linspace(0.04, 0.07, 10)[:4])  # the run ends inside the warm-up
    with pytest.raises(UserError, match="temperatures must be > 0"):
        teacher_temp_schedule(0.0, 0.07, 1, 4)
