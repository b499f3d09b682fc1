"""What the runs measured: one flat record per run, and their statistics over repeats.

A record is what results.json keeps of a run and what the tables and plots are made of. Results
groups the records by configuration and gives each figure, or each ratio of two configurations,
as its median over repeats with the order-statistic interval of that median (intervals.py).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fourways.benchmark import intervals
from fourways.benchmark.plans import BenchRun, Point, pair_name
from fourways.benchmark.profiling import read_profile
from fourways.benchmark.slicing import SLICE_S, paired_ratio, slice_medians
from fourways.compare import steplogs


def record(run: BenchRun, root: Path) -> dict[str, Any]:
    """One run's figures, flat: what the tables and plots are made of; `root`: the checkout
    (the profile's runner code)."""
    rec = dataclasses.asdict(run.point) | {"repeat": run.repeat, "ok": run.ok, "pair": run.pair}
    rec |= {"exit_code": run.exit_code, "total_s": run.wall_s, "log_dir": str(run.log_dir)}
    rec["busy_before"] = run.busy_before
    if run.max_rss_kib:
        rec["peak_rss_mib"] = run.max_rss_kib / 1024
    if run.metrics:
        rec["train_s"] = run.metrics["wall_clock_s"]
    if run.windows is not None:  # time-sliced: its own slices only; start-up is not comparable
        if slices := slice_medians(run):
            q = steplogs.quartiles([median for _, median in slices])
            rec |= {"step_us": q["median"] * 1e6, "step_p25_us": q["p25"] * 1e6}
            rec |= {"step_p75_us": q["p75"] * 1e6, "slices": slices}
        if run.slice_s is not None:  # a user's model: slices of its own length
            rec["slice_s"] = run.slice_s
    elif run.steps:
        rec["startup_s"] = run.steps["startup_s"]
        rec["threads_seen"] = run.steps["threads"]
        if (q := run.steps["steady_step_s"]) is not None:
            rec |= {"step_us": q["median"] * 1e6, "step_p25_us": q["p25"] * 1e6}
            rec |= {"step_p75_us": q["p75"] * 1e6, "steps_timed": q["n"]}
    if run.point.section == "profile" and (prof := read_profile(run, root)):
        rec["profile"] = prof
    return rec


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median and min-max over repeats, and the order-statistic interval of the median with the
    coverage it has for that many repeats (intervals.py)."""
    return intervals.median_interval(values)


class Results:
    """The records, grouped by configuration, with paired ratios (same repeat, same config)."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self.records = records
        self.by_point: dict[Point, list[dict[str, Any]]] = defaultdict(list)
        for rec in records:
            if rec["ok"]:
                self.by_point[point_of(rec)].append(rec)

    def stat(self, point: Point, field: str) -> dict[str, float] | None:
        values = [r[field] for r in self.by_point.get(point, []) if field in r]
        return spread(values) if values else None

    def paired(self, runner: str, reference: str) -> dict[str, float] | None:
        """A headline pair's ratio (slicing.paired_ratio), one per repeat, and their spread."""
        name, slices = pair_name(runner, reference), defaultdict(dict)
        slice_s = SLICE_S
        for rec in self.records:
            if rec.get("pair") == name and rec["ok"] and rec.get("slices"):
                slices[rec["repeat"]][rec["runner"]] = rec["slices"]
                slice_s = rec.get("slice_s", SLICE_S)
        values = [
            paired_ratio(by_runner[runner], by_runner[reference], slice_s)
            for by_runner in slices.values()
            if len(by_runner) == 2
        ]
        ratios = [v for v in values if v is not None]
        # A repeat whose runs shared too few slices is left out, and the report says so.
        return spread(ratios) | {"left_out": len(values) - len(ratios)} if ratios else None

    def ratio(self, point: Point, reference: Point, field: str = "step_us") -> dict | None:
        """`point`'s figure against `reference`'s of the same repeat, over repeats."""
        ref = {r["repeat"]: r[field] for r in self.by_point.get(reference, []) if field in r}
        values = [
            r[field] / ref[r["repeat"]]
            for r in self.by_point.get(point, [])
            if field in r and r["repeat"] in ref
        ]
        return spread(values) if values else None


def point_of(rec: dict[str, Any]) -> Point:
    return Point(**{f.name: rec[f.name] for f in dataclasses.fields(Point)})
