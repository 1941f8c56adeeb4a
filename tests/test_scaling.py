import numpy as np
import pytest

from analysis.scaling import REFERENCE_LOGLOG_SLOPE, fit_scaling


def test_linear_timings_recover_intercept_and_slope():
    rng = np.random.default_rng(0)
    n = np.repeat([5, 10, 20, 40, 80], 3)
    t = 0.2 + 0.05 * n + rng.normal(0, 0.005, len(n))
    fit = fit_scaling(n, t)
    assert fit.a == pytest.approx(0.2, abs=0.02) and fit.b == pytest.approx(0.05, abs=0.002)
    assert fit.r2 > 0.99
    assert fit.loglog_slope < 1.0  # a fixed cost per epoch bends the log-log line below 1


def test_power_law_gives_its_exponent_with_an_interval():
    rng = np.random.default_rng(1)
    n = np.repeat([5, 10, 20, 40, 80], 4)
    t = 0.03 * n**0.8 * np.exp(rng.normal(0, 0.02, len(n)))
    fit = fit_scaling(n, t)
    assert fit.loglog_slope == pytest.approx(0.8, abs=0.03)
    assert fit.loglog_low < 0.8 < fit.loglog_high and fit.loglog_high - fit.loglog_low < 0.1


def test_reference_points_of_the_original():
    fit = fit_scaling(np.array([10, 20]), np.array([1.5, 2.89]))
    assert fit.loglog_slope == pytest.approx(0.946, abs=0.001) == REFERENCE_LOGLOG_SLOPE
    assert fit.b == pytest.approx(0.139) and np.isnan(fit.loglog_low)


def test_one_n_is_an_error():
    with pytest.raises(ValueError, match="two distinct N"):
        fit_scaling(np.array([10, 10]), np.array([1.0, 1.1]))
