"""The full runners' shared contract (see RUNNER_CONTRACT.md): the task's command line, argument
checks, run directories, the run record, checkpoint I/O, one-line errors, fault injection and
teardown. The task itself (data, model, data order) is in `task.py`; the minimal loops in
`minimal/` do without this module.

It needs torch and the standard library only, so that `simple_train.py` runs where nothing but
torch is installed (tqdm, if present, draws its bar).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import pickle
import re
import signal
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch

from fourways import task, workarounds_runtime
from fourways.task_options import OPTION_TYPES, task_arguments

T = TypeVar("T")

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2, before any training."""


def micro_batch_size(
    global_batch: int, world_size: int, accumulate: int, num_train: int, num_val: int
) -> int:
    """The per-device batch of one forward pass: global batch / (processes x accumulation steps).

    Refuses splits that would silently change the optimisation or the metrics: a remainder, or
    a training or validation set that the processes cannot share evenly (DistributedSampler
    would pad it with duplicates). The refusal names a combination that works.
    """
    for count, name in ((num_train, "training"), (num_val, "validation")):
        if count == 0:
            raise UsageError(
                f"no {name} samples: give more samples, or another validation fraction"
            )
    problem = split_problem(global_batch, world_size, accumulate, num_train, num_val)
    if problem:
        raise UsageError(
            f"{problem}; {working_splits(global_batch, world_size, accumulate, num_train, num_val)}"
        )
    return global_batch // (world_size * accumulate)


def split_problem(
    batch: int, world_size: int, accumulate: int, num_train: int, num_val: int
) -> str:
    if batch % (world_size * accumulate):
        return (
            f"global batch size {batch} is not divisible by {world_size} process(es) x "
            f"{accumulate} accumulation step(s)"
        )
    for count, name in ((num_train, "training"), (num_val, "validation")):
        if count % world_size:
            return f"{count} {name} samples cannot be shared evenly by {world_size} processes"
    return ""


