"""The hand-written runners' command line and the checks every runner makes before training:
the task's options (from `settings.Settings`), the batch split over processes and
accumulation steps, and the devices, precision and strategy this machine can run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from fourways import settings
from fourways.contract.errors import ArgumentParser, UsageError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
# Accelerate's names for them (its --mixed_precision, and the hand-written runner's).
ACCELERATE_PRECISIONS = {"no": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
TO_ACCELERATE = {ours: theirs for theirs, ours in ACCELERATE_PRECISIONS.items()}


# FSDP2 (torch's `fully_shard`): trains on CPU processes over gloo as on GPUs (FRAMEWORK_NOTES,
# checked 2026-12-01). Lightning's `fsdp` (FSDP1) and DeepSpeed refuse the CPU in Lightning.
FSDP2 = "fsdp2"


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


def split_sizes(
    num_samples: int, val_fraction: float = settings.DEFAULTS.val_fraction
) -> tuple[int, int]:
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


def task_parser(description: str) -> ArgumentParser:
    """The task's options (every field of `settings.Settings`), named as in the contract; each
    runner adds its framework's own. Left out, an option is the checkpoint's value on resume,
    else its default (`resume.settle_args`)."""
    parser = ArgumentParser(description=description)
    group = parser.add_argument_group("task (on --resume, left out = the checkpoint's)")
    for option in settings.OPTIONS:
        group.add_argument(
            option.flag,
            type=option.parse,
            default=None,
            help=f"{option.help} default: {option.default}".strip(),
        )
    group.add_argument(
        "--run-dir", type=Path, default=None, help="default: runs/<runner>/version_N"
    )
    group.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    return parser
