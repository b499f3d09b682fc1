"""Per optimizer step: what each framework adds, what this project adds, where it stops mattering.

    python benchmarks/overhead.py                 # everything: about 20 minutes on 2 cores
    python benchmarks/overhead.py --sections headline   # the split, 6 repeats: about 10 minutes
    python benchmarks/overhead.py --quick         # fewer points and repeats (headline: 3, 5 min)

3 repeats give the median an interval that covers it 75 % of the time, so --quick's verdicts read
"undecided": it is a look; 6 repeats (96.9 %) are the fewest that decide (benchmarks/intervals.py).
Linux only (wait4, sched_setaffinity, /proc). Ctrl-C or SIGTERM ends every run it started, says
what was cut short in one line, exits 130 / 143 and writes no results (interrupts.py).

Every run is a runner's real entry point, started by compare.py's machinery: the same thread count
for all (1, unless --threads), the same step timer (torch's global optimizer-step hook), its own
process. The headline times its runs two at a time, time-sliced on one CPU (see SLICE_S); the other
sections' runs are interleaved: each repeat runs every configuration once, its runners in an order
rotated from one repeat to the next, so that a slow minute on the machine hits all of them.

Sections:
  headline  width 32, 40000 samples, 4 epochs: each framework's minimal loop (minimal/) and its
            full runner, and the raw-tensor loop (benchmarks/raw_loop.py). Splits the cost:
            the framework (its minimal loop / minimal plain PyTorch) and this project (the full
            runner / its framework's minimal loop), each ratio from a pair of runs timed
            together, with the order-statistic interval of the median over repeats
            (benchmarks/intervals.py: [min, max] of 6 repeats covers 96.9 %, of 3 only 75 %).
  width     hidden width 32 .. 65536: where the framework's per-step cost stops mattering.
  samples   1k .. 100k samples: whole-command time, start-up included.
  ddp       plain PyTorch with 1 process, 1 process x 2 threads and 2 processes, per width:
            where DDP starts to pay; and every runner with 2 processes at the default width.
  profile   a sampled profile of each runner's steady state: where a step's time goes.

Writes reports/benchmark-<timestamp>/ (or --out): results.md, results.json and PNG plots.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import itertools
import json
import os
import signal
import statistics
import sys
import sysconfig
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
import compare
from benchmarks import intervals
from fourways import interrupts, settings, task
from fourways.contract import errors

RUNNERS = ("raw", "torch", "fabric", "accelerate", "lightning")
FRAMEWORKS = ("fabric", "accelerate", "lightning")
SECTIONS = ("headline", "width", "samples", "ddp", "profile")
# Each runner's framework, as its minimal loop (minimal/): the baseline that splits a full
# runner's cost into what its framework adds and what this project adds.
MINIMAL_OF = {"torch": "min-torch", "fabric": "min-fabric", "accelerate": "min-accelerate",
              "lightning": "min-lightning"}  # fmt: skip
# Each headline ratio, (run, reference): the two runs of a pair are timed together (below).
HEADLINE_PAIRS = (
    ("min-torch", "raw"),
    *((MINIMAL_OF[f], MINIMAL_OF["torch"]) for f in FRAMEWORKS),
    *MINIMAL_OF.items(),
)
NAMES = {"torch": "plain PyTorch", "fabric": "Fabric", "accelerate": "Accelerate",
         "lightning": "Trainer"}  # fmt: skip
# The headline task: the default model (width 32) and batch, with 40000 samples and 4 epochs:
# 1000 steps of warm-up (the first epoch), then 3000 timed steps, not the default task's 125,
# spread over many time slices (below). The fastest loop (raw, 365 µs/step here) fills 20 of its
# slices; on a CPU twice as fast, 10: still twice MIN_CYCLES. One timed epoch of 1000 steps
# filled 7 here, and would fill 3-4 on a CPU twice as fast: too few for a ratio.
HEADLINE = {"samples": 40000, "epochs": 4}
# The two runs of a headline pair run at once on one CPU. Each first trains alone up to the first
# step of its second epoch and stops itself there (the step timer's COMPARE_PAUSE_AT); then they
# take turns, SLICE_S each, the other one stopped (SIGSTOP), until both end. This machine's speed
# changes by up to 1.9x from one 0.1 s to the next and holds for 0.3-1 s (measured: the same
# loop's median step in 0.1 s windows, 550-1130 µs; another tenant's load, invisible from inside
# the VM). A slice of the run is compared with the reference's slices just before and after it,
# 0.05 s away: inside one state of the machine. Nine runs sliced 0.2 s each (a round of 1.8 s)
# left their paired ratios ±30 % apart.
SLICE_S = 0.05
# The first step of a slice refills the caches the other process evicted: not counted.
SKIP_PER_SLICE = 1
MIN_CYCLES = 5  # a pair's ratio for one repeat needs at least this many compared slices
PROJECT_TARGET = 1.10  # a full runner against its own framework's minimal loop
PLAIN_VS_RAW_TARGET = 1.25  # minimal plain PyTorch (DataLoader) against the raw-tensor loop
WIDE_TARGET = 1.1
# A headline ratio decides something only when its interval covers 95 % (intervals.LEVEL: at least
# 6 repeats) and lies within this of it.
INTERVAL_LIMIT = {False: 0.10, True: 0.15}  # full run, --quick


@dataclass(frozen=True)
class Point:
    """One configuration of the task, run by one runner."""

    section: str
    runner: str
    width: int = task.HIDDEN_DIM
    samples: int = task.NUM_SAMPLES
    epochs: int = task.EPOCHS
    processes: int = 1
    threads: int = 1

    def config(self, **change: Any) -> Point:
        """The same configuration for another runner (or other fields): for pairing ratios."""
        return dataclasses.replace(self, **change)

    @property
    def key(self) -> str:
        return (
            f"{self.section}/w{self.width}-n{self.samples}-e{self.epochs}"
            f"-p{self.processes}-t{self.threads}"
        )


@dataclass
class BenchRun(compare.Run):
    point: Point | None = None
    repeat: int = 0
    busy_before: float | None = None  # share of the CPUs busy with other work at its start
    pair: str = ""  # headline: the pair it is timed in
    windows: list[tuple[float, float]] | None = None  # sliced: when it was allowed to run


QUIET = 0.15  # a run starts once other work uses under 15 % of the CPUs ...
MAX_WAIT_S = 120.0  # ... or after this long (--max-wait), marked as started on a busy machine


def cpu_busy(seconds: float = 0.5) -> float:
    """The share of all CPUs busy over `seconds` (Linux /proc/stat); 0 where unknown."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------
