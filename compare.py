"""Run the runners on the same task, side by side: do they agree, and what does each one cost?

    python compare.py                                        # the four runners, 1 process each
    python compare.py --processes 1 2 --precision 32-true bf16-mixed --check
    python compare.py --runners torch fabric --extra-args "fabric=--seed 7" --check   # must fail
    python compare.py --processes 2 --strategy ddp fsdp2 --check   # sharded beside DDP, on CPUs

Each run is the runner's real entry point (`python simple_train.py ...`, `torchrun`, `accelerate
launch`, ...) started as a subprocess with the same task settings, the same thread count and its
own run directory. Then it prints one table (losses, accuracy, max |weight difference| against
plain PyTorch in the same mode, times, memory), says whether the runners agree, and writes a report
folder (default reports/<timestamp>/): report.md, report.json, curves.png, step_time.png, and the
runs' own directories and logs.

When a run agrees (the rule that --check enforces; parity.py holds the reasons):
- its model.pt equals, BIT FOR BIT, an in-process replay of the same training that follows the
  runner's own arithmetic: the same order, the same samples in each process's forward pass
  (Accelerate shards each step's batch where DistributedSampler interleaves it), DDP's gradient
  combination. The replay runs here, on this CPU, with the run's thread count, so the rule holds
  for any seed, size and machine; no tolerance is tuned. It covers 1 and 2 processes (gloo's sum
  of 3 or more operands has its own order; --check refuses those);
- its metrics.json records the precision, world size and accumulation that were asked;
- in bf16-mixed, its weights differ from the fp32 replay (equal bits mean it never used bf16).
The distance to plain PyTorch is reported, not checked: runners with another grouping round
differently (Adam amplifies it), and the report shows that the same steps computed in float64
are ~1e-16 apart, so the gap is rounding, not another training.

How the costs are measured (see docs/comparison.md):
- step time: the interval between consecutive optimizer steps of rank 0, in every epoch but the
  first (warm-up), never across an epoch's end (validation, checkpoints); median and p25-p75.
  The times come from torch's global optimizer-step hook, installed by
  benchmarks/steptimer/sitecustomize.py through PYTHONPATH, so no runner is edited.
- start-up: from starting the command to the end of the first optimizer step.
- peak RSS: the largest single process of the run (the kernel's max RSS, from wait4). For a
  multi-process run that is one rank or the launcher, not the sum; report.json lists each process.
- state MiB/process: the parameters and optimizer state that rank 0 holds at the end, as the
  runner records it in metrics.json (its shards under FSDP2, full copies under DDP).

With --strategy fsdp2, Accelerate (no FSDP on CPUs) must refuse: the report shows it refused with
its reason, and a run that trained instead disagrees (--check fails).

Exit status: 0 done (and, with --check, the runners agree); 1 a run failed, or --check and the
runners disagree; 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fourways import interrupts, parity, settings, task
from fourways.contract import arguments, errors, records

if TYPE_CHECKING:
    import resource  # Unix only: main() refuses elsewhere before anything needs it

ROOT = Path(__file__).resolve().parent
STEP_TIMER = ROOT / "benchmarks" / "steptimer"
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
REFERENCE = "torch"
CPU_PRECISIONS = ("32-true", "bf16-mixed")
ACCELERATE_PRECISION = {"32-true": "no", "bf16-mixed": "bf16", "16-mixed": "fp16"}
REPORT_FILES = ("report.json", "report.md", "curves.png", "step_time.png")
INTERRUPTED = interrupts.INTERRUPTED  # an interrupted comparison's folder: --out may reuse it


# ---------------------------------------------------------------------------------------------
# What to run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
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


@dataclass(frozen=True)
class TaskSettings:
    epochs: int = task.EPOCHS
    num_samples: int = task.NUM_SAMPLES
    hidden_dim: int = task.HIDDEN_DIM
    batch_size: int = task.GLOBAL_BATCH_SIZE
    lr: float = task.LEARNING_RATE
    seed: int = task.SEED


@dataclass
class Run:
    """One runner in one mode: its command, and afterwards what it said and what it cost."""

    runner: str
    mode: Mode
    settings: TaskSettings
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
        s, m = self.settings, self.mode
        return parity.Setup(
            num_samples=s.num_samples, hidden_dim=s.hidden_dim, global_batch_size=s.batch_size,
            lr=s.lr, epochs=s.epochs, seed=s.seed, processes=m.processes,
            accumulate=m.accumulate, precision=m.precision,
            grouping=parity.grouping_of(self.runner, m.processes),
        )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_flags(runner: str, mode: Mode, s: TaskSettings) -> list[str]:
    """The same task, in each runner's own flag names."""
    if runner == "lightning":
        flags = {
            "--trainer.max_epochs": s.epochs,
            "--data.num_samples": s.num_samples,
            "--model.hidden_dim": s.hidden_dim,
            "--data.batch_size": s.batch_size,
            "--model.lr": s.lr,
            "--seed_everything": s.seed,
            "--trainer.precision": mode.precision,
            "--trainer.accumulate_grad_batches": mode.accumulate,
        }
    else:
        flags = {
            "--epochs": s.epochs,
            "--num-samples": s.num_samples,
            "--hidden-dim": s.hidden_dim,
            "--batch-size": s.batch_size,
            "--lr": s.lr,
            "--seed": s.seed,
            "--accumulate": mode.accumulate,
        }
        if runner in ("torch", "fabric"):
            flags["--precision"] = mode.precision
        elif runner == "accelerate":
            flags["--mixed-precision"] = ACCELERATE_PRECISION[mode.precision]
    return [str(x) for item in flags.items() for x in item]


