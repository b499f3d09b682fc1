"""What a comparison runs: the runners it knows, the modes it crosses them with, and one Run each.

A Run is one runner in one mode on one task: where it writes, which checkout it runs from, and
afterwards what it said and what it cost (filled in by processes, steplogs and checks).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fourways import parity, settings
from fourways.contract import arguments, errors
from fourways.driving.trace import TRACE_ENV

if TYPE_CHECKING:
    from fourways.driving import classes

RUNNERS = ("torch", "fabric", "lightning", "accelerate")
EXTRA_RUNNERS = ("raw",)  # benchmarks/raw_loop.py: no DataLoader, 1 process, fp32 only
# Each framework's minimal loop (minimal/): the benchmark's baseline for that framework. They
# take the task's size only (--epochs, --num-samples, --hidden-dim), and write model.pt alone.
MINIMAL = {
    "min-torch": "minimal/simple_train.py",
    "min-fabric": "minimal/fabric_train.py",
    "min-accelerate": "minimal/accelerate_train.py",
    "min-lightning": "minimal/lightning_train.py",
}
REFERENCE = "torch"  # in each mode, the others' weights are measured against its
CPU_PRECISIONS = ("32-true", "bf16-mixed")


@dataclass(frozen=True)
class Mode:
    """How the runners train the task: processes, precision, accumulation, strategy."""

    processes: int = 1
    precision: str = "32-true"
    accumulate: int = 1
    strategy: str = "ddp"  # how several processes train: ddp, or fsdp2 (sharded)

    @property
    def label(self) -> str:
        text = f"{self.processes} process" + ("es" if self.processes > 1 else "")
        text += f", {self.strategy}" if self.strategy != "ddp" else ""
        if self.precision != "32-true":
            text += f", {self.precision}"
        return text + (f", accumulate {self.accumulate}" if self.accumulate > 1 else "")


@dataclass
class Run:
    """One runner in one mode: its command, and afterwards what it said and what it cost."""

    runner: str
    mode: Mode
    settings: settings.Settings  # the task's, and this mode's accumulation
    run_dir: Path  # what the runner writes (metrics.json, model.pt)
    log_dir: Path  # stdout.log, stderr.log, steps/ (the step timer's records)
    extra_args: tuple[str, ...] = ()
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)  # on top of what compare.py sets
    argv: list[str] = field(default_factory=list)
    exit_code: int | None = None
    wall_s: float | None = None  # the whole command, start-up included
    max_rss_kib: int | None = None
    started: float | None = None  # perf_counter at launch (CLOCK_MONOTONIC: same as the child's)
    pid: int | None = None  # its process (group) while it runs; None before and once reaped
    launching: bool = False  # being started: an interrupt now still counts (and ends) it
    metrics: dict[str, Any] | None = None
    steps: dict[str, Any] | None = None
    max_weight_diff: float | None = None  # against plain PyTorch in the same mode: reported
    reference_diff: float | None = None  # against the replay of its own arithmetic: must be 0
    fp32_diff: float | None = None  # bf16-mixed only: against the fp32 replay, must not be 0
    float64_gap: float | None = None  # another grouping than plain PyTorch: the same in float64
    problems: list[str] | None = None  # None: not checked; []: agrees
    # The checkout it runs from: the runners' scripts, minimal/, configs/ and the step timer are
    # there (never beside this package, which may be installed in site-packages).
    checkout: Path = field(kw_only=True)
    # The classes it trains (None: the task's); a user's make it record its weights every step.
    model: classes.Choice | None = field(default=None, kw_only=True)
    data: classes.Choice | None = field(default=None, kw_only=True)
    where: str | None = None  # a user's model: where it parts from plain PyTorch (diagnosis)

    @property
    def yours(self) -> bool:
        """It trains a user's model or data (--model/--data), not the task's classes."""
        return any(c is not None and not c.is_task for c in (self.model, self.data))

    @property
    def trace(self) -> Path:
        """Its weights after every optimizer step (driving.trace), for a user's model."""
        return self.log_dir / "trace.pt"

    @property
    def name(self) -> str:
        return f"{self.runner} ({self.mode.label})"

    @property
    def ok(self) -> bool:
        if self.runner in MINIMAL:  # a minimal loop writes model.pt alone
            return self.exit_code == 0 and (self.run_dir / "model.pt").exists()
        return self.exit_code == 0 and self.metrics is not None

    @property
    def expected_refusal(self) -> str | None:
        """Why this runner refuses this mode, when it must (and compare.py shows it so)."""
        if self.runner == "accelerate" and self.mode.strategy == arguments.FSDP2:
            return "Accelerate has no FSDP on CPUs (an FSDP config with use_cpu trains DDP)"
        return None

    @property
    def refused_as_expected(self) -> bool:
        """It refused as it must: before training, with its one `error:` line, no model.pt."""
        if self.expected_refusal is None or self.exit_code in (0, None):
            return False
        err = self.log_dir / "stderr.log"
        lines = err.read_text().splitlines() if err.exists() else []
        said = sum(line.startswith("error: ") for line in lines) == 1
        return said and not (self.run_dir / "model.pt").exists()

    @property
    def agrees(self) -> bool | None:
        return None if self.problems is None else not self.problems

    @property
    def setup(self) -> parity.Setup:
        """The training this run was asked for, as the in-process replay takes it."""
        return parity.Setup(
            **dataclasses.asdict(self.settings),
            processes=self.mode.processes,
            precision=self.mode.precision,
            grouping=parity.grouping_of(self.runner, self.mode.processes),
        )