def points(section: str, quick: bool) -> list[Point]:
    if section == "width":
        widths = (32, 16384) if quick else (32, 512, 4096, 16384, 65536)
        return [Point(section, r, width=w, epochs=3) for w in widths for r in RUNNERS]
    if section == "samples":
        sizes = (1000, 10000) if quick else (1000, 10000, 100000)
        return [Point(section, r, samples=n, epochs=2) for n in sizes for r in RUNNERS]
    if section == "ddp":
        widths = (32, 16384) if quick else (32, 1024, 8192, 65536)
        shapes = ((1, 1), (2, 1)) if quick else ((1, 1), (1, 2), (2, 1))
        plain = [
            Point(section, "torch", width=w, epochs=3, processes=p, threads=t)
            for w in widths
            for p, t in shapes
        ]
        every = [] if quick else [Point(section, r, epochs=3, processes=2) for r in FRAMEWORKS]
        return plain + every
    if section == "profile":
        return [Point(section, r, samples=PROFILE_SAMPLES[quick], epochs=2) for r in RUNNERS]
    raise ValueError(section)


PROFILE_SAMPLES = {False: 64000, True: 16000}


def profile_window(point: Point) -> str:
    """Optimizer steps to sample between: inside the last epoch, clear of its ends."""
    per_epoch = steps_per_epoch(point)
    margin = per_epoch // 16
    return f"{per_epoch * (point.epochs - 1) + margin}:{per_epoch * point.epochs - margin}"


def plan(sections: Sequence[str], repeats: dict[str, int], quick: bool, out: Path) -> list:
    """Each repeat runs every configuration once; runners (headline: pairs) rotate their order
    from one repeat to the next."""
    runs = []
    for repeat in range(max(repeats[s] for s in sections)):
        for section in sections:
            if repeat >= repeats[section]:
                continue
            if section == "headline":
                runs += headline_runs(repeat, out)
                continue
            by_config: dict[Point, list[Point]] = defaultdict(list)
            for p in points(section, quick):
                by_config[p.config(runner="")].append(p)
            for group in by_config.values():
                shift = repeat % len(group)
                runs += [make_run(p, repeat, out) for p in group[shift:] + group[:shift]]
    return runs


def headline_runs(repeat: int, out: Path) -> list[BenchRun]:
    """A repeat's pairs, in an order rotated from one repeat to the next."""
    shift = repeat % len(HEADLINE_PAIRS)
    return [
        run
        for subject, reference in HEADLINE_PAIRS[shift:] + HEADLINE_PAIRS[:shift]
        for run in pair_runs(Point("headline", subject, **HEADLINE), reference, repeat, out)
    ]


def pair_runs(subject: Point, reference: str, repeat: int, out: Path) -> list[BenchRun]:
    """The two runs of a pair, reference first, each pausing at the first step of its second
    epoch (the barrier of execute_pair)."""
    runs = []
    for point in (subject.config(runner=reference), subject):
        run = make_run(point, repeat, out, pair=pair_name(subject.runner, reference))
        run.env["COMPARE_PAUSE_AT"] = str(steps_per_epoch(point) + 1)
        runs.append(run)
    return runs


def pair_name(subject: str, reference: str) -> str:
    return f"{subject}-vs-{reference}"


def steps_per_epoch(point: Point) -> int:
    return (point.samples - round(task.VAL_FRACTION * point.samples)) // task.GLOBAL_BATCH_SIZE


def make_run(point: Point, repeat: int, out: Path, pair: str = "") -> BenchRun:
    where = f"{point.key}/r{repeat}/{pair + '/' if pair else ''}{point.runner}"
    env = {"COMPARE_PROFILE": profile_window(point)} if point.section == "profile" else {}
    return BenchRun(
        runner=point.runner,
        mode=compare.Mode(point.processes),
        settings=compare.TaskSettings(
            epochs=point.epochs, num_samples=point.samples, hidden_dim=point.width
        ),
        run_dir=out / "runs" / where,
        log_dir=out / "logs" / where,
        threads=point.threads,
        env=env,
        point=point,
        repeat=repeat,
        pair=pair,
    )