def command(run: Run) -> tuple[list[str], dict[str, str]]:
    """The runner's real entry point for this mode, and the environment it needs on top."""
    py, n, env = sys.executable, run.mode.processes, {}
    port = str(free_port()) if n > 1 else None
    if run.runner in MINIMAL:
        argv = minimal_command(run, port)
    elif run.runner in ("torch", "raw"):
        flags = task_flags(run.runner, run.mode, run.settings)
        script = "simple_train.py" if run.runner == "torch" else "benchmarks/raw_loop.py"
        start = [py, script] if n == 1 else [py, "-m", "torch.distributed.run"]
        if n > 1:
            start += ["--nproc_per_node", str(n), "--master_port", port, script]
        argv = [*start, *flags, "--run-dir", str(run.run_dir)]
        if run.runner == "torch":
            argv[len(start) : len(start)] = ["--device", "cpu"]
    elif run.runner == "fabric":
        flags = task_flags(run.runner, run.mode, run.settings)
        argv = [py, "fabric_train.py", "--accelerator", "cpu", "--devices", str(n), *flags]
        argv += ["--run-dir", str(run.run_dir)]
    elif run.runner == "lightning":
        flags = task_flags(run.runner, run.mode, run.settings)
        argv = [py, "lightning_module.py", "fit", "--trainer.accelerator", "cpu"]
        argv += ["--trainer.devices", str(n), *(["--trainer.strategy", "ddp"] if n > 1 else [])]
        argv += flags
        root, name, version = run.run_dir.parent.parent, run.run_dir.parent.name, run.run_dir.name
        argv += ["--trainer.logger.init_args.save_dir", str(root)]
        argv += ["--trainer.logger.init_args.name", name]
        argv += ["--trainer.logger.init_args.version", version]
    elif run.runner == "accelerate":
        flags = task_flags(run.runner, run.mode, run.settings)
        argv = [py, "accelerate_train.py"]
        if n > 1:
            argv = [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
            argv += [str(n), "--num_machines", "1", "--dynamo_backend", "no"]
            argv += ["--mixed_precision", ACCELERATE_PRECISION[run.mode.precision]]
            argv += ["--main_process_port", port, "accelerate_train.py"]
        argv += ["--cpu", *flags, "--run-dir", str(run.run_dir)]
    else:
        raise ValueError(run.runner)
    if run.mode.strategy == arguments.FSDP2:
        argv = fsdp2_command(run, argv, port)
    if port and run.runner in ("fabric", "lightning", "min-fabric", "min-lightning"):
        env["MASTER_PORT"] = port
    return [*argv, *run.extra_args], env


def fsdp2_command(run: Run, argv: list[str], port: str | None) -> list[str]:
    """The runner's DDP command, asking for FSDP2 as a user of that runner would."""
    n = str(run.mode.processes)
    if run.runner in ("torch", "fabric"):
        return [*argv, "--strategy", arguments.FSDP2]
    if run.runner == "lightning":  # the config file, sized to the processes
        at = argv.index("--trainer.strategy")
        return [*argv[:at], "--config", "configs/lightning/fsdp2.yaml", "--trainer.devices", n,
                "--trainer.strategy.init_args.data_parallel_size", n, *argv[at + 2 :]]  # fmt: skip
    if run.runner == "accelerate":  # its FSDP2 config: refused on CPUs, shown as such
        script = argv.index("accelerate_train.py")
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  "configs/accelerate/fsdp.json", "--num_processes", n]  # fmt: skip
        return [*launch, "--main_process_port", str(port), *argv[script:]]
    raise ValueError(run.runner)


