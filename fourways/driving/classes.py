"""A user's LightningModule and LightningDataModule, named by dotted import path, with their init
arguments: imported, checked and built the same way in every hand-written runner.

The flags are LightningCLI's, so one command line serves all four runners:

    --model mypkg.models.MyModule --model.depth 4 --data mypkg.data.MyData --data.batch_size 16

(`--model.init_args.depth 4`, LightningCLI's long form, is taken too.) The init arguments are
checked against the class's signature and type hints by jsonargparse, as LightningCLI checks them;
anything that does not import, is not the right kind of class or does not fit is refused in one
line (errors.UsageError) before anything trains.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser

from fourways import settings
from fourways.contract import resume
from fourways.contract.errors import UsageError

# The task's own classes (the checkout's top-level modules): what --model and --data default to.
TASK_MODEL = "lightning_module.MLPClassifier"
TASK_DATA = "datamodule.TaskDataModule"
ROLES = {"model": (TASK_MODEL, L.LightningModule), "data": (TASK_DATA, L.LightningDataModule)}


@dataclass(frozen=True)
class Choice:
    """A class for one role (model or data), and the init arguments given for it."""

    role: str  # "model" or "data"
    path: str  # its dotted import path
    given: tuple[str, ...] = ()  # its init arguments as given: ("--depth=4", ...)
    init_args: dict[str, Any] = field(default_factory=dict)  # checked, typed: {"depth": 4}

    @property
    def is_task(self) -> bool:
        return self.path == ROLES[self.role][0]


def split_argv(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The command line without its `--model.KEY VALUE` / `--data.KEY=VALUE` init arguments, and
    those arguments per role, as `--KEY=VALUE`."""
    rest: list[str] = []
    init: dict[str, list[str]] = {role: [] for role in ROLES}
    items = iter(argv)
    for item in items:
        role, dot, key = item.removeprefix("--").partition(".")
        if not (item.startswith("--") and dot and role in ROLES):
            rest.append(item)
            continue
        key, equals, value = key.partition("=")
        if not equals:
            value = next(items, None)
            if value is None:
                raise UsageError(f"{item} needs a value")
        init[role].append(f"--{key.removeprefix('init_args.')}={value}")
    return rest, init


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--model and --data on a hand-written runner's parser."""
    group = parser.add_argument_group(
        "model and data (init arguments as --model.NAME VALUE, --data.NAME VALUE)"
    )
    for role, (default, base) in ROLES.items():
        group.add_argument(
            f"--{role}",
            metavar="CLASS_PATH",
            default=None,  # left out: the task's, or the checkpoint's on resume
            help=f"a {base.__name__} by dotted import path; default: {default}",
        )


def import_class(role: str, path: str) -> type:
    """The class `path` names, checked to be a LightningModule (model) or LightningDataModule."""
    base = ROLES[role][1]
    module_name, dot, name = path.rpartition(".")
    if not dot or not module_name:
        raise UsageError(f"--{role} {path}: give a dotted import path, e.g. mypkg.models.MyModel")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import error, or anything the module raises on import
        raise UsageError(
            f"--{role} {path}: cannot import {module_name} ({type(err).__name__}: {err}); "
            "is it on PYTHONPATH?"
        ) from None
    cls = getattr(module, name, None)
    if cls is None:
        raise UsageError(f"--{role} {path}: {module_name} has no {name}")
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise UsageError(f"--{role} {path}: not a {base.__module__}.{base.__name__} subclass")
    return cls


def check_init_args(role: str, cls: type, given: list[str]) -> dict[str, Any]:
    """The given init arguments, typed and checked against `cls`'s signature as LightningCLI
    checks them (jsonargparse); only those given, so that the class's defaults stay its own."""
    parser = ArgumentParser(exit_on_error=False, prog=cls.__name__)
    parser.add_class_arguments(cls, fail_untyped=False)
    try:
        parsed = parser.parse_args(given, defaults=False)
    except Exception as err:  # jsonargparse.ArgumentError, over several lines
        reason = " ".join(str(err).split())
        raise UsageError(f"--{role} {cls.__module__}.{cls.__name__}: {reason}") from None
    return {key: value for key, value in vars(parsed).items() if value is not None}


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """A hand-written runner's arguments, its classes' init arguments (`args.init`, per role,
    as `--NAME=VALUE`) and the task options given explicitly (`args.task_flags`)."""
    add_arguments(parser)
    rest, init = split_argv(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    args.init = init
    args.task_flags = [o.flag for o in settings.OPTIONS if getattr(args, o.dest) is not None]
    return args


def given(args: argparse.Namespace) -> list[resume.Given]:
    """The classes and their init arguments as entries of the run's recorded configuration: left
    out of a resume, they are the checkpoint's; given differently, refused."""
    entries = []
    for role, (default, _) in ROLES.items():
        entries.append(resume.Given(role, f"--{role}", getattr(args, role), default))
        init = args.init[role] or None
        entries.append(resume.Given(f"{role}_init_args", f"--{role}.NAME", init, []))
    return entries


def chosen(config: dict[str, Any], args: argparse.Namespace) -> tuple[Choice, Choice]:
    """The model and the data the run's configuration names, checked (one line if unfit)."""
    model, data = (
        choose(role, config[role], config[f"{role}_init_args"], args.task_flags) for role in ROLES
    )
    return model, data


def choose(role: str, path: str, given: list[str], task_flags: list[str]) -> Choice:
    """The class for `role` and its init arguments. The task's class takes the task's options
    (--hidden-dim, ...); a user's class takes only --ROLE.NAME arguments, and a task option given
    with it is refused (it would be silently ignored)."""
    cls = import_class(role, path)
    choice = Choice(role, path, tuple(given), check_init_args(role, cls, list(given)))
    task_options = [o for o in settings.OPTIONS if o.trainer.startswith(f"{role}.")]
    if choice.is_task:
        if given:  # every init argument of the task's classes is a task option
            flags = ", ".join(o.flag for o in task_options)
            raise UsageError(f"--{role}.{given[0][2:]}: the task's {role} takes the task's "
                             f"options ({flags})")  # fmt: skip
        return choice
    for option in task_options:
        if option.flag in task_flags:
            raise UsageError(
                f"{option.flag} sets the task's {role}; {path} takes its own as --{role}.NAME VALUE"
            )
    return choice


def build(choice: Choice, args: argparse.Namespace) -> Any:
    """An instance of the chosen class: the task's with the task's options (settings), a user's
    with the init arguments given for it (the rest are its defaults)."""
    cls = import_class(choice.role, choice.path)
    if choice.is_task:
        return cls(**settings.init_arguments(cls, args))
    return cls(**choice.init_args)


def name(choice: Choice) -> str:
    """The class's name, as the refusals say it."""
    return choice.path.rpartition(".")[2]