def execute_pair(runs: Sequence[BenchRun], timeout: float) -> None:
    """Start both runs on one CPU; once each has stopped itself at its second epoch (or ended),
    let each run SLICE_S in turn, the other stopped, until both end."""
    cpu, own = min(os.sched_getaffinity(0)), os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # the runs inherit it, their threads too
    try:
        active = {compare.launch(run).pid: run for run in runs}
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
                compare.ended(run, status, usage)
                warming.discard(pid)
                del active[pid]
            elif time.perf_counter() - run.started > timeout:
                compare.reap(pid, run, timeout)  # ends it
                warming.discard(pid)
                del active[pid]
    turn = 0
    while active:
        pid = list(active)[turn % len(active)]
        # The time before the signal: a woken run may preempt us on its CPU and step at once.
        start = time.perf_counter()
        os.killpg(pid, signal.SIGCONT)
        time.sleep(SLICE_S)
        os.killpg(pid, signal.SIGSTOP)  # a process that has just ended is a zombie: no error
        active[pid].windows.append((start, time.perf_counter()))
        if compare.reap(pid, active[pid], timeout):
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


Slices = Sequence[Sequence[float]]  # (start, median step interval) per slice, by start


def paired_ratio(run: Slices, reference: Slices) -> float | None:
    """The median, over the run's slices, of its median step against the mean of the
    reference's slices just before and just after it (a drift linear over 0.1 s cancels)."""
    starts = [start for start, _ in reference]
    ratios = []
    for start, median in run:
        i = bisect.bisect(starts, start)
        if 0 < i < len(reference) and starts[i] - starts[i - 1] < 3 * SLICE_S:
            ratios.append(median / ((reference[i - 1][1] + reference[i][1]) / 2))
    return statistics.median(ratios) if len(ratios) >= MIN_CYCLES else None


