"""Your model in the comparison: `python compare.py --model PATH --model.NAME VALUE --data PATH
--data.NAME VALUE`, passed to every runner in that same syntax (LightningCLI's).

The task's options (--hidden-dim, --num-samples, ...) set the task's classes and are refused with
a user's class. --batch-size stays the GLOBAL batch: a user's DataModule takes its batch per
process (Lightning's convention), so each run gets `--data.batch_size` = global / (processes x
accumulation); a DataModule without `batch_size` runs on 1 process without accumulation only.
"""

from __future__ import annotations

import argparse
import inspect

from fourways import settings
from fourways.contract.errors import UsageError
from fourways.driving import classes

# compare.py's own options that are not the task's classes' (they stay with a user's classes).
KEPT = ("seed", "epochs", "global_batch_size", "accumulate", "checkpoint_every")


def choose(role: str, path: str | None, given: list[str]) -> classes.Choice:
    """The class for `role` and its checked init arguments (classes.check_init_args)."""
    path = path or classes.ROLES[role][0]
    cls = classes.import_class(role, path)
    choice = classes.Choice(role, path, tuple(given), classes.check_init_args(role, cls, given))
    if choice.is_task and given:
        raise UsageError(
            f"{given[0]}: the task's {role} takes the task's options (--hidden-dim, ...)"
        )
    return choice


def takes_batch_size(data: classes.Choice) -> bool:
    cls = classes.import_class("data", data.path)
    return "batch_size" in inspect.signature(cls).parameters


def refused_option(args: argparse.Namespace, model: classes.Choice, data: classes.Choice) -> str:
    """The first task option given with a user's class that it would not reach, or ""."""
    for option in settings.OPTIONS:
        role = option.trainer.partition(".")[0]
        user = (role == "model" and not model.is_task) or (role == "data" and not data.is_task)
        if user and option.key not in KEPT and getattr(args, option.dest, None) is not None:
            path = model.path if role == "model" else data.path
            return (
                f"{option.flag} sets the task's {role}; {path} takes its own as --{role}.NAME VALUE"
            )
    return ""


def settle(args: argparse.Namespace, init: dict[str, list[str]]) -> None:
    """args.model and args.data as Choices, checked against the rest of the command line; the
    task options left out take their defaults."""
    args.model = choose("model", args.model, init["model"])
    args.data = choose("data", args.data, init["data"])
    if why := refused_option(args, args.model, args.data):
        raise UsageError(why)
    if yours(args):
        check_modes(args)
    for option in settings.OPTIONS:
        if hasattr(args, option.dest) and getattr(args, option.dest) is None:
            setattr(args, option.dest, option.default)


def yours(args: argparse.Namespace) -> bool:
    return not (args.model.is_task and args.data.is_task)


def check_modes(args: argparse.Namespace) -> None:
    """What compare.py can run with a user's classes; one line for what it cannot."""
    if "raw" in args.runners:
        raise UsageError("the raw runner trains the task's MLP only: leave it out with --model")
    if args.strategy != ["ddp"]:
        raise UsageError("--model/--data are compared with --strategy ddp")
    if args.data.is_task:
        return
    if "batch_size" in args.data.init_args:
        raise UsageError(
            "--data.batch_size: compare.py sets it per run from --batch-size (the global batch)"
        )
    split = max(args.processes) * max(args.accumulate)
    if not takes_batch_size(args.data) and split > 1:
        raise UsageError(
            f"{args.data.path} takes no batch_size: compared on 1 process without accumulation "
            "only (the global batch cannot be kept)"
        )
    batch = args.batch_size or settings.DEFAULTS.global_batch_size
    for n in args.processes:
        for k in args.accumulate:
            if batch % (n * k):
                raise UsageError(
                    f"--batch-size {batch} is not divisible by {n} process(es) x {k} accumulated"
                )


def flags(
    model: classes.Choice, data: classes.Choice, global_batch: int, processes: int, k: int
) -> list[str]:
    """--model/--data and their init arguments, as every runner (LightningCLI too) takes them."""
    out: list[str] = []
    for choice in (model, data):
        if choice.is_task:
            continue
        out += [f"--{choice.role}", choice.path]
        for item in choice.given:
            key, _, value = item.removeprefix("--").partition("=")
            out += [f"--{choice.role}.{key}", value]
    if not data.is_task and takes_batch_size(data):
        out += ["--data.batch_size", str(global_batch // (processes * k))]
    return out


def without_task_options(
    s: settings.Settings, model: classes.Choice, data: classes.Choice
) -> settings.Settings:
    """The settings a run is told with these classes: the task's options for a user's class
    left out (None: settings.flags skips them), the global batch too for a user's DataModule."""
    unused = {
        o.key
        for o in settings.OPTIONS
        for choice in (model, data)
        if not choice.is_task and o.trainer.startswith(f"{choice.role}.")
    }
    return s.replace(**dict.fromkeys(unused, None))
