"""How seconds per epoch grow with N: t(N) = a + b*N by least squares, and the log-log slope.

A slope of 1 on log-log axes is "linear in N"; a large intercept a (fixed cost per epoch) pulls the
log-log slope below 1 even when the marginal cost per image is constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

# the original report: 128x128, batch 5, one 2018 GPU
REFERENCE_POINTS = ((10, 1.5), (20, 2.89))
REFERENCE_LOGLOG_SLOPE = float(np.log(2.89 / 1.5) / np.log(20 / 10))  # 0.946


@dataclass
class ScalingFit:
    n_points: int
    a: float  # seconds per epoch at N = 0: the fixed cost
    b: float  # seconds per epoch per image
    r2: float
    loglog_slope: float
    loglog_low: float  # 95% interval of the log-log slope
    loglog_high: float
    loglog_r2: float
    a_low: float = float("nan")  # 95% interval of the intercept (NaN with two points: they fit exactly)
    a_high: float = float("nan")
    distinct_n: int = 0  # a line through two N fits exactly however many runs sit at each

    def verdict(self) -> str:
        """The one rule for every fit the report shows: reliable unless R^2 < 0.9, the fixed cost is negative
        beyond its own 95% interval (a time cannot be below zero; -0.0005 s within noise is no defect), or
        there are too few points to tell."""
        problems = []
        if self.distinct_n < 3:
            problems.append(f"{self.distinct_n} distinct N fit any line")
        if self.r2 < 0.9:
            problems.append(f"R^2 {self.r2:.2f} < 0.9")
        if self.a_high < 0:
            problems.append(f"negative intercept ({self.a:.3g} s, 95% interval {self.a_low:.3g} to {self.a_high:.3g})")
        return "yes" if not problems else "no: " + ", ".join(problems)

    def predict(self, n: np.ndarray | float) -> np.ndarray | float:
        return self.a + self.b * np.asarray(n)


def fit_scaling(n: np.ndarray, seconds: np.ndarray) -> ScalingFit:
    """Fit both models to one point per run (pass every run, not group means: the scatter is the noise)."""
    n, seconds = np.asarray(n, dtype=float), np.asarray(seconds, dtype=float)
    keep = np.isfinite(n) & np.isfinite(seconds) & (n > 0) & (seconds > 0)
    n, seconds = n[keep], seconds[keep]
    if len(np.unique(n)) < 2:
        raise ValueError(f"a scaling fit needs at least two distinct N, got {sorted(set(n.tolist()))}")
    lin = stats.linregress(n, seconds)
    log = stats.linregress(np.log(n), np.log(seconds))
    t = stats.t.ppf(0.975, len(n) - 2) if len(n) > 2 else float("nan")  # two points fit exactly: no interval
    half, a_half = t * log.stderr, t * lin.intercept_stderr
    return ScalingFit(len(n), float(lin.intercept), float(lin.slope), float(lin.rvalue**2), float(log.slope),
                      float(log.slope - half), float(log.slope + half), float(log.rvalue**2),
                      float(lin.intercept - a_half), float(lin.intercept + a_half), len(np.unique(n)))