def working_splits(
    batch: int, world_size: int, accumulate: int, num_train: int, num_val: int
) -> str:
    """What would work instead: the nearest batch size and sample count for these processes,
    and the process counts that fit the current settings."""
    split = world_size * accumulate
    fitting_batch = -(-batch // split) * split
    samples = num_train + num_val
    fraction = num_val / samples
    while any(n % world_size for n in split_sizes(samples, fraction)):
        samples += 1
    fitting = [
        n
        for n in range(1, max(8, world_size) + 1)
        if not split_problem(batch, n, accumulate, num_train, num_val)
    ]
    instead = (
        f"{world_size} processes work with a global batch size of {fitting_batch} "
        f"and {samples} samples"
    )
    if not fitting:
        return f"{instead}; no process count fits the current settings"
    counts = (
        ", ".join(map(str, fitting[:-1])) + (" or " if len(fitting) > 1 else "") + str(fitting[-1])
    )
    return f"{instead}; the current settings fit {counts} process(es)"


def split_sizes(num_samples: int, val_fraction: float = task.VAL_FRACTION) -> tuple[int, int]:
    """Training and validation samples, as task.split_dataset splits them."""
    num_val = round(val_fraction * num_samples)
    return num_samples - num_val, num_val


def cuda_requested(accelerator: str) -> bool:
    """Whether an accelerator choice (auto, cpu, cuda, gpu) ends up on CUDA GPUs here."""
    return accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()


def check_devices(accelerator: str, devices: int | str) -> None:
    """Refuse GPUs that are not there, before a framework fails on them with a traceback."""
    if accelerator not in ("cuda", "gpu"):
        return
    visible = torch.cuda.device_count()
    if visible == 0:
        raise UsageError(
            f"accelerator {accelerator} asked for, but no CUDA GPU is visible; use cpu"
        )
    if isinstance(devices, int) and devices > visible:
        raise UsageError(f"{devices} GPUs asked for, but {visible} are visible")


def check_precision(precision: str, on_cuda: bool) -> None:
    """fp16 autocast needs CUDA; the frameworks would swap in bf16 or ignore it: refuse instead."""
    if precision.startswith("16") and not on_cuda:
        raise UsageError(
            f"precision {precision} needs a CUDA GPU; on a CPU use bf16-mixed or 32-true"
        )


# FSDP2 (torch's `fully_shard`): trains on CPU processes over gloo as on GPUs (FRAMEWORK_NOTES,
# checked 2026-12-01). Lightning's `fsdp` (FSDP1) and DeepSpeed refuse the CPU in Lightning.
FSDP2 = "fsdp2"


def check_strategy(strategy: str, on_cuda: bool) -> None:
    """DeepSpeed and FSDP1 shard over CUDA GPUs; refuse them elsewhere instead of falling back.
    FSDP2 runs anywhere."""
    name = strategy.lower()
    if "deepspeed" in name and importlib.util.find_spec("deepspeed") is None:
        raise UsageError(
            f"strategy {strategy} needs the deepspeed package: pip install -e '.[deepspeed]'"
        )
    if name == FSDP2:
        return
    if ("deepspeed" in name or "fsdp" in name) and not on_cuda:
        cpu_choice = "ddp or fsdp2" if "fsdp" in name else "ddp"
        raise UsageError(f"strategy {strategy} needs CUDA GPUs; on CPUs use {cpu_choice}")


# ---------------------------------------------------------------------------------------------
# Console and run directory
# ---------------------------------------------------------------------------------------------
def epoch_line(epoch: int, metrics: dict[str, float]) -> str:
    return (
        f"epoch {epoch}  train_loss {metrics['train_loss']:.4f}  "
        f"val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_acc']:.4f}"
    )


def on_terminal() -> bool:
    """The console rule of all four runners: a progress bar only when a person watches (stdout
    and stderr both terminals); in a log or a pipe the epoch lines alone, nothing redrawn."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress(iterable: Iterable[T], enabled: bool, desc: str) -> Iterable[T]:
    """A tqdm bar on rank 0 on a terminal; otherwise the loader itself, unwrapped."""
    if not (enabled and on_terminal()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def next_run_dir(root: str | Path, runner: str) -> Path:
    """`root/runner/version_N` with N one past the highest there: runs never collide."""
    parent = Path(root) / runner
    versions = [
        int(m.group(1))
        for p in (parent.iterdir() if parent.is_dir() else [])
        if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    return parent / f"version_{max(versions, default=-1) + 1}"


def resolve_run_dir(run_dir: Path | None, runner: str, resume: bool) -> Path:
    """The run directory: a new `runs/<runner>/version_N`, or the one given, never overwritten."""
    if run_dir is None:
        if resume:
            raise UsageError("--resume continues the run in --run-dir: name that directory")
        return next_run_dir("runs", runner)
    check_run_dir(run_dir, resume)
    return run_dir


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """An earlier run's files are never overwritten: finished runs stay, others need --resume."""
    if (run_dir / "model.pt").exists():  # its outputs are the record of that run: kept
        raise UsageError(
            f"{run_dir} already holds a finished run (model.pt); choose another run directory "
            "(to train it on further, copy its checkpoints/ into a new one and resume there)"
        )
    if not resume and (run_dir / "checkpoints").exists():
        raise UsageError(
            f"{run_dir} holds an unfinished run; add --resume to continue it, "
            "or choose another run directory"
        )


def framework_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "lightning", "accelerate", "torchmetrics"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


_writes: dict[str, int] = {}  # atomic writes per file name, for inject_fault


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside `path`, then rename: a kill leaves the old file or the new, never half.

    The temporary file is created by `write` itself, so it gets the usual mode (0644 under a
    022 umask) where `mkstemp` would give 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a killed process that had this pid
    try:
        write(tmp)
        commit_write(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def commit_write(written: Path, path: Path) -> None:
    """The rename that makes a complete write visible as `path` (one point to kill at, too)."""
    _writes[path.name] = _writes.get(path.name, 0) + 1
    inject_fault(f"write-{path.name}", _writes[path.name])  # a kill before the rename
    os.replace(written, path)


@dataclass
class RunRecord:
    """What `metrics.json` holds: the contract's fields, the same for every runner."""

    runner: str
    world_size: int
    device: str
    precision: str
    seed: int
    global_batch_size: int
    per_device_batch_size: int
    accumulate_grad_batches: int
    optimizer_steps: int
    wall_clock_s: float
    config: dict[str, Any]  # the run's configuration, as its checkpoints record it
    epochs: list[dict[str, float]]
    # Parameters + optimizer state held by rank 0 at the end (its shards under FSDP2).
    state_bytes_per_process: int | None = None

    def to_json(self) -> dict[str, Any]:
        fields = dict(vars(self), epochs=[{"epoch": i + 1, **m} for i, m in enumerate(self.epochs)])
        return {"runner": fields.pop("runner"), "versions": framework_versions(), **fields}


def state_bytes(parameters: Iterable[torch.Tensor], optimizer: Any) -> int | None:
    """Bytes of parameters and optimizer state that this process holds: under FSDP2 its local
    shards (a DTensor's `to_local()`), under DDP full copies. Gradients are freed by then.
    None for an optimizer that is not torch's (DeepSpeed's keeps its state its own way)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(optimizer, torch.optim.Optimizer):
        return None

    held = [*parameters]
    held += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in held]
    return sum(t.numel() * t.element_size() for t in local)


def save_run(run_dir: Path, record: RunRecord, model_state: dict[str, torch.Tensor]) -> None:
    """Rank 0's outputs: `metrics.json`, then the MLP's plain `state_dict` as `model.pt`."""
    state = {k: v.detach().cpu().clone() for k, v in model_state.items()}
    text = json.dumps(record.to_json(), indent=2) + "\n"
    atomic_write(run_dir / "metrics.json", lambda p: p.write_text(text))
    atomic_write(run_dir / "model.pt", lambda p: torch.save(state, p))
    print(f"run saved in {run_dir} (model.pt, metrics.json)", flush=True)


# ---------------------------------------------------------------------------------------------
# Checkpoints: every file read as tensors and plain values only, explicitly
# ---------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A `torch.save`d checkpoint, tensors and plain values only (`weights_only=True`, passed
    explicitly: `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` only flips torch's default)."""
    return read_checkpoint_file(
        path, lambda p: torch.load(p, map_location="cpu", weights_only=True)
    )


def read_checkpoint_file(
    path: Path, load: Callable[[Path], T], corrupt_errors: tuple[type[Exception], ...] = ()
) -> T:
    """`load(path)`, with a missing, truncated or unsafe file reported in its own one line.

    Only the loader's own failures are caught: a framework error or a bug elsewhere stays a
    traceback, and a good checkpoint is never called corrupt.
    """
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from at {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:  # torch warns before it refuses
            loaded = load(path)
    except pickle.UnpicklingError as err:
        if not workarounds_runtime.is_weights_only_refusal(err):
            raise corrupt_checkpoint(path, err) from None
        raise UsageError(
            f"{path} holds more than tensors and plain values (it could run code when "
            "unpickled), so it was not loaded; resume only from checkpoints this project wrote"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, *corrupt_errors) as err:
        # A truncated zip, an empty file, a damaged header, bad JSON (a ValueError).
        raise corrupt_checkpoint(path, err) from None
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def corrupt_checkpoint(path: Path, err: Exception) -> UsageError:
    reason = " ".join(str(err).split())[:120] or type(err).__name__
    return UsageError(
        f"{path} is truncated or corrupt ({reason}); resume from an intact checkpoint, "
        "or start a new run directory"
    )


def read_json(path: Path) -> Any:
    """A JSON checkpoint file: plain values by construction."""
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# The run's configuration: recorded in every checkpoint and in metrics.json
# ---------------------------------------------------------------------------------------------
# On resume, these may differ from the checkpoint: train on to more epochs, checkpoint more or
# less often (the epoch's train-loss sum is then added up in another grouping: the same up to
# float32 rounding). Everything else (data, model, optimizer, batch split, precision,
# processes) would make another run.
MAY_CHANGE_ON_RESUME = frozenset({"epochs", "checkpoint_every"})


@dataclass(frozen=True)
class Setting:
    """One entry of the run's configuration, as the user spells it in this runner."""

    key: str  # its name in checkpoints and metrics.json
    option: str  # its name on this runner's command line
    given: Any  # None when left out
    default: Any  # taken when left out of a new run


def settle_config(settings: Iterable[Setting], recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The run's configuration: what was given, else the checkpoint's (on resume), else defaults.

    On resume an option that contradicts the checkpoint is refused, naming both values.
    """
    config = {}
    for setting in settings:
        if recorded is None:
            config[setting.key] = setting.default if setting.given is None else setting.given
            continue
        if setting.key not in recorded:
            raise UsageError(
                f"the checkpoint does not record {setting.key} (written by an older version); "
                "start a new run directory"
            )
        kept = recorded[setting.key]
        if setting.given is None or setting.given == kept:
            config[setting.key] = kept
        elif setting.key in MAY_CHANGE_ON_RESUME:
            config[setting.key] = setting.given
        else:
            raise UsageError(
                f"{setting.option} {setting.given} contradicts the checkpoint, which was trained "
                f"with {setting.option} {kept}; leave {setting.option} out to continue the run "
                "as it was configured, or start a new run directory"
            )
    return config


def check_epochs_left(epochs: int, reached: int, option: str = "--epochs") -> None:
    """Fewer epochs than the checkpoint has trained into would end with more trained than asked."""
    if epochs < reached:
        raise UsageError(
            f"{option} {epochs}: the checkpoint has trained into epoch {reached} already; "
            f"ask for {reached} or more"
        )


def epochs_reached(position: dict[str, Any]) -> int:
    """Epochs finished, plus the one under way: a hand-written runner's checkpoint position."""
    return position["epoch"] + (position["batch"] > 0)


def task_settings(args: argparse.Namespace) -> list[Setting]:
    """The task's options of the hand-written runners (their `task_parser`), as settings."""
    return [
        Setting(key, "--" + dest.replace("_", "-"), getattr(args, dest), default)
        for key, dest, default in (*TASK_OPTIONS, CHECKPOINT_EVERY)
    ]


def settle_args(
    args: argparse.Namespace, recorded: dict[str, Any] | None, *fixed: Setting
) -> dict[str, Any]:
    """The hand-written runners' configuration: the task's options (written back into `args`)
    and the runner's own `fixed` ones (precision, processes), settled against the checkpoint."""
    config = settle_config([*task_settings(args), *fixed], recorded)
    for key, dest, _ in (*TASK_OPTIONS, CHECKPOINT_EVERY):
        setattr(args, dest, config[key])
    return config


def resume_line(path: Path, state: dict[str, Any]) -> str:
    return (
        f"resumed from {path}: epoch {state['epoch'] + 1}, batch {state['batch']}, "
        f"optimizer step {state['steps']}"
    )


# Read once: the check runs every step, and an environment lookup costs more than a comparison.
FAULT = os.environ.get("TASK_FAULT")


def inject_fault(point: str, count: int) -> None:
    """Fault injection for the resume tests: TASK_FAULT=<point>:<count> kills rank 0 there.

    SIGKILL, as `kill -9` from outside would: no cleanup, no atexit, no flushed buffers.
    """
    if FAULT is not None and f"{point}:{count}" == FAULT and rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def rank() -> int:
    """This process's global rank, from the launcher's environment (0 when there is none)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------------------------------------
# Command line shared by the hand-written runners (the Trainer uses LightningCLI)
# ---------------------------------------------------------------------------------------------
TASK_OPTIONS = (  # (key in the run's configuration, argparse dest, default)
    ("seed", "seed", task.SEED),
    ("epochs", "epochs", task.EPOCHS),
    ("global_batch_size", "batch_size", task.GLOBAL_BATCH_SIZE),
    ("lr", "lr", task.LEARNING_RATE),
    ("accumulate", "accumulate", 1),
    *((name, name, default) for name, default in task_arguments().items() if name != "seed"),
)
# Recorded too, so that a resume alone keeps checkpointing as the run did; it may change.
CHECKPOINT_EVERY = ("checkpoint_every", "checkpoint_every", None)
OPTION_HELP = {
    "global_batch_size": "the GLOBAL batch size;",
    "accumulate": "micro-batches per step;",
    "label_noise": "fraction of labels flipped, 0 to 1;",
    "val_fraction": "fraction of samples held out to validate, between 0 and 1;",
    "num_classes": "logits of the model (the labels are 0 and 1), 2 or more;",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option as the contract's one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2. Under several processes only rank 0 speaks."""
    if rank() == 0:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive finite number")
    return value


def task_parser(description: str) -> ArgumentParser:
    """The task's knobs, named as in the contract; each runner adds its framework's own."""
    parser = ArgumentParser(description=description)
    group = parser.add_argument_group("task (on --resume, left out = the checkpoint's)")
    for key, dest, default in TASK_OPTIONS:
        kind = positive_float if isinstance(default, float) else positive_int
        group.add_argument(
            "--" + dest.replace("_", "-"),
            type=OPTION_TYPES.get(key, kind),
            default=None,  # left out: the checkpoint's value on resume, else the default
            help=f"{OPTION_HELP.get(key, '')} default: {default}".strip(),
        )
    group.add_argument(
        "--run-dir", type=Path, default=None, help="default: runs/<runner>/version_N"
    )
    group.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        help="optimizer steps (and each epoch); on --resume, left out = the checkpoint's",
    )
    group.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    return parser


def end_distributed_run(distributed: bool) -> None:
    """Nothing left to do: a multi-process run ends with its framework's own teardown (plain
    torch: `dist.destroy_process_group()`; Accelerate: `end_training()`; Fabric and the Trainer:
    theirs at the interpreter's exit), a gloo group left to the interpreter's exit
    (workarounds_runtime.process_group_left_to_exit). Kept for callers not yet changed."""
    del distributed


def run_main(main: Callable[[], None]) -> None:
    """Entry-point guard: a UsageError becomes the contract's one line and exit status 2."""
    try:
        main()
    except UsageError as err:
        fail(str(err))
