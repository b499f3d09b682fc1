"""The task's own arguments as the hand-written runners' options: read from the task's
signatures (`task.make_dataset`, `task.split_dataset`, `task.MLP`), checked, and handed back to
the task's classes by name. `contract.TASK_OPTIONS` is built from them; torch-free.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

from fourways import task


def task_arguments() -> dict[str, Any]:
    """The task's own arguments and their defaults, read from its signatures: the data
    (`make_dataset`, `split_dataset`) and the model (`MLP`). An argument added there becomes an
    option of every hand-written runner and a recorded (and guarded) setting of every run."""
    arguments: dict[str, Any] = {}
    for function in (task.make_dataset, task.split_dataset, task.MLP):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                arguments.setdefault(name, parameter.default)
    return arguments


def init_arguments(cls: Callable[..., Any], args: argparse.Namespace) -> dict[str, Any]:
    """`cls`'s init arguments taken from the hand-written runners' options, by name: a class
    (or function) of the task takes every argument it declares, none hand-listed."""
    arguments = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        if hasattr(args, name):
            arguments[name] = getattr(args, name)
        elif parameter.default is not inspect.Parameter.empty:  # would be left at its default
            raise TypeError(f"{cls.__name__}({name}=...) has no option in contract.TASK_OPTIONS")
    return arguments


def fraction(text: str, open_interval: bool = False) -> float:
    """A fraction: from 0 to 1, or strictly between them (`open_interval`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 < value < 1 if open_interval else 0 <= value <= 1):
        interval = "strictly between 0 and 1" if open_interval else "from 0 to 1"
        raise argparse.ArgumentTypeError(f"{value} must be {interval}")
    return value


def at_least_two(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} must be 2 or more (the labels are 0 and 1)")
    return value


OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "seed": int,
    "label_noise": fraction,
    "val_fraction": lambda text: fraction(text, open_interval=True),
    "num_classes": at_least_two,
}
