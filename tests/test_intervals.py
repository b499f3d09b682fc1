"""The benchmark's interval of a median holds the coverage it states, and verdicts wait for it."""

from __future__ import annotations

import math
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fourways.benchmark import intervals, sections
from fourways.benchmark.results import spread

TRIALS = 4000
# Each distribution with its true median: symmetric, skewed (like step times: a long right tail),
# heavy-tailed, and discrete (ties: the closed interval covers at least the stated level).
DISTRIBUTIONS: dict[str, tuple[Callable[[random.Random], float], float]] = {
    "normal": (lambda rng: rng.gauss(1.0, 0.05), 1.0),
    "lognormal": (lambda rng: rng.lognormvariate(0.0, 0.5), 1.0),
    "cauchy": (lambda rng: math.tan(math.pi * (rng.random() - 0.5)), 0.0),
    "discrete": (lambda rng: float(rng.choice((1, 1, 2, 3, 3, 4))), 2.5),
}


def empirical_coverage(draw: Callable[[random.Random], float], median: float, n: int) -> float:
    rng = random.Random(n)  # seeded: the same draws every run
    hits = 0
    for _ in range(TRIALS):
        st = intervals.median_interval(draw(rng) for _ in range(n))
        hits += st["low"] <= median <= st["high"]
    return hits / TRIALS


@pytest.mark.parametrize("n", [3, 5, 6, 9, 12])
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_the_interval_covers_at_least_its_stated_level(name: str, n: int) -> None:
    draw, median = DISTRIBUTIONS[name]
    stated = intervals.median_interval(range(n))["coverage"]
    # An estimate from TRIALS draws is off by at most 4 standard errors (1 in 15,000 per case).
    margin = 4 * math.sqrt(stated * (1 - stated) / TRIALS)
    assert empirical_coverage(draw, median, n) >= stated - margin, (name, n, stated)


def test_the_stated_coverage_is_the_exact_one() -> None:
    """For a continuous distribution the coverage is exact, not just a lower bound: a stated level
    above the real one fails the test above, one below it fails this one."""
    for n in (3, 6, 9):
        stated = intervals.median_interval(range(n))["coverage"]
        margin = 4 * math.sqrt(stated * (1 - stated) / TRIALS)
        assert abs(empirical_coverage(*DISTRIBUTIONS["normal"], n) - stated) <= margin, n


def test_the_coverage_of_min_max_and_of_narrower_intervals() -> None:
    assert intervals.median_interval([3.0, 1.0, 2.0]) == {
        "median": 2.0, "min": 1.0, "max": 3.0, "low": 1.0, "high": 3.0, "n": 3, "coverage": 0.75,
    }  # fmt: skip
    six = intervals.median_interval([float(i) for i in range(6)])
    assert (six["low"], six["high"], six["coverage"]) == (0.0, 5.0, 1 - 2 * 0.5**6)
    nine = intervals.median_interval([float(i) for i in range(9)])
    assert (nine["low"], nine["high"]) == (1.0, 7.0)  # 2nd smallest to 2nd largest
    assert nine["coverage"] == pytest.approx(1 - 2 * 10 / 512)
    assert nine["coverage"] >= intervals.LEVEL
    assert intervals.repeats_needed() == 6


def test_a_verdict_needs_an_interval_that_covers_95_percent() -> None:
    under = [1.01, 1.02, 1.03, 1.01, 1.02, 1.03]
    assert sections.target_line("r", spread(under[:3]), 1.10).endswith(
        "undecided: 3 repeats give a 75.0% interval, a verdict needs 95% (6 repeats or more)"
    )
    assert sections.target_line("r", spread(under), 1.10).endswith(": met")
    over = [1.2 + x for x in under]
    assert sections.target_line("r", spread(over), 1.10).endswith(": MISSED")
    spans = sections.target_line("r", spread(under), 1.02)
    assert "undecided: the interval spans" in spans
    assert statistics.median(under) == spread(under)["median"]