def modes(args: argparse.Namespace) -> list[Mode]:
    """Every combination asked for, refused here (not after minutes of runs) if a runner would."""
    result = []
    combinations = itertools.product(args.processes, args.precision, args.accumulate, args.strategy)
    for n, precision, k, strategy in combinations:
        if strategy == arguments.FSDP2 and (n == 1 or precision != "32-true" or k != 1):
            raise errors.UsageError(
                "--strategy fsdp2 is compared with 2 or more --processes, 32-true, no "
                "accumulation (what its replay check covers)"
            )
        if precision not in CPU_PRECISIONS:
            raise errors.UsageError(
                f"precision {precision} needs a CUDA GPU; on a CPU use bf16-mixed"
            )
        if getattr(args, "data", None) is None or args.data.is_task:  # a user's: yours.py
            splits = arguments.split_sizes(args.num_samples, args.val_fraction)
            arguments.micro_batch_size(args.batch_size, n, k, *splits)
        result.append(Mode(n, precision, k, strategy))
    if "raw" in args.runners and any(m != Mode(1, "32-true", 1) for m in result):
        raise errors.UsageError("the raw runner runs 1 process, 32-true, no accumulation only")
    if args.check and max(args.processes) > parity.MAX_BITWISE_PROCESSES:
        raise errors.UsageError(
            f"--check proves runs bit for bit with up to {parity.MAX_BITWISE_PROCESSES} processes "
            "(gloo sums 3 or more in its own order); run more without --check"
        )
    return list(dict.fromkeys(result))


def mode_key(mode: Mode) -> str:
    key = f"{mode.processes}p-{mode.precision}-acc{mode.accumulate}"
    return key + (f"-{mode.strategy}" if mode.strategy != "ddp" else "")


def plan(args: argparse.Namespace) -> list[Run]:
    """Every runner in every mode, in that order: one Run each, its folders under --out."""
    given = settings.from_args(args)
    out = args.out.resolve()
    runs = [
        Run(
            runner=runner,
            mode=mode,
            settings=given.replace(accumulate=mode.accumulate),
            run_dir=out / "runs" / mode_key(mode) / runner,
            log_dir=out / "logs" / mode_key(mode) / runner,
            extra_args=args.extra.get(runner, ()),
            threads=args.threads,
            checkout=args.checkout,
            model=getattr(args, "model", None),
            data=getattr(args, "data", None),
        )
        for mode in args.modes
        for runner in args.runners
    ]
    for run in runs:
        if run.yours:
            run.env[TRACE_ENV] = str(run.trace)
    return runs
