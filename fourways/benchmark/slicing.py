"""The headline's paired timing: two runs on one CPU taking turns, and the ratio of their slices.

The two runs of a headline pair run at once on one CPU. Each first trains alone up to the first
step of its second epoch and stops itself there (the step timer's COMPARE_PAUSE_AT, set by
plans.pair_runs); then they take turns, SLICE_S each, the other one stopped (SIGSTOP), until both
end. A slice of the run is compared with the reference's slices just before and after it: inside
one state of the machine, whose speed drifts faster than a whole run (paired_ratio).
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import signal
import statistics
import time
from collections.abc import Sequence

from fourways import interrupts
from fourways.benchmark.plans import BenchRun
from fourways.compare import processes

# This machine's speed changes by up to 1.9x from one 0.1 s to the next and holds for 0.3-1 s
# (measured: the same loop's median step in 0.1 s windows, 550-1130 µs; another tenant's load,
# invisible from inside the VM). A slice of the run is compared with the reference's slices just
# before and after it, 0.05 s away: inside one state of the machine. Nine runs sliced 0.2 s each
# (a round of 1.8 s) left their paired ratios ±30 % apart.
SLICE_S = 0.05
# The first step of a slice refills the caches the other process evicted: not counted.
SKIP_PER_SLICE = 1
MIN_CYCLES = 5  # a pair's ratio for one repeat needs at least this many compared slices

Slices = Sequence[Sequence[float]]  # (start, median step interval) per slice, by start


def execute_pair(runs: Sequence[BenchRun], timeout: float) -> None:
    """Start both runs on one CPU; once each has stopped itself at its second epoch (or ended),
    let each run SLICE_S in turn, the other stopped, until both end."""
    cpu, own = min(os.sched_getaffinity(0)), os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # the runs inherit it, their threads too
    try:
        active = {processes.launch(run).pid: run for run in runs}
    finally:
        os.sched_setaffinity(0, own)
    try:
        time_by_turns(active, timeout)
    except BaseException:  # an interrupted benchmark leaves no stopped process behind
        interrupts.end_all(active)
        raise


def time_by_turns(active: dict[int, BenchRun], timeout: float) -> None:
    """Wait until both runs are stopped at the barrier (or ended), then alternate them; `active`
    keeps the runs not yet ended."""
    for run in active.values():
        run.windows = []
    warming = set(active)
    while warming:  # the warm-up: both train at once up to the barrier
        time.sleep(0.01)
        for pid in list(warming):
            run = active[pid]
            done, status, usage = os.wait4(pid, os.WNOHANG | os.WUNTRACED)
            if done and os.WIFSTOPPED(status):
                warming.discard(pid)
            elif done:  # ended before the barrier: an error, or a run too short to pause
                processes.ended(run, status, usage)
                warming.discard(pid)
                del active[pid]
            elif time.perf_counter() - run.started > timeout:
                processes.reap(pid, run, timeout)  # ends it
                warming.discard(pid)
                del active[pid]
    turn = 0
    while active:
        pid = list(active)[turn % len(active)]
        # The time before the signal: a woken run may preempt us on its CPU and step at once.
        start = time.perf_counter()
        os.killpg(pid, signal.SIGCONT)
        time.sleep(active[pid].slice_s or SLICE_S)
        os.killpg(pid, signal.SIGSTOP)  # a process that has just ended is a zombie: no error
        active[pid].windows.append((start, time.perf_counter()))
        if processes.reap(pid, active[pid], timeout):
            del active[pid]
        else:
            turn += 1


def slice_medians(run: BenchRun) -> list[tuple[float, float]]:
    """(start, median step interval) of each slice after the barrier: intervals between two
    steps of that slice only, its first one left out (SKIP_PER_SLICE)."""
    logs = [json.loads(p.read_text()) for p in (run.log_dir / "steps").glob("*.json")]
    times = next((log["step_times"] for log in logs if log["step_times"]), [])
    timed = times[int(run.env["COMPARE_PAUSE_AT"]) - 1 :]
    slices = []
    for start, stop in run.windows or []:
        first, last = bisect.bisect_left(timed, start), bisect.bisect_right(timed, stop)
        gaps = [b - a for a, b in itertools.pairwise(timed[first:last])][SKIP_PER_SLICE:]
        if len(gaps) >= 3:
            slices.append((start, statistics.median(gaps)))
    return slices


def paired_ratio(run: Slices, reference: Slices, slice_s: float = SLICE_S) -> float | None:
    """The median, over the run's slices, of its median step against the mean of the
    reference's slices just before and just after it (a drift linear over 2 slices cancels);
    `slice_s`: the slices' length."""
    starts = [start for start, _ in reference]
    ratios = []
    for start, median in run:
        i = bisect.bisect(starts, start)
        if 0 < i < len(reference) and starts[i] - starts[i - 1] < 3 * slice_s:
            ratios.append(median / ((reference[i - 1][1] + reference[i][1]) / 2))
    return statistics.median(ratios) if len(ratios) >= MIN_CYCLES else None
