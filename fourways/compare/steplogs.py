"""What the runs said and what they cost: metrics.json, and the step timer's records.

The step timer (benchmarks/steptimer/sitecustomize.py) leaves one JSON file per process in the
run's logs/steps/: its optimizer-step times, peak memory and thread count. Step time is the
interval between consecutive optimizer steps of rank 0, in every epoch but the first (warm-up),
never across an epoch's end (validation, checkpoints).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fourways.compare.plans import Run


def quartiles(values: Sequence[float]) -> dict[str, float]:
    """Median, p25 and p75 (inclusive method), and how many values."""
    if len(values) < 2:
        return {"median": values[0], "p25": values[0], "p75": values[0], "n": len(values)}
    p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "p25": p25, "p75": p75, "n": len(values)}


def steady_intervals(step_times: Sequence[float], epochs: int) -> list[float]:
    """Seconds between consecutive optimizer steps inside one epoch, the first epoch excluded."""
    per_epoch = len(step_times) // epochs
    if per_epoch * epochs != len(step_times) or per_epoch < 2:
        return []
    first = per_epoch if epochs > 1 else 1  # one epoch only: drop just the first step
    return [
        step_times[k] - step_times[k - 1]
        for k in range(max(first, 1), len(step_times))
        if k % per_epoch  # not the first step of an epoch: that interval spans the epoch's end
    ]


def read_step_log(run: Run) -> dict[str, Any] | None:
    """Rank 0's step times, and every process's peak memory and threads, from the step timer."""
    records = [json.loads(p.read_text()) for p in sorted((run.log_dir / "steps").glob("*.json"))]
    trained = [r for r in records if r["step_times"]]
    if not trained:
        return None
    main = min(trained, key=lambda r: int(r["rank"] or 0))
    times = main["step_times"]
    intervals = steady_intervals(times, run.settings.epochs)
    assert run.started is not None
    return {
        "steady_step_s": quartiles(intervals) if intervals else None,
        "intervals_s": intervals,
        "startup_s": times[0] - run.started,
        "threads": sorted({r["threads"] for r in trained}),
        "processes": [process_summary(r) for r in records],
    }


def process_summary(record: dict[str, Any]) -> dict[str, Any]:
    """One process of a run, as report.json lists it."""
    return {
        "argv0": Path(record["argv"][0]).name if record["argv"] else "?",
        "rank": record["rank"],
        "steps": len(record["step_times"]),
        "max_rss_mib": record["max_rss_kib"] / 1024,
    }


def epoch_step_s(metrics: dict[str, Any]) -> float | None:
    """The coarse figure from metrics.json: epoch time (incl. validation) / steps per epoch."""
    epochs = metrics["epochs"]
    per_epoch = metrics["optimizer_steps"] / len(epochs)
    steady = [e["epoch_s"] for e in epochs[1:]] or [epochs[0]["epoch_s"]]
    return statistics.median(steady) / per_epoch if per_epoch else None


def collect(run: Run) -> None:
    """Read a finished run's metrics.json (if it succeeded) and its step timer's records."""
    path = run.run_dir / "metrics.json"
    if run.exit_code == 0 and path.exists():
        run.metrics = json.loads(path.read_text())
    run.steps = read_step_log(run)