def minimal_command(run: Run, port: str | None) -> list[str]:
    """A minimal loop (minimal/), launched as its docstring says: the task's size only."""
    s, mode, script, py = run.settings, run.mode, MINIMAL[run.runner], sys.executable
    if dataclasses.replace(s, epochs=0, num_samples=0, hidden_dim=0) != TaskSettings(0, 0, 0):
        raise ValueError(f"{run.runner} takes the task's defaults beyond its size: {s}")
    if mode.precision != "32-true" or mode.accumulate != 1:
        raise ValueError(f"{run.runner} trains in fp32 without accumulation only")
    n = mode.processes
    argv = [py, script]
    if run.runner == "min-torch":
        if n > 1:
            argv = [py, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
            argv += ["--master_port", str(port), script]
        argv += ["--device", "cpu"]
    elif run.runner in ("min-fabric", "min-lightning"):
        argv += ["--accelerator", "cpu", "--devices", str(n)]
    elif n > 1:  # min-accelerate
        argv = [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
        argv += ["--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no"]
        argv += ["--main_process_port", str(port), script, "--cpu"]
    else:
        argv += ["--cpu"]
    argv += ["--epochs", str(s.epochs), "--num-samples", str(s.num_samples)]
    return [*argv, "--hidden-dim", str(s.hidden_dim), "--save", str(run.run_dir / "model.pt")]


def child_env(run: Run, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not is_launch_variable(k)}
    pythonpath = [str(STEP_TIMER), *filter(None, [env.get("PYTHONPATH")])]
    env |= {
        "OMP_NUM_THREADS": str(run.threads),  # the same threads for every runner
        "MKL_NUM_THREADS": str(run.threads),
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "COMPARE_STEP_LOG": str(run.log_dir / "steps"),
        "PYTHONUNBUFFERED": "1",  # epoch lines reach the log (and the progress display) at once
        interrupts.MARKER: interrupts.TAG,  # inherited by a launcher's ranks: see interrupts.py
    }
    return env | extra


def is_launch_variable(name: str) -> bool:
    """A launcher's variables inherited from our own environment would confuse the children."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return name in names or name.startswith(("ACCELERATE_", "PL_", "TORCHELASTIC_"))


# ---------------------------------------------------------------------------------------------
# Running, with a progress display
# ---------------------------------------------------------------------------------------------
class PlainProgress:
    """One line per start and end, for logs and pipes."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.total, self.started, self.done = len(runs), 0, 0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def ready(self, run: Run) -> None:
        """Called just before a run starts (the benchmark waits here for a quiet machine)."""

    def start(self, run: Run) -> None:
        self.started += 1
        print(f"start {self.started}/{self.total}: {run.name}", file=sys.stderr, flush=True)

    def update(self, run: Run, epochs: int) -> None:
        pass

    def finish(self, run: Run) -> None:
        self.done += 1
        status = "done" if run.exit_code == 0 else f"FAILED (exit {run.exit_code})"
        line = f"done {self.done}/{self.total}: {run.name}: {status} in {run.wall_s:.1f} s"
        print(line, file=sys.stderr, flush=True)


class RichProgress(PlainProgress):
    """A live bar per run (epochs done), on a terminal."""

    def __init__(self, runs: Sequence[Run]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        super().__init__(runs)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
        )
        self.tasks = {
            id(run): self.progress.add_task(
                run.name, total=run.settings.epochs, start=False, status="waiting"
            )
            for run in runs
        }

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, run: Run) -> None:
        self.progress.start_task(self.tasks[id(run)])
        self.progress.update(self.tasks[id(run)], status="running")

    def update(self, run: Run, epochs: int) -> None:
        self.progress.update(self.tasks[id(run)], completed=epochs)

    def finish(self, run: Run) -> None:
        status = "[green]done" if run.exit_code == 0 else f"[red]failed (exit {run.exit_code})"
        self.progress.update(self.tasks[id(run)], status=status)
        self.progress.stop_task(self.tasks[id(run)])


EPOCH_LINE = re.compile(r"^epoch (\d+) ", re.MULTILINE)


def execute(
    runs: Sequence[Run],
    jobs: int = 1,
    timeout: float = 600.0,
    display: PlainProgress | None = None,
) -> None:
    """Run everything in order; `jobs` single-process runs at a time, a multi-process run alone."""
    display = display or (RichProgress if sys.stderr.isatty() else PlainProgress)(runs)
    pending, active = list(runs), {}
    with display:
        while pending or active:
            while pending and can_start(pending[0], list(active.values()), jobs):
                run = pending.pop(0)
                display.ready(run)
                active[launch(run).pid] = run
                display.start(run)
            time.sleep(0.05)
            for pid, run in list(active.items()):
                if reap(pid, run, timeout):
                    del active[pid]
                    display.finish(run)
                else:
                    text = (run.log_dir / "stdout.log").read_text(errors="replace")
                    display.update(run, len(EPOCH_LINE.findall(text)))


def can_start(run: Run, active: list[Run], jobs: int) -> bool:
    if not active:
        return True
    alone = run.mode.processes > 1 or any(a.mode.processes > 1 for a in active)
    return not alone and len(active) < jobs


def launch(run: Run) -> subprocess.Popen:
    (run.log_dir / "steps").mkdir(parents=True, exist_ok=True)
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    if run.runner in MINIMAL:  # --save names a file: its folder must exist
        run.run_dir.mkdir(exist_ok=True)
    run.argv, extra_env = command(run)
    with (
        open(run.log_dir / "stdout.log", "w") as out,
        open(run.log_dir / "stderr.log", "w") as err,
    ):
        run.started = time.perf_counter()
        run.launching = True  # until its pid is kept: a signal may arrive inside Popen
        # Its own session, so that a timeout can end the whole process tree that we started.
        process = subprocess.Popen(
            run.argv,
            cwd=ROOT,
            env=child_env(run, extra_env | run.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    run.pid, run.launching = process.pid, False
    return process


def reap(pid: int, run: Run, timeout: float) -> bool:
    """Collect a finished run with its peak memory (wait4); end it if past its time."""
    assert run.started is not None
    if time.perf_counter() - run.started > timeout:
        os.killpg(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        with open(run.log_dir / "stderr.log", "a") as err:
            print(f"compare.py: ended after the {timeout:.0f} s timeout", file=err)
    else:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == 0:
            return False
    ended(run, status, usage)
    return True


def ended(run: Run, status: int, usage: resource.struct_rusage) -> None:
    """What a reaped run's wait4 said: its exit status, time and peak memory."""
    assert run.started is not None
    run.wall_s = time.perf_counter() - run.started
    run.exit_code = os.waitstatus_to_exitcode(status)
    # ru_maxrss of a reaped child covers its reaped descendants: the largest single process.
    run.max_rss_kib = usage.ru_maxrss
    run.pid = None


# ---------------------------------------------------------------------------------------------
# What the runs said
# ---------------------------------------------------------------------------------------------
def quartiles(values: Sequence[float]) -> dict[str, float]:
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
    path = run.run_dir / "metrics.json"
    if run.exit_code == 0 and path.exists():
        run.metrics = json.loads(path.read_text())
    run.steps = read_step_log(run)


def load_weights(run: Run) -> dict[str, Any]:
    import torch

    return torch.load(run.run_dir / "model.pt", weights_only=True)


class References:
    """In-process replays (parity.replay), each computed once per training, dtype and threads."""

    def __init__(self) -> None:
        self.cache: dict[tuple, dict[str, Any]] = {}

    def get(self, setup: parity.Setup, threads: int, float64: bool = False) -> dict[str, Any]:
        import torch

        key = (setup, threads, float64)
        if key not in self.cache:
            dtype = torch.float64 if float64 else torch.float32
            self.cache[key] = parity.replay(setup, dtype, num_threads=threads)
        return self.cache[key]


def check_runs(runs: Sequence[Run]) -> None:
    """Each run against the replay of its own arithmetic; the distance to plain PyTorch beside."""
    references = References()
    for run in runs:
        if run.ok and run.mode.processes <= parity.MAX_BITWISE_PROCESSES:
            run.problems = problems(run, load_weights(run), references)
    for mode in dict.fromkeys(r.mode for r in runs):
        group = [r for r in runs if r.mode == mode and r.ok]
        reference = next((r for r in group if r.runner == REFERENCE), None)
        if reference is None:
            continue
        ref = load_weights(reference)
        for run in group:
            run.max_weight_diff = parity.max_abs_diff(load_weights(run), ref)


def problems(run: Run, weights: dict[str, Any], references: References) -> list[str]:
    """Why a run does not count as the training it was asked for; empty when it does."""
    setup, found = run.setup, []
    if run.expected_refusal:  # e.g. Accelerate trained plain DDP when FSDP was asked
        found.append(f"it trained, where it must refuse: {run.expected_refusal}")
    replayed = references.get(setup, run.threads)
    run.reference_diff = parity.max_abs_diff(weights, replayed)
    if not parity.bitwise_equal(weights, replayed):
        found.append(
            f"weights differ from the replay of its own arithmetic ({setup.grouping}) by "
            f"{fmt_diff(run.reference_diff)}; they must be equal bit for bit"
        )
    asked = {"precision": run.mode.precision, "world_size": run.mode.processes,
             "accumulate_grad_batches": run.mode.accumulate}  # fmt: skip
    assert run.metrics is not None
    for key, value in asked.items():
        if run.metrics.get(key) != value:
            found.append(f"metrics.json says {key} {run.metrics.get(key)}, asked {value}")
    if setup.precision == "bf16-mixed":
        fp32 = references.get(dataclasses.replace(setup, precision="32-true"), run.threads)
        run.fp32_diff = parity.max_abs_diff(weights, fp32)
        if run.fp32_diff <= parity.BF16_MIN_DIFF_FROM_FP32:
            found.append("weights equal the fp32 replay bit for bit: it did not compute in bf16")
    if setup.grouping != parity.INTERLEAVED:
        # The same samples per step as plain PyTorch, grouped otherwise: equal in float64.
        plain = dataclasses.replace(setup, precision="32-true", grouping=parity.INTERLEAVED)
        own = dataclasses.replace(setup, precision="32-true")
        run.float64_gap = parity.max_abs_diff(
            references.get(own, run.threads, float64=True),
            references.get(plain, run.threads, float64=True),
        )
        if run.float64_gap > parity.SAME_SAMPLES_FLOAT64_TOL:
            found.append(
                f"its grouping is {fmt_diff(run.float64_gap)} from plain PyTorch's in float64 "
                f"(> {parity.SAME_SAMPLES_FLOAT64_TOL:g}): not the same samples per step"
            )
    return found


# ---------------------------------------------------------------------------------------------
# Table, verdict, report
# ---------------------------------------------------------------------------------------------
COLUMNS = (
    "runner", "mode", "world size", "precision", "train loss", "val loss", "val acc",
    "max |Δw| vs torch", "Δw vs replay", "agrees", "total s", "train s", "step µs",
    "step p25–p75 µs", "start-up s", "peak RSS MiB", "state MiB/process",
)  # fmt: skip


def fmt_diff(value: float | None) -> str:
    if value is None:
        return "–"
    return "0" if value == 0 else f"{value:.1e}"


def row(run: Run) -> dict[str, str]:
    flag = " *" if run.extra_args else ""  # extra arguments: not the same task as the others
    cells = dict.fromkeys(COLUMNS, "–")
    cells |= {"runner": run.runner + flag, "mode": run.mode.label}
    if run.refused_as_expected:
        return cells | {"agrees": "refused"}
    if not run.ok:
        return cells | {"agrees": f"FAILED (exit {run.exit_code})"}
    m, last = run.metrics, run.metrics["epochs"][-1]
    agrees = {None: "–", True: "yes", False: "NO"}[run.agrees]
    cells |= {
        "world size": str(m["world_size"]),
        "precision": m["precision"],
        "train loss": f"{last['train_loss']:.4f}",
        "val loss": f"{last['val_loss']:.4f}",
        "val acc": f"{last['val_acc']:.4f}",
        "max |Δw| vs torch": fmt_diff(run.max_weight_diff),
        "Δw vs replay": fmt_diff(run.reference_diff),
        "agrees": agrees,
        "total s": f"{run.wall_s:.1f}",
        "train s": f"{m['wall_clock_s']:.2f}",
        "peak RSS MiB": f"{run.max_rss_kib / 1024:.0f}",
    }
    if (held := m.get("state_bytes_per_process")) is not None:
        cells["state MiB/process"] = f"{held / 2**20:.2f}"
    if run.steps:
        cells["start-up s"] = f"{run.steps['startup_s']:.1f}"
        if (q := run.steps["steady_step_s"]) is not None:
            cells["step µs"] = f"{q['median'] * 1e6:.0f}"
            cells["step p25–p75 µs"] = f"{q['p25'] * 1e6:.0f}–{q['p75'] * 1e6:.0f}"
    return cells


def markdown_table(rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    def cells(values: Iterable[str]) -> str:  # a pipe inside a cell would end it: escaped
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    lines = [cells(columns), "|" + "---|" * len(columns)]
    return "\n".join(lines + [cells(r[c] for c in columns) for r in rows])


RULE = (
    "A run agrees when its weights equal, bit for bit, an in-process replay of its own arithmetic "
    "(same order, same per-process forward passes, DDP's gradient combination), its metrics.json "
    "records what was asked, and in bf16-mixed its weights differ from the fp32 replay. The "
    "distance to plain PyTorch is reported, not checked."
)


def verdict(runs: Sequence[Run]) -> tuple[bool, list[str]]:
    """Whether every run finished and matched its replay; the lines that say so plainly."""
    failed = [r for r in runs if not r.ok and not r.refused_as_expected]
    unchecked = [r for r in runs if r.ok and r.agrees is None]
    off = [r for r in runs if r.agrees is False]
    lines = [RULE]
    lines += [f"refused, as it must: {r.name}: {r.expected_refusal}" for r in runs
              if r.refused_as_expected]  # fmt: skip
    lines += [f"FAILED: {r.name} exited with status {r.exit_code}; see {r.log_dir}" for r in failed]
    lines += [f"DISAGREE: {r.name}: {problem}" for r in off for problem in r.problems or []]
    lines += [
        f"not checked: {r.name}: gloo sums {r.mode.processes} processes' gradients in an order "
        "the replay does not reproduce"
        for r in unchecked
    ]
    lines += [explain_gap(r) for r in runs if r.float64_gap is not None]
    lines += [
        f"{r.name} is {fmt_diff(r.fp32_diff)} from the fp32 replay: it computed in bf16"
        for r in runs
        if r.fp32_diff and r.agrees
    ]
    agree = not failed and not off and not unchecked
    checked = sum(r.agrees is True for r in runs)
    if agree:
        lines.append(f"AGREE: all {checked} runs match the replay of their own arithmetic.")
    elif not failed and not off:
        lines.append(f"{checked} runs match the replay of their own arithmetic; see above.")
    else:
        lines.append("The runners do NOT agree.")
    return agree, lines


def explain_gap(run: Run) -> str:
    """Why a run in another grouping may sit a little away from plain PyTorch, in numbers."""
    measured = (
        f" ({fmt_diff(run.max_weight_diff)} apart in float32)"
        if run.max_weight_diff is not None
        else ""
    )
    return (
        f"{run.name} splits each step's samples over its processes in another grouping than "
        f"plain PyTorch{measured}; computed in float64 the two groupings are "
        f"{fmt_diff(run.float64_gap)} apart, so a float32 gap is rounding (amplified by Adam), "
        "not another training"
    )


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and (m := re.search(r"model name\s*:\s*(.*)", cpuinfo.read_text())):
        cpu = m.group(1)
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),  # others' work on the machine makes timings noisy
        "python": platform.python_version(),
        "versions": records.framework_versions(),
        "commit": git_commit(),
    }


def git_commit() -> str | None:
    """The runners' commit, marked "+changes" when the working tree differs from it."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        if result.returncode:
            raise OSError(result.stderr)
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return None
    return commit + (" +changes" if dirty else "")


def shown(argv: Sequence[str]) -> str:
    """A command as a user would type it: `python`, not this interpreter's full path."""
    return shlex.join(["python" if a == sys.executable else a for a in argv])


def run_json(run: Run) -> dict[str, Any]:
    steps = dict(run.steps or {})
    intervals = steps.pop("intervals_s", [])
    return {
        "runner": run.runner,
        "mode": dataclasses.asdict(run.mode) | {"label": run.mode.label},
        "command": shown(run.argv),
        "extra_args": list(run.extra_args),
        "run_dir": str(run.run_dir),
        "log_dir": str(run.log_dir),
        "exit_code": run.exit_code,
        "total_s": run.wall_s,
        "peak_rss_mib": run.max_rss_kib / 1024 if run.max_rss_kib else None,
        "max_weight_diff": run.max_weight_diff,
        "reference_diff": run.reference_diff,
        "fp32_diff": run.fp32_diff,
        "float64_gap": run.float64_gap,
        "problems": run.problems,
        "agrees": run.agrees,
        "epoch_based_step_s": epoch_step_s(run.metrics) if run.metrics else None,
        "steady_step_intervals_s": intervals,
        **steps,
        "metrics": run.metrics,
    }


def plot_curves(runs: Sequence[Run], path: Path) -> None:
    """Loss and accuracy per epoch, one line per run: lines that agree lie on top of each other."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    styles = itertools.cycle([("-", "o", 3.5), ("--", "s", 2.5), (":", "^", 2.0), ("-.", "x", 1.5)])
    for run, (line, marker, width) in zip([r for r in runs if r.ok], styles, strict=False):
        epochs = run.metrics["epochs"]
        x = [e["epoch"] for e in epochs]
        for ax, key in zip(axes, ("train_loss", "val_loss", "val_acc"), strict=True):
            ax.plot(x, [e[key] for e in epochs], line, marker=marker, lw=width, label=run.name)
    for ax, title in zip(
        axes, ("train loss", "validation loss", "validation accuracy"), strict=True
    ):
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Per epoch, every run (agreeing runs overlap)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_step_times(runs: Sequence[Run], path: Path) -> None:
    """The distribution of steady-state step times per run: box p25-p75, whiskers p5-p95."""
    import matplotlib.pyplot as plt

    timed = [r for r in runs if r.steps and r.steps["intervals_s"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(timed) + 1.2))
    data = [[t * 1e6 for t in r.steps["intervals_s"]] for r in timed]
    if timed:
        ax.boxplot(data, orientation="horizontal", whis=(5, 95), showfliers=False, widths=0.6)
        ax.set_yticks(range(1, len(timed) + 1), [r.name for r in timed], fontsize=8)
        for i, values in enumerate(data, start=1):
            median = statistics.median(values)
            ax.annotate(f"{median:.0f}", (median, i - 0.34), fontsize=7, ha="center")
    ax.invert_yaxis()
    ax.set(
        title="Time per optimizer step (median, box p25–p75, whiskers p5–p95)",
        xlabel="µs, steady state: first epoch excluded, rank 0",
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(out: Path, runs: Sequence[Run], config: dict[str, Any], lines: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plot_curves(runs, out / "curves.png")
    plot_step_times(runs, out / "step_time.png")
    agree, _ = verdict(runs)
    report = {
        "config": config,
        "machine": machine(),
        "agree": agree,
        "verdict": lines,
        "runs": [run_json(r) for r in runs],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown_report(report, runs))


def markdown_report(report: dict[str, Any], runs: Sequence[Run]) -> str:
    m, c = report["machine"], report["config"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    text = [
        "# compare.py report",
        "",
        f"{c['date']} · {m['cpu']} × {m['cpu_count']} · {m['platform']} · Python {m['python']}",
        f"· {versions} · {c['threads']} thread(s) per process",
        "",
        f"Command: `{c['command']}`",
        "",
        markdown_table([row(r) for r in runs]),
        "",
        *[f"- {line}" for line in report["verdict"]],
        "",
        "Step time: interval between optimizer steps of rank 0, first epoch excluded, never across "
        "an epoch's end; median and p25–p75. Start-up: command start to the end of the first step. "
        "Peak RSS: the largest single process of the run (for several processes, not the sum; "
        "report.json lists each process). Total s: the whole command; train s: the runner's "
        "training loop (metrics.json).",
        "",
    ]
    if extras := [r for r in runs if r.extra_args]:
        text += ["\\* extra arguments, so not the same task as the others:", ""]
        text += [f"- {r.name}: `{shlex.join(r.extra_args)}`" for r in extras] + [""]
    text += ["![loss and accuracy per epoch](curves.png)", "", "![time per step](step_time.png)"]
    text += ["", "Commands (run from the repository root):", ""]
    text += [f"- {r.name}: `{shown(r.argv)}`" for r in runs]
    return "\n".join(text) + "\n"


# The console's table, one per mode, fits 100 columns; report.md and report.json hold the rest.
CONSOLE_COLUMNS = (
    "runner", "val loss", "val acc", "max |Δw| vs torch", "Δw vs replay", "agrees", "step µs",
    "total s",
)  # fmt: skip


def print_table(runs: Sequence[Run], lines: list[str]) -> None:
    by_mode: dict[Mode, list[dict[str, str]]] = {}
    for run in runs:
        by_mode.setdefault(run.mode, []).append(row(run))
    for mode, rows in by_mode.items():
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            table = Table(*CONSOLE_COLUMNS, title=mode.label, header_style="bold")
            for r in rows:
                style = "red" if r["agrees"] not in ("yes", "–") else None
                table.add_row(*(r[c] for c in CONSOLE_COLUMNS), style=style)
            Console().print(table)
            continue
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in CONSOLE_COLUMNS}
        print(f"{mode.label}:")
        print("  ".join(c.ljust(widths[c]) for c in CONSOLE_COLUMNS).rstrip())
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in CONSOLE_COLUMNS).rstrip())
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = errors.ArgumentParser(
        description="Run the runners on the same task; show whether they agree and their cost.",
    )
    parser.add_argument(
        "--runners",
        nargs="+",
        choices=RUNNERS + EXTRA_RUNNERS,
        default=list(RUNNERS),
        help="raw = benchmarks/raw_loop.py (no DataLoader; 1 process, fp32)",
    )
    parser.add_argument("--processes", nargs="+", type=settings.positive_int, default=[1])
    parser.add_argument("--precision", nargs="+", choices=arguments.PRECISIONS, default=["32-true"])
    parser.add_argument("--accumulate", nargs="+", type=settings.positive_int, default=[1])
    parser.add_argument(
        "--strategy",
        nargs="+",
        choices=("ddp", arguments.FSDP2),
        default=["ddp"],
        help="for several processes; fsdp2 shards parameters, gradients and optimizer state "
        "(torch, Fabric, the Trainer; Accelerate has none on CPUs and is shown refused)",
    )
    task_group = parser.add_argument_group("task (the same for every runner)")
    task_group.add_argument("--epochs", type=settings.positive_int, default=task.EPOCHS)
    task_group.add_argument("--num-samples", type=settings.positive_int, default=task.NUM_SAMPLES)
    task_group.add_argument("--hidden-dim", type=settings.positive_int, default=task.HIDDEN_DIM)
    task_group.add_argument(
        "--batch-size",
        type=settings.positive_int,
        default=task.GLOBAL_BATCH_SIZE,
        help="GLOBAL batch",
    )
    task_group.add_argument("--lr", type=settings.positive_float, default=task.LEARNING_RATE)
    task_group.add_argument("--seed", type=int, default=task.SEED)
    parser.add_argument("--threads", type=settings.positive_int, default=1, help="per process")
    parser.add_argument(
        "--jobs",
        type=settings.positive_int,
        choices=(1, 2),
        default=1,
        help="single-process runs at a time (2 is faster, but the runs then share the CPU)",
    )
    parser.add_argument("--timeout", type=settings.positive_float, default=600, help="s per run")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<timestamp>)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 unless every run equals the replay of its own arithmetic "
        "(see the module's docstring)",
    )
    parser.add_argument(
        "--extra-args",
        action="append",
        default=[],
        metavar="RUNNER=ARGS",
        help="append ARGS (the runner's own flags) to RUNNER's command, e.g. 'fabric=--seed 7' "
        "to see a disagreement; the table marks such runs with *",
    )
    args = parser.parse_args(argv)
    try:
        args.extra = parse_extra_args(args.extra_args, args.runners)
        args.modes = modes(args)
        args.out = report_dir(args.out)
    except errors.UsageError as err:
        parser.error(str(err))
    return args


def parse_extra_args(items: Sequence[str], runners: Sequence[str]) -> dict[str, tuple[str, ...]]:
    extra: dict[str, tuple[str, ...]] = {}
    for item in items:
        runner, sep, text = item.partition("=")
        if not sep or runner not in runners:
            raise errors.UsageError(
                f"--extra-args {item!r}: expected RUNNER=ARGS with RUNNER one of {runners}"
            )
        extra[runner] = extra.get(runner, ()) + tuple(shlex.split(text))
    return extra


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
        arguments.micro_batch_size(args.batch_size, n, k, *arguments.split_sizes(args.num_samples))
        result.append(Mode(n, precision, k, strategy))
    if "raw" in args.runners and any(m != Mode(1, "32-true", 1) for m in result):
        raise errors.UsageError("the raw runner runs 1 process, 32-true, no accumulation only")
    if args.check and max(args.processes) > parity.MAX_BITWISE_PROCESSES:
        raise errors.UsageError(
            f"--check proves runs bit for bit with up to {parity.MAX_BITWISE_PROCESSES} processes "
            "(gloo sums 3 or more in its own order); run more without --check"
        )
    return list(dict.fromkeys(result))


def report_dir(out: Path | None) -> Path:
    """An explicit folder must not hold a report or another comparison's runs yet (an
    interrupted one's may be replaced); the default one is new every time."""
    if out is not None:
        if (out / "report.json").exists():
            raise errors.UsageError(f"{out} already holds a report; choose another --out")
        if (out / "runs").exists() and not (out / INTERRUPTED).exists():
            raise errors.UsageError(
                f"{out} holds the runs of another comparison; choose another --out"
            )
        return out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, i = ROOT / "reports" / stamp, 1
    while candidate.exists():
        candidate, i = ROOT / "reports" / f"{stamp}-{i}", i + 1
    return candidate


def plan(args: argparse.Namespace) -> list[Run]:
    settings = TaskSettings(
        args.epochs, args.num_samples, args.hidden_dim, args.batch_size, args.lr, args.seed
    )
    out = args.out.resolve()
    return [
        Run(
            runner=runner,
            mode=mode,
            settings=settings,
            run_dir=out / "runs" / mode_key(mode) / runner,
            log_dir=out / "logs" / mode_key(mode) / runner,
            extra_args=args.extra.get(runner, ()),
            threads=args.threads,
        )
        for mode in args.modes
        for runner in args.runners
    ]


def mode_key(mode: Mode) -> str:
    key = f"{mode.processes}p-{mode.precision}-acc{mode.accumulate}"
    return key + (f"-{mode.strategy}" if mode.strategy != "ddp" else "")


def main(argv: Sequence[str] | None = None) -> int:
    interrupts.require_linux("compare.py")
    args = parse_args(argv)
    runs = plan(args)
    interrupts.clear_interrupted(args.out, "compare.py")
    args.out.mkdir(parents=True, exist_ok=True)
    return interrupts.guarded(
        "compare.py", args.out, ("report", REPORT_FILES), runs, lambda: compare(args, runs, argv)
    )


def compare(args: argparse.Namespace, runs: list[Run], argv: Sequence[str] | None) -> int:
    """Run everything, check it, write the report; the exit status."""
    execute(runs, jobs=args.jobs, timeout=args.timeout)
    for run in runs:
        collect(run)
    check_runs(runs)
    agree, lines = verdict(runs)
    config = {
        "command": shlex.join(["python", "compare.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "runners": args.runners,
        "modes": [dataclasses.asdict(m) for m in args.modes],
        "task": dataclasses.asdict(runs[0].settings),
        "threads": args.threads,
        "jobs": args.jobs,
        "extra_args": {k: list(v) for k, v in args.extra.items()},
        "rule": RULE,
    }
    write_report(args.out, runs, config, lines)
    print_table(runs, lines)
    print(f"Report: {args.out}/report.md (and report.json, curves.png, step_time.png)")
    refused = [r for r in runs if r.exit_code == 2 and not r.refused_as_expected]
    for run in refused:
        last = (run.log_dir / "stderr.log").read_text().strip().splitlines() or ["(no message)"]
        print(f"error: {run.name} refused its input: {last[-1]}", file=sys.stderr)
    if refused:
        return 2
    if any(not r.ok and not r.refused_as_expected for r in runs):
        return 1
    return 1 if args.check and not agree else 0


if __name__ == "__main__":
    sys.exit(main())
