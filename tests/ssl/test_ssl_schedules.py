"""Cosine schedules: warm-up end points, exact final value, monotone decay, length."""

import numpy as np
import pytest

from container_ssl.errors import UserError
from container_ssl.ssl.ema import teacher_momentum_schedule
from container_ssl.ssl.schedules import cosine_schedule


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
    np.testing.assert_array_equal(teacher_momentum_schedule(0.996, 1.0, 3, 5), s)


def test_cosine_midpoint_is_average():
    s = cosine_schedule(1.0, 0.0, epochs=1, iters_per_epoch=101)
    assert s[50] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"epochs": 0, "iters_per_epoch": 3},
                                    {"epochs": 2, "iters_per_epoch": 3, "warmup_epochs": 3}])
def test_bad_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError):
        cosine_schedule(1.0, 0.0, **kwargs)