class Progress(compare.PlainProgress):
    """One overall bar on a terminal (a bar per run would be hundreds); plain lines otherwise."""

    def __init__(self, runs: Sequence[compare.Run], max_wait: float = MAX_WAIT_S) -> None:
        super().__init__(runs)
        self.bar, self.max_wait = None, max_wait
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
            from rich.progress import TextColumn as Text

            self.bar = Progress(
                Text("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("benchmark", total=len(runs))

    def __enter__(self) -> Progress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def ready(self, run: compare.Run) -> None:
        """Wait for a quiet machine: others' work would be timed as the runner's."""
        deadline = time.monotonic() + self.max_wait
        while (busy := cpu_busy()) > QUIET and time.monotonic() < deadline:
            time.sleep(1)
        run.busy_before = busy

    def start(self, run: compare.Run) -> None:
        if self.bar:
            self.bar.update(self.task, description=f"{run.point.key} {run.runner}")
        else:
            super().start(run)

    def finish(self, run: compare.Run) -> None:
        if self.bar:
            self.bar.advance(self.task)
            if run.exit_code != 0:
                self.bar.console.print(f"[red]{run.name} failed (exit {run.exit_code})")
        else:
            super().finish(run)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
def record(run: BenchRun) -> dict[str, Any]:
    """One run's figures, flat: what the tables and plots are made of."""
    rec = dataclasses.asdict(run.point) | {"repeat": run.repeat, "ok": run.ok, "pair": run.pair}
    rec |= {"exit_code": run.exit_code, "total_s": run.wall_s, "log_dir": str(run.log_dir)}
    rec["busy_before"] = run.busy_before
    if run.max_rss_kib:
        rec["peak_rss_mib"] = run.max_rss_kib / 1024
    if run.metrics:
        rec["train_s"] = run.metrics["wall_clock_s"]
    if run.windows is not None:  # time-sliced: its own slices only; start-up is not comparable
        if slices := slice_medians(run):
            q = compare.quartiles([median for _, median in slices])
            rec |= {"step_us": q["median"] * 1e6, "step_p25_us": q["p25"] * 1e6}
            rec |= {"step_p75_us": q["p75"] * 1e6, "slices": slices}
    elif run.steps:
        rec["startup_s"] = run.steps["startup_s"]
        rec["threads_seen"] = run.steps["threads"]
        if (q := run.steps["steady_step_s"]) is not None:
            rec |= {"step_us": q["median"] * 1e6, "step_p25_us": q["p25"] * 1e6}
            rec |= {"step_p75_us": q["p75"] * 1e6, "steps_timed": q["n"]}
    if run.point.section == "profile" and (prof := read_profile(run)):
        rec["profile"] = prof
    return rec


def read_profile(run: BenchRun) -> dict[str, Any] | None:
    """Rank 0's sampled stacks, turned into µs per step by area and by framework function."""
    logs = [json.loads(p.read_text()) for p in (run.log_dir / "steps").glob("*.json")]
    logs = [r for r in logs if r.get("profile")]
    if not logs:
        return None
    log, prof = logs[0], logs[0]["profile"]
    times = log["step_times"]
    first, last = prof["first_step"], prof["last_step"]
    step_us = (times[last - 1] - times[first - 1]) / (last - first) * 1e6  # mean, window only
    stacks = [(frames, n) for frames, n in prof["stacks"]]
    total = sum(n for _, n in stacks)
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks:
        areas[area := area_of(frames)] += n
        if area in FRAMEWORK_AREAS:  # the framework's own Python: its innermost function
            own[short(next(f for f in reversed(frames) if framework_frame(f)))] += n
    return {
        "samples": total,
        "step_us": step_us,
        "areas_us": {a: n / total * step_us for a, n in areas.most_common()},
        "framework_functions_us": {f: n / total * step_us for f, n in own.most_common(10)},
    }


STDLIB = sysconfig.get_paths()["stdlib"]
AREAS = (  # (path fragment, area); the first fragment found in a frame's file wins
    ("/torchmetrics/", "torchmetrics"),
    ("/lightning/pytorch/", "lightning.pytorch"),
    ("/lightning/fabric/", "lightning.fabric"),
    ("/lightning_utilities/", "lightning.pytorch"),
    ("/accelerate/", "accelerate"),
    ("/torch/utils/data/", "torch DataLoader"),
    ("/torch/optim/", "torch optimizer step"),
    ("/torch/autograd/", "torch backward"),
    ("/torch/nn/", "torch forward (nn)"),
    ("/torch/", "torch, other"),
    ("/steptimer/", "step timer"),
)
AREA_ORDER = (
    "torch forward (nn)", "torch backward", "torch optimizer step", "torch DataLoader",
    "torch, other", "runner code", "torchmetrics", "lightning.fabric", "lightning.pytorch",
    "accelerate", "step timer", "other",
)  # fmt: skip


# nn.Module attribute bookkeeping: counted for whoever sets or reads the attribute.
BOOKKEEPING = tuple(
    f"/torch/nn/{name}"
    for name in (
        "modules/module.py:__setattr__",
        "modules/module.py:__getattr__",
        "modules/module.py:__delattr__",
        "parameter.py:__instancecheck__",
    )
)


def area_of(frames: Sequence[str]) -> str:
    """Where a sample's time goes: the innermost frame outside the standard library.

    Time in torch's C++ counts for the Python frame that called it, so `loss.backward()`
    lands in torch backward, `model(x)` in torch forward; a framework setting attributes on
    its nn.Module lands in the framework.
    """
    for frame in reversed(frames):
        path, _, func = frame.rpartition(":")
        if path.startswith("<") or (path.startswith(STDLIB) and "site-packages" not in path):
            continue
        if frame.endswith(BOOKKEEPING):
            continue
        if path.endswith("torch/_tensor.py") and func == "backward":
            return "torch backward"
        for fragment, name in AREAS:
            if fragment in path:
                return name
        return "runner code" if path.startswith(str(compare.ROOT)) else "other"
    return "other"


FRAMEWORK_AREAS = ("torchmetrics", "lightning.pytorch", "lightning.fabric", "accelerate")


def framework_frame(frame: str) -> bool:
    return any(p in frame for p in ("/lightning/", "/accelerate/", "/torchmetrics/"))


def short(frame: str) -> str:
    path, _, func = frame.rpartition(":")
    return f"{path.split('site-packages/')[-1]}:{func}"


def busy_starts(res: Results) -> str:
    """How many of the runs that waited for a quiet machine (all but the headline's) did not
    get one."""
    waited = [r for r in res.records if r["section"] != "headline"]
    return f"{sum((r['busy_before'] or 0) > QUIET for r in waited)} of {len(waited)}"


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
        """A headline pair's ratio (paired_ratio), one per repeat, and their spread."""
        name, slices = pair_name(runner, reference), defaultdict(dict)
        for rec in self.records:
            if rec.get("pair") == name and rec["ok"] and rec.get("slices"):
                slices[rec["repeat"]][rec["runner"]] = rec["slices"]
        values = [
            paired_ratio(by_runner[runner], by_runner[reference])
            for by_runner in slices.values()
            if len(by_runner) == 2
        ]
        ratios = [v for v in values if v is not None]
        # A repeat whose runs shared too few slices is left out, and the report says so.
        return spread(ratios) | {"left_out": len(values) - len(ratios)} if ratios else None

    def ratio(self, point: Point, reference: Point, field: str = "step_us") -> dict | None:
        ref = {r["repeat"]: r[field] for r in self.by_point.get(reference, []) if field in r}
        values = [
            r[field] / ref[r["repeat"]]
            for r in self.by_point.get(point, [])
            if field in r and r["repeat"] in ref
        ]
        return spread(values) if values else None


def point_of(rec: dict[str, Any]) -> Point:
    return Point(**{f.name: rec[f.name] for f in dataclasses.fields(Point)})


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def fmt(stat: dict[str, float] | None, digits: int = 0, bounds: bool = True) -> str:
    if stat is None:
        return "–"
    text = f"{stat['median']:.{digits}f}"
    if bounds and stat["min"] != stat["max"]:
        text += f" ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"
    return text


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    return compare.markdown_table([dict(zip(header, r, strict=True)) for r in rows], header)


def ci(stat: dict[str, float] | None, digits: int = 2) -> str:
    """A ratio and its order-statistic interval (its coverage is stated beside the table)."""
    if stat is None:
        return "–"
    return f"{stat['median']:.{digits}f} [{stat['low']:.{digits}f}–{stat['high']:.{digits}f}]"


def headline_section(res: Results, quick: bool) -> tuple[str, list[str]]:
    """Each runner's cost split in two: its framework's minimal loop against minimal plain
    PyTorch (what the framework adds), and the full runner against that minimal loop (what this
    project adds: metrics, checkpoints, resume, fault points, run records)."""
    base = Point("headline", "torch", **HEADLINE)
    plain_min = base.config(runner=MINIMAL_OF["torch"])
    rows, verdicts, wide = [], [], []
    for runner, minimal in MINIMAL_OF.items():
        full, mini = base.config(runner=runner), base.config(runner=minimal)
        framework, project = res.paired(minimal, plain_min.runner), res.paired(runner, minimal)
        rows.append(
            [
                NAMES[runner],
                fmt(res.stat(mini, "step_us"), bounds=False),
                fmt(res.stat(full, "step_us"), bounds=False),
                "1 (the baseline)" if runner == "torch" else ci(framework),
                ci(project),
                fmt(res.stat(full, "peak_rss_mib"), 0, bounds=False),
            ]
        )
        verdicts.append(target_line(f"{NAMES[runner]}: full runner ÷ its minimal loop", project,
                                    PROJECT_TARGET))  # fmt: skip
        checked = [project] + ([framework] if runner != "torch" else [])
        wide += [r for r in checked if too_wide(r, quick)]
    raw = res.paired(plain_min.runner, "raw")
    verdicts.insert(0, target_line("minimal plain PyTorch ÷ raw-tensor loop", raw,
                                   PLAIN_VS_RAW_TARGET))  # fmt: skip
    left_out = {pair_name(*p): r["left_out"] for p in HEADLINE_PAIRS if (r := res.paired(*p))}
    if short := [f"{n} of {name}" for name, n in left_out.items() if n]:
        verdicts.append(f"repeats left out, under {MIN_CYCLES} slices paired: " + ", ".join(short))
    wide += [raw] if too_wide(raw, quick) else []
    limit = INTERVAL_LIMIT[quick]
    verdicts.append(
        f"{len(wide)} of the {2 * len(MINIMAL_OF)} headline ratios have an interval wider than "
        f"±{limit:.0%} of the ratio" + ("; rerun with more --repeats" if wide else "")
    )
    header = ("runner", "minimal µs/step", "full µs/step", "framework: minimal ÷ minimal plain",
              "project: full ÷ minimal", "full peak RSS MiB")  # fmt: skip
    raw_us = fmt(res.stat(base.config(runner="raw"), "step_us"), bounds=False)
    rows.append(["raw-tensor loop", raw_us, "–", "–", "–", "–"])
    ratios = [r for p in HEADLINE_PAIRS if (r := res.paired(*p))]
    return table(header, rows) + "\n\n" + method_line(ratios), verdicts


def method_line(stats: Sequence[dict[str, float]]) -> str:
    """The sentence beside a table: the interval's method, n and coverage (the smallest n)."""
    if not stats:
        return ""
    text = intervals.method(min(stats, key=lambda st: st["n"]))
    return f"Each ratio: the median over repeats; {text}."


def too_wide(ratio: dict[str, float] | None, quick: bool) -> bool:
    limit = INTERVAL_LIMIT[quick]
    return ratio is None or not (
        ratio["low"] >= ratio["median"] * (1 - limit)
        and ratio["high"] <= ratio["median"] * (1 + limit)
    )


def target_line(what: str, ratio: dict[str, float] | None, limit: float) -> str:
    """Met when the whole interval is at or under the target; missed when it is all above; and
    neither when the interval covers less than a verdict needs (too few repeats)."""
    if ratio is None:
        return f"{what}: not measured"
    if not intervals.decides(ratio):
        verdict = (
            f"undecided: {ratio['n']} repeats give a {ratio['coverage']:.1%} interval, a verdict "
            f"needs {intervals.LEVEL:.0%} ({intervals.repeats_needed()} repeats or more)"
        )
    elif ratio["high"] <= limit:
        verdict = "met"
    elif ratio["low"] > limit:
        verdict = "MISSED"
    else:
        verdict = "undecided: the interval spans the target"
    return f"{what}: {ci(ratio)} (target ≤ {limit}): {verdict}"


def width_section(res: Results) -> tuple[str, list[str]]:
    widths = sorted({p.width for p in res.by_point if p.section == "width"})
    header = ["width", "parameters"] + [f"{r} µs" for r in RUNNERS]
    header += [f"{r} ×" for r in RUNNERS if r != "torch"]
    rows, verdicts, stats = [], [], []
    for w in widths:
        base = Point("width", "torch", width=w, epochs=3)
        row = [str(w), f"{(task.NUM_FEATURES + 1) * w + (w + 1) * task.NUM_CLASSES:,}"]
        row += [fmt(res.stat(base.config(runner=r), "step_us"), bounds=False) for r in RUNNERS]
        ratios = {r: res.ratio(base.config(runner=r), base) for r in RUNNERS if r != "torch"}
        row += [fmt(x, 2, bounds=False) for x in ratios.values()]
        rows.append(row)
        stats += [x for x in ratios.values() if x]
    if widths:
        w = widths[-1]
        base = Point("width", "torch", width=w, epochs=3)
        for r in FRAMEWORKS:
            if ratio := res.ratio(base.config(runner=r), base):
                verdicts.append(target_line(f"width {w}: {r} vs plain PyTorch", ratio, WIDE_TARGET))
    verdicts.append(method_line(stats).replace("Each ratio", "Each verdict's ratio"))
    return table(header, rows), verdicts


def samples_section(res: Results) -> str:
    sizes = sorted({p.samples for p in res.by_point if p.section == "samples"})
    header = ["samples"] + [f"{r} s" for r in RUNNERS] + [f"{r} ×" for r in FRAMEWORKS]
    rows = []
    for n in sizes:
        base = Point("samples", "torch", samples=n, epochs=2)
        row = [f"{n:,}"]
        row += [fmt(res.stat(base.config(runner=r), "total_s"), 1, False) for r in RUNNERS]
        row += [
            fmt(res.ratio(base.config(runner=r), base, "total_s"), 2, False) for r in FRAMEWORKS
        ]
        rows.append(row)
    return table(header, rows)


def ddp_section(res: Results) -> tuple[str, str]:
    widths = sorted({p.width for p in res.by_point if p.section == "ddp" and p.runner == "torch"})
    header = [
        "width",
        "1 process µs",
        "1 process × 2 threads µs",
        "2 processes µs",
        "2 processes: speed-up",
        "2 threads: speed-up",
    ]
    rows = []
    for w in widths:
        one = Point("ddp", "torch", width=w, epochs=3)
        threads, two = one.config(threads=2), one.config(processes=2)
        speed_two, speed_threads = res.ratio(one, two), res.ratio(one, threads)
        times = [fmt(res.stat(p, "step_us"), bounds=False) for p in (one, threads, two)]
        rows.append([str(w), *times, fmt(speed_two, 2, False), fmt(speed_threads, 2, False)])
    header2 = ("runner", "2 processes µs/step", "× plain PyTorch", "start-up s", "total s")
    rows2 = []
    base = Point("ddp", "torch", epochs=3, processes=2)
    for runner in ("torch", *FRAMEWORKS):
        p = base.config(runner=runner)
        if p in res.by_point:
            rows2.append(
                [
                    runner,
                    fmt(res.stat(p, "step_us"), bounds=False),
                    fmt(res.ratio(p, base), 2, False),
                    fmt(res.stat(p, "startup_s"), 1, False),
                    fmt(res.stat(p, "total_s"), 1, False),
                ]
            )
    return table(header, rows), table(header2, rows2) if len(rows2) > 1 else ""


def profile_section(res: Results) -> str:
    profiles = {
        r["runner"]: r["profile"]
        for r in res.records
        if r["section"] == "profile" and "profile" in r
    }
    if not profiles:
        return ""
    runners = [r for r in RUNNERS if r in profiles]
    header = ["µs per step", *runners]
    rows = []
    for a in AREA_ORDER:
        if any(profiles[r]["areas_us"].get(a, 0) >= 0.5 for r in runners):
            rows.append([a] + [f"{profiles[r]['areas_us'].get(a, 0):.0f}" for r in runners])
    rows.append(["**total (mean step)**"] + [f"{profiles[r]['step_us']:.0f}" for r in runners])
    text = table(header, rows)
    for r in (x for x in runners if x in FRAMEWORKS):
        top = profiles[r]["framework_functions_us"]
        text += f"\n\n{r}: where its framework time goes (innermost framework function)\n\n"
        text += table(("function", "µs"), [[f"`{f}`", f"{us:.0f}"] for f, us in top.items()])
    return text


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
COLORS = {
    "raw": "#7f7f7f",
    "torch": "#1f77b4",
    "fabric": "#9467bd",
    "accelerate": "#ff7f0e",
    "lightning": "#2ca02c",
}


def plot_headline(res: Results, path: Path) -> None:
    """The headline's paired ratios with their intervals: what each framework adds (its minimal
    loop against minimal plain PyTorch, and plain against raw tensors), what this project adds
    (each full runner against its framework's minimal loop), each against its target."""
    import matplotlib.pyplot as plt

    plain = MINIMAL_OF["torch"]
    panels = [
        ("What the framework adds: minimal loop ÷ minimal plain PyTorch",
         [("plain PyTorch ÷ raw tensors", res.paired(plain, "raw"), "torch", PLAIN_VS_RAW_TARGET)]
         + [(NAMES[f], res.paired(MINIMAL_OF[f], plain), f, None) for f in FRAMEWORKS]),
        ("What this project adds: full runner ÷ its minimal loop",
         [(NAMES[r], res.paired(r, m), r, PROJECT_TARGET) for r, m in MINIMAL_OF.items()]),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, (title, bars) in zip(axes, panels, strict=True):
        bars = [(label, st, c, t) for label, st, c, t in bars if st]
        for i, (_, st, color, target) in enumerate(bars):
            err = [[st["median"] - st["low"]], [st["high"] - st["median"]]]
            ax.barh(i, st["median"], xerr=err, color=COLORS[color], capsize=3)
            ax.text(max(st["high"], target or 0) + 0.03, i, f"{st['median']:.2f}", va="center",
                    fontsize=8)  # fmt: skip
            if target:
                ax.plot([target] * 2, [i - 0.45, i + 0.45], "k:", lw=1.2)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yticks(range(len(bars)), [label for label, *_ in bars], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max([2.2] + [st["high"] * 1.15 for _, st, *_ in bars]))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ratio of time per step", fontsize=8)
    n = next((st for _, st, *_ in panels[1][1] if st), {"n": 0, "coverage": 0.0})
    fig.suptitle(f"Paired ratios: bar, the median over {n['n']} repeats; whiskers, its "
                 f"order-statistic interval ({n['coverage']:.1%} coverage); dotted, the target",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_width(res: Results, path: Path) -> None:
    import matplotlib.pyplot as plt

    widths = sorted({p.width for p in res.by_point if p.section == "width"})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for r in RUNNERS:
        pts = [(w, Point("width", r, width=w, epochs=3)) for w in widths]
        base = {w: Point("width", "torch", width=w, epochs=3) for w in widths}
        step = [(w, s["median"]) for w, p in pts if (s := res.stat(p, "step_us"))]
        ratio = [(w, x["median"]) for w, p in pts if (x := res.ratio(p, base[w]))]
        if step:
            left.plot(*zip(*step, strict=True), "o-", color=COLORS[r], label=r)
        if ratio and r != "torch":
            right.plot(*zip(*ratio, strict=True), "o-", color=COLORS[r], label=r)
    left.set(
        xscale="log",
        yscale="log",
        xlabel="hidden width",
        ylabel="µs per step",
        title="Time per step",
    )
    right.axhline(1.0, color=COLORS["torch"], lw=1)
    right.axhline(WIDE_TARGET, color="k", ls=":", lw=1, label=f"×{WIDE_TARGET}")
    right.set(
        xscale="log",
        xlabel="hidden width",
        ylabel="× plain PyTorch",
        title="Cost against plain PyTorch",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_samples(res: Results, path: Path) -> None:
    import matplotlib.pyplot as plt

    sizes = sorted({p.samples for p in res.by_point if p.section == "samples"})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in RUNNERS:
        stats = [(n, res.stat(Point("samples", r, samples=n, epochs=2), "total_s")) for n in sizes]
        pts = [(n, s["median"]) for n, s in stats if s]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=COLORS[r], label=r)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="samples (2 epochs)",
        ylabel="whole command, s",
        title="Start-up included: total time",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_ddp(res: Results, path: Path) -> None:
    import matplotlib.pyplot as plt

    widths = sorted({p.width for p in res.by_point if p.section == "ddp" and p.runner == "torch"})
    shapes = {(1, 1): "1 process", (1, 2): "1 process × 2 threads", (2, 1): "2 processes (DDP)"}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (procs, threads), label in shapes.items():
        config = Point("ddp", "torch", epochs=3, processes=procs, threads=threads)
        stats = [(w, res.stat(config.config(width=w), "step_us")) for w in widths]
        pts = [(w, s["median"]) for w, s in stats if s]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="hidden width",
        ylabel="µs per optimizer step",
        title="Plain PyTorch on 2 cores: where DDP pays",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_profile(res: Results, path: Path) -> None:
    import matplotlib.pyplot as plt

    profiles = {r["runner"]: r["profile"] for r in res.records if "profile" in r}
    runners = [r for r in RUNNERS if r in profiles]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(runners) + 1.6))
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(runners):
        left = 0.0
        for j, a in enumerate(AREA_ORDER):
            us = profiles[r]["areas_us"].get(a, 0)
            ax.barh(i, us, left=left, color=cmap(j), label=a if i == 0 else None)
            left += us
    ax.set_yticks(range(len(runners)), runners)
    ax.invert_yaxis()
    ax.set(
        xlabel="µs per optimizer step (sampled profile, steady state)",
        title="Where a step's time goes",
    )
    ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> Any:
    parser = errors.ArgumentParser(description="Measure the cost each framework adds per step.")
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--repeats",
        type=settings.positive_int,
        help="headline repeats (default 6; quick 3: too few for a verdict)",
    )
    parser.add_argument("--sweep-repeats", type=settings.positive_int, help="other sections (2)")
    parser.add_argument("--timeout", type=settings.positive_float, default=600, help="s per run")
    parser.add_argument(
        "--max-wait", type=float, default=MAX_WAIT_S, help="s to wait for a quiet machine per run"
    )
    parser.add_argument("--out", type=Path, help="default: reports/benchmark-<timestamp>")
    args = parser.parse_args(argv)
    if args.out is not None and (args.out / "results.json").exists():
        parser.error(f"{args.out} already holds results; choose another --out")
    if (
        args.out
        and (args.out / "runs").exists()
        and not (args.out / interrupts.INTERRUPTED).exists()
    ):
        parser.error(f"{args.out} holds the runs of another benchmark; choose another --out")
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = compare.ROOT / "reports" / f"benchmark-{stamp}"
    return args


RESULT_FILES = ("results.json", "results.md", *(f"{s}.png" for s in SECTIONS))


def main(argv: Sequence[str] | None = None) -> int:
    interrupts.require_linux("benchmarks/overhead.py")
    args = parse_args(argv)
    headline = args.repeats or (3 if args.quick else 6)
    sweep = args.sweep_repeats or (1 if args.quick else 2)
    repeats = {"headline": headline, "width": sweep, "samples": sweep, "ddp": sweep, "profile": 1}
    out = args.out.resolve()
    interrupts.clear_interrupted(out, "benchmarks/overhead.py")
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(args.sections, repeats, args.quick, out)
    return interrupts.guarded(
        "benchmarks/overhead.py", out, ("results", RESULT_FILES), runs,
        lambda: benchmark(args, argv, repeats, runs, out),
    )  # fmt: skip


def benchmark(
    args: Any, argv: Sequence[str] | None, repeats: dict[str, int], runs: list[BenchRun], out: Path
) -> int:
    """Every run, then the report; the exit status."""
    started, machine = time.perf_counter(), compare.machine()
    paired = [r for r in runs if r.pair]
    for first in range(0, len(paired), 2):
        pair = paired[first : first + 2]
        print(f"headline repeat {pair[0].repeat + 1}: {pair[0].pair}", file=sys.stderr)
        execute_pair(pair, args.timeout)
    rest = [r for r in runs if r.point.section != "headline"]
    compare.execute(rest, timeout=args.timeout, display=Progress(rest, args.max_wait))
    for run in runs:
        compare.collect(run)
    res = Results([record(r) for r in runs])
    machine["load_average_after"] = compare.machine()["load_average"]
    text = report(res, args, machine, time.perf_counter() - started, out)
    (out / "results.json").write_text(
        json.dumps(
            {
                "command": compare.shown(
                    ["python", "benchmarks/overhead.py", *(argv or sys.argv[1:])]
                ),
                "machine": machine,
                "repeats": repeats,
                "records": res.records,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "results.md").write_text(text)
    print(text)
    print(f"Results: {out}/results.md")
    failed = [r for r in runs if not r.ok]
    for run in failed:
        print(f"FAILED: {run.name} at {run.point.key}: see {run.log_dir}", file=sys.stderr)
    return 1 if failed else 0


HEADLINE_TEXT = (
    f"Width 32, global batch 32, {HEADLINE['samples']} samples, {HEADLINE['epochs']} epochs, one "
    "process, one thread. Each ratio comes from a pair of runs on one CPU: both train their first "
    f"epoch, then take turns, {SLICE_S} s each, through the rest. A slice's time per step (the "
    "median interval between its steps) is divided by the mean of the other run's slices just "
    "before and after it; a repeat's ratio is the median over its slices, and the table gives "
    "the median over repeats. µs/step, for scale only: "
    "the median slice, then the median over repeats of each run's own slices, unpaired, so it "
    "swings with the machine (a full runner can read faster than its minimal loop); the ratios "
    "are what compare. "
    "Minimal: the framework's loop in minimal/, nothing but the task. Full: the runner with its "
    "metrics, checkpoints (every epoch), resume and fault points, as a user runs it."
)


def report(res: Results, args: Any, machine: dict, elapsed: float, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    text = [
        "# Framework overhead benchmark",
        "",
        f"{machine['cpu']} × {machine['cpu_count']}, {machine['platform']}, Python "
        f"{machine['python']}, {versions}; commit {machine['commit']}; 1 thread per process "
        f"unless said; load average before {machine['load_average'][0]:.1f}, after "
        f"{machine['load_average_after'][0]:.1f}; {elapsed / 60:.1f} min.",
        "",
        "Outside the headline (whose method it states itself): µs/step is the median over the "
        "steady-state steps of a run (first epoch excluded), then the median over repeats "
        "(min–max in brackets); ratios are paired, each repeat's run against plain PyTorch's run "
        "of the same repeat; each run waited for the machine to be quiet (other work under "
        f"{QUIET:.0%} of the CPUs) for up to {args.max_wait:.0f} s; {busy_starts(res)} "
        "runs started on a busier machine.",
    ]
    sections = set(args.sections)
    if "headline" in sections:
        body, verdicts = headline_section(res, args.quick)
        plot_headline(res, out / "headline.png")
        text += ["", "## What each framework costs, and what this project adds", "", HEADLINE_TEXT]
        text += ["", body, "", *[f"- {v}" for v in verdicts]]
        text += ["", "![the paired ratios and their intervals](headline.png)"]
    if "width" in sections:
        body, verdicts = width_section(res)
        plot_width(res, out / "width.png")
        text += ["", "## Model width (1000 samples, 3 epochs)", "", body, ""]
        text += [*[f"- {v}" for v in verdicts], "", "![width sweep](width.png)"]
    if "samples" in sections:
        plot_samples(res, out / "samples.png")
        text += ["", "## Data set size (width 32, 2 epochs): whole command, start-up included"]
        text += ["", samples_section(res), "", "![samples sweep](samples.png)"]
    if "ddp" in sections:
        plain, every = ddp_section(res)
        plot_ddp(res, out / "ddp.png")
        text += ["", "## 1 process against 2 (plain PyTorch, 1000 samples, 3 epochs)", "", plain]
        text += ["", "![ddp](ddp.png)"]
        if every:
            text += ["", "Every runner with 2 processes, default width:", "", every]
    if "profile" in sections and (body := profile_section(res)):
        plot_profile(res, out / "profile.png")
        text += ["", "## Where a step's time goes (sampled profile, steady state)", "", body]
        text += ["", "![profile](profile.png)"]
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    sys.exit(main())
