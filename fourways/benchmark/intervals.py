"""The confidence interval of a median over a few repeats, with the coverage it really has.

A bootstrap interval of a median over 3 or 6 repeats does not hold its nominal 95 %: every
resample's median lies between the smallest and largest value, so with 3 repeats it is [min, max],
which holds the true median only 75 % of the time. The order-statistic (binomial) interval is
exact for any continuous distribution and any n: each repeat lies below the true median with
probability 1/2, independently, so the number below it is Binomial(n, 1/2), and
[x_(k), x_(n+1-k)] (the k-th smallest to the k-th largest) misses the median only when k or more
repeats lie on one side of it: coverage 1 - 2 P(Binomial(n, 1/2) <= k - 1). With ties (a
discrete distribution) the interval is closed, so its coverage is at least that.

    n = 3: [min, max], 75.0 %       n = 6: [min, max], 96.9 %
    n = 9: 2nd smallest to 2nd largest, 96.1 %   (never less than the level when it can be met)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

LEVEL = 0.95  # the coverage a verdict needs


def coverage(n: int, k: int) -> float:
    """P(x_(k) <= true median <= x_(n+1-k)) for n independent repeats (continuous)."""
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n  # P(Binomial(n, 1/2) <= k - 1)
    return 1 - 2 * tail


def rank_for(n: int, level: float = LEVEL) -> int:
    """The largest k whose interval still covers `level`; 1 ([min, max]) when none does."""
    k = 1
    while 2 * (k + 1) <= n + 1 and coverage(n, k + 1) >= level:
        k += 1
    return k


def median_interval(values: Iterable[float], level: float = LEVEL) -> dict[str, float]:
    """Median, min-max, and the order-statistic interval of the median with its coverage."""
    ordered = sorted(values)
    n = len(ordered)
    k = rank_for(n, level)
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "low": ordered[k - 1],
        "high": ordered[n - k],
        "n": n,
        "coverage": coverage(n, k),
    }


def decides(interval: dict[str, float], level: float = LEVEL) -> bool:
    """Whether the interval is sure enough for a verdict: its coverage reaches `level`."""
    return interval["coverage"] >= level


def repeats_needed(level: float = LEVEL) -> int:
    """The fewest repeats whose [min, max] covers `level` (6 for 95 %)."""
    n = 1
    while coverage(n, 1) < level:
        n += 1
    return n


def method(interval: dict[str, float]) -> str:
    """The sentence stated beside a table: how the interval was made, n and its coverage."""
    n, cov = int(interval["n"]), interval["coverage"]
    k = rank_for(n)
    bounds = "min–max" if k == 1 else f"the {ordinal(k)} smallest to the {ordinal(k)} largest"
    return (
        f"in brackets the order-statistic interval of the median over n = {n} repeats ({bounds}), "
        f"which holds the true median with probability {cov:.1%} for any distribution"
    )


def ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"
