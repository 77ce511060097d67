"""Intervals every domain reports: the Wilson score interval of a proportion (robust accuracy, attack success,
accuracy on a test set of n images)."""
from __future__ import annotations

import math


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion successes/n (95% with z = 1.96); NaNs for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
