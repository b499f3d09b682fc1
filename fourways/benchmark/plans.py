"""What the benchmark runs: each section's configurations, the headline's pairs, the runs in order.

A Point is one configuration of the task run by one runner; a BenchRun is compare.py's Run of a
Point in one repeat. Each repeat runs every configuration once, its runners (the headline: its
pairs) in an order rotated from one repeat to the next, so that a slow minute on the machine hits
all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fourways import settings
from fourways.compare import plans as compare_plans
from fourways.contract import arguments

RUNNERS = ("raw", "torch", "fabric", "accelerate", "lightning")
FRAMEWORKS = ("fabric", "accelerate", "lightning")
SECTIONS = ("headline", "width", "samples", "ddp", "profile")
# Each runner's framework, as its minimal loop (minimal/): the baseline that splits a full
# runner's cost into what its framework adds and what this project adds.
MINIMAL_OF = {"torch": "min-torch", "fabric": "min-fabric", "accelerate": "min-accelerate",
              "lightning": "min-lightning"}  # fmt: skip
# Each headline ratio, (run, reference): the two runs of a pair are timed together (slicing.py).
HEADLINE_PAIRS = (
    ("min-torch", "raw"),
    *((MINIMAL_OF[f], MINIMAL_OF["torch"]) for f in FRAMEWORKS),
    *MINIMAL_OF.items(),
)
# The headline task: the default model (width 32) and batch, with 40000 samples and 4 epochs:
# 1000 steps of warm-up (the first epoch), then 3000 timed steps, not the default task's 125,
# spread over many time slices (slicing.SLICE_S). The fastest loop (raw, 365 µs/step here) fills
# 20 of its slices; on a CPU twice as fast, 10: still twice slicing.MIN_CYCLES. One timed epoch of
# 1000 steps filled 7 here, and would fill 3-4 on a CPU twice as fast: too few for a ratio.
HEADLINE = {"num_samples": 40000, "epochs": 4}
# A user's model (benchmarks/overhead.py --model): the headline's pairs become each full framework
# runner against the full plain runner (what the framework adds for this model) and the full plain
# runner against the bare loop (what driving a LightningModule with this project's bookkeeping
# adds). The bare loop is benchmarks/bare_loop.py, started as the comparison's machinery starts
# its "raw" reference: benchmarks/raw_loop.py, which hands a user's classes on to it.
BARE = "raw"
YOURS_PAIRS = (*((f, "torch") for f in FRAMEWORKS), ("torch", BARE))
PROFILE_SAMPLES = {False: 64000, True: 16000}  # full run, --quick


@dataclass(frozen=True)
class Point:
    """One configuration of the task, run by one runner: the settings it varies (named as in
    settings.Settings; the others are the task's defaults) and how it is run."""

    section: str
    runner: str
    hidden_dim: int = settings.DEFAULTS.hidden_dim
    num_samples: int = settings.DEFAULTS.num_samples
    epochs: int = settings.DEFAULTS.epochs
    processes: int = 1
    threads: int = 1
    model: str = ""  # a user's classes, as every run is told them (shlex-joined); "": the task
    epoch_steps: int = 0  # optimizer steps per epoch of a user's DataModule; 0: the task's data

    def config(self, **change: Any) -> Point:
        """The same configuration for another runner (or other fields): for pairing ratios."""
        return dataclasses.replace(self, **change)

    @property
    def key(self) -> str:
        key = (
            f"{self.section}/w{self.hidden_dim}-n{self.num_samples}-e{self.epochs}"
            f"-p{self.processes}-t{self.threads}"
        )
        if self.model:  # the class's name, and a digest of its flags: a folder name
            digest = hashlib.sha1(self.model.encode()).hexdigest()[:8]
            key = f"{key}-{shlex.split(self.model)[1].rpartition('.')[2]}-{digest}"
        return key


@dataclass(frozen=True)
class Yours:
    """A user's LightningModule (and DataModule) for the headline: the flags every run gets
    (LightningCLI's: --model PATH --model.NAME=VALUE ...), the size of the run, and the length
    of a time slice (a step of tens of ms needs longer slices than the task's)."""

    flags: tuple[str, ...]
    num_samples: int  # the task's DataModule only; a user's DataModule keeps its own
    epochs: int
    epoch_steps: int = 0  # a user's DataModule: its optimizer steps per epoch
    slice_s: float | None = None  # None: slicing.SLICE_S

    @property
    def own_data(self) -> bool:
        return "--data" in self.flags

    def point(self, runner: str) -> Point:
        return Point("headline", runner, num_samples=self.num_samples, epochs=self.epochs,
                     model=shlex.join(self.flags), epoch_steps=self.epoch_steps)  # fmt: skip


@dataclass
class BenchRun(compare_plans.Run):
    point: Point | None = None
    repeat: int = 0
    busy_before: float | None = None  # share of the CPUs busy with other work at its start
    pair: str = ""  # headline: the pair it is timed in
    slice_s: float | None = None  # headline: its time slices' length; None: slicing.SLICE_S
    windows: list[tuple[float, float]] | None = None  # sliced: when it was allowed to run


def points(section: str, quick: bool) -> list[Point]:
    """A section's configurations (the headline's are its pairs: headline_runs)."""
    if section == "width":
        widths = (32, 16384) if quick else (32, 512, 4096, 16384, 65536)
        return [Point(section, r, hidden_dim=w, epochs=3) for w in widths for r in RUNNERS]
    if section == "samples":
        sizes = (1000, 10000) if quick else (1000, 10000, 100000)
        return [Point(section, r, num_samples=n, epochs=2) for n in sizes for r in RUNNERS]
    if section == "ddp":
        widths = (32, 16384) if quick else (32, 1024, 8192, 65536)
        shapes = ((1, 1), (2, 1)) if quick else ((1, 1), (1, 2), (2, 1))
        plain = [
            Point(section, "torch", hidden_dim=w, epochs=3, processes=p, threads=t)
            for w in widths
            for p, t in shapes
        ]
        every = [] if quick else [Point(section, r, epochs=3, processes=2) for r in FRAMEWORKS]
        return plain + every
    if section == "profile":
        return [Point(section, r, num_samples=PROFILE_SAMPLES[quick], epochs=2) for r in RUNNERS]
    raise ValueError(section)


def plan(
    sections: Sequence[str],
    repeats: dict[str, int],
    quick: bool,
    out: Path,
    root: Path,
    yours: Yours | None = None,
) -> list[BenchRun]:
    """Each repeat runs every configuration once; runners (headline: pairs) rotate their order
    from one repeat to the next. With `yours`, the headline's pairs are YOURS_PAIRS on it."""
    runs = []
    for repeat in range(max(repeats[s] for s in sections)):
        for section in sections:
            if repeat >= repeats[section]:
                continue
            if section == "headline":
                runs += headline_runs(repeat, out, root) if yours is None else (
                    yours_runs(yours, repeat, out, root))  # fmt: skip
                continue
            by_config: dict[Point, list[Point]] = defaultdict(list)
            for p in points(section, quick):
                by_config[p.config(runner="")].append(p)
            for group in by_config.values():
                shift = repeat % len(group)
                runs += [make_run(p, repeat, out, root) for p in group[shift:] + group[:shift]]
    return runs


def headline_runs(repeat: int, out: Path, root: Path) -> list[BenchRun]:
    """A repeat's pairs, in an order rotated from one repeat to the next."""
    shift = repeat % len(HEADLINE_PAIRS)
    return [
        run
        for subject, reference in HEADLINE_PAIRS[shift:] + HEADLINE_PAIRS[:shift]
        for run in pair_runs(Point("headline", subject, **HEADLINE), reference, repeat, out, root)
    ]


def yours_runs(yours: Yours, repeat: int, out: Path, root: Path) -> list[BenchRun]:
    """A repeat's pairs for a user's model, in an order rotated from one repeat to the next."""
    shift = repeat % len(YOURS_PAIRS)
    runs = [
        run
        for subject, reference in YOURS_PAIRS[shift:] + YOURS_PAIRS[:shift]
        for run in pair_runs(yours.point(subject), reference, repeat, out, root)
    ]
    for run in runs:
        run.slice_s = yours.slice_s
    return runs


def pair_runs(subject: Point, reference: str, repeat: int, out: Path, root: Path) -> list[BenchRun]:
    """The two runs of a pair, reference first, each pausing at the first step of its second
    epoch (the barrier of slicing.execute_pair)."""
    runs = []
    for point in (subject.config(runner=reference), subject):
        run = make_run(point, repeat, out, root, pair=pair_name(subject.runner, reference))
        run.env["COMPARE_PAUSE_AT"] = str(steps_per_epoch(point) + 1)
        runs.append(run)
    return runs


def pair_name(subject: str, reference: str) -> str:
    return f"{subject}-vs-{reference}"


def steps_per_epoch(point: Point) -> int:
    if point.epoch_steps:
        return point.epoch_steps
    num_train, _ = arguments.split_sizes(point.num_samples, settings.DEFAULTS.val_fraction)
    return num_train // settings.DEFAULTS.global_batch_size


def profile_window(point: Point) -> str:
    """Optimizer steps to sample between: inside the last epoch, clear of its ends."""
    per_epoch = steps_per_epoch(point)
    margin = per_epoch // 16
    return f"{per_epoch * (point.epochs - 1) + margin}:{per_epoch * point.epochs - margin}"


def make_run(point: Point, repeat: int, out: Path, root: Path, pair: str = "") -> BenchRun:
    """The run of `point` in `repeat`, its runs/ and logs/ folders under `out`, from the checkout
    at `root`; the comparison's machinery builds its command (fourways.compare.commands) and
    starts it."""
    where = f"{point.key}/r{repeat}/{pair + '/' if pair else ''}{point.runner}"
    env = {"COMPARE_PROFILE": profile_window(point)} if point.section == "profile" else {}
    return BenchRun(
        runner=point.runner,
        mode=compare_plans.Mode(point.processes),
        settings=run_settings(point),
        extra_args=tuple(shlex.split(point.model)),
        run_dir=out / "runs" / where,
        log_dir=out / "logs" / where,
        threads=point.threads,
        env=env,
        point=point,
        repeat=repeat,
        pair=pair,
        checkout=root,
    )


def run_settings(point: Point) -> settings.Settings:
    """The task's settings for `point`; with a user's classes, the task options of each role
    they replace left out (None): the runners refuse them beside a user's class."""
    chosen = settings.DEFAULTS.replace(
        epochs=point.epochs, num_samples=point.num_samples, hidden_dim=point.hidden_dim
    )
    if not point.model:
        return chosen
    flags = shlex.split(point.model)
    roles = [role for role in ("model", "data") if f"--{role}" in flags]
    return chosen.replace(
        **{o.key: None for o in settings.OPTIONS if o.trainer.partition(".")[0] in roles}
    )
