"""The Trainer runner's model and data classes: any LightningModule and LightningDataModule by
dotted path, through LightningCLI's subclass mode, recorded and checked on resume.

    python lightning_module.py fit --model mypkg.MyModule --model.depth 4 --data mypkg.MyData

LightningCLI parses them (`--model.NAME` is its short form of `--model.init_args.NAME`); what
this module adds:

- the task's classes as the default class paths (fourways.driving.classes.ROLES), so that the
  task's flags (`--model.hidden_dim`, `--data.num_samples`, ...) keep working;
- a user's class starts from its OWN defaults: jsonargparse carries init arguments of the default
  class over to another class that has them too (a user's `lr` would become the task's 1e-3),
  so the chosen class becomes the default and the command line is parsed again;
- the task's two links (the data's seed is --seed_everything, the model's num_features the
  data's), applied only where both classes are the task's;
- the configuration a run records (`model`, `data` and, for a user's class, `model_init_args`
  / `data_init_args`: the init arguments that differ from the class's defaults, as the
  hand-written runners record what was given, `--NAME=VALUE`), and its check on resume;
- a class path that does not import, or is not the right kind of class, refused in one line
  (fourways.driving.classes.import_class) before jsonargparse reports it over many lines.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

from fourways.contract import errors
from fourways.driving import classes

TASK = {role: default for role, (default, _) in classes.ROLES.items()}
# The task's linked init arguments: (source, target) in the parsed configuration.
TASK_LINKS = (("seed_everything", "data.init_args.seed"),
              ("data.init_args.num_features", "model.init_args.num_features"))  # fmt: skip


def is_task(config: Any, role: str) -> bool:
    return config[role].class_path == TASK[role]


def check_class_paths(argv: Sequence[str]) -> None:
    """`--model PATH` / `--data PATH` on the command line: a path that does not import or names
    the wrong kind of class is refused in one line (config files are left to jsonargparse)."""
    items = list(argv)
    for index, item in enumerate(items):
        for role in classes.ROLES:
            flags = (f"--{role}", f"--{role}.class_path")
            option, equals, value = item.partition("=")
            if option not in flags:
                continue
            if not equals:
                value = items[index + 1] if index + 1 < len(items) else ""
            if looks_like_class_path(value):
                classes.import_class(role, value)


# Options under --model / --data that are not init arguments.
NOT_INIT_ARGS = ("class_path", "help")


def without_init_args(argv: Sequence[str]) -> list[str]:
    """The command line less its `--model.NAME VALUE` / `--data.NAME=VALUE` init arguments of a
    class it does not name (on resume they may be the recorded class's), and --print_config
    (which would print this parse): what chooses the classes and the checkpoint, parsed before
    the classes' defaults are known."""
    unnamed = {role for role in classes.ROLES if class_path_given(argv, role) == TASK[role]}
    kept: list[str] = []
    items = iter(argv)
    for item in items:
        option, equals, _ = item.partition("=")
        role, dot, key = option.removeprefix("--").partition(".")
        if option == "--print_config":
            continue
        if item.startswith("--") and dot and role in unnamed and key not in NOT_INIT_ARGS:
            if not equals:
                next(items, None)  # its value
            continue
        kept.append(item)
    return kept


def class_path_given(argv: Sequence[str], role: str) -> str:
    """The class `--ROLE PATH` names on the command line, else the task's."""
    items = list(argv)
    for index, item in enumerate(items):
        option, equals, value = item.partition("=")
        if option in (f"--{role}", f"--{role}.class_path"):
            value = value if equals else (items[index + 1] if index + 1 < len(items) else "")
            if looks_like_class_path(value):
                return value
    return TASK[role]


# jsonargparse names an init argument it refuses without its class: `Parser key "depth": ...`,
# `Option 'depth' is not accepted`.
INIT_ARG_ERROR = re.compile(r"""^(?:Parser key "|Option ')(\w+)["']""")


def name_init_arg(message: str, argv: Sequence[str]) -> str:
    """jsonargparse's refusal of an init argument given as `--model.NAME` / `--data.NAME`, with
    the option and the class it was given to."""
    match = INIT_ARG_ERROR.match(message)
    if match is None:
        return message
    for item in argv:
        option = item.partition("=")[0]
        for role in classes.ROLES:
            if option in (f"--{role}.{match[1]}", f"--{role}.init_args.{match[1]}"):
                cls = class_path_given(argv, role)
                if message.startswith("Option"):
                    return f"{option}: {cls} takes no init argument {match[1]!r}"
                return f"{option} ({cls}): {message}"
    return message


def looks_like_class_path(value: str) -> bool:
    """A dotted name, not a config file or an inline YAML/JSON value."""
    return (
        bool(value)
        and not value.endswith((".yaml", ".yml", ".json"))
        and all(part.isidentifier() for part in value.split("."))
    )


def signature_defaults(path: str) -> dict[str, Any]:
    """The init arguments' defaults of the class `path` names."""
    parameters = inspect.signature(load(path).__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def load(path: str) -> type:
    """The class at `path`, of either role (checked as a model or a data module by then)."""
    module_name, _, name = path.rpartition(".")
    return getattr(__import__(module_name, fromlist=[name]), name)


def given_init_args(config: Any, role: str) -> list[str]:
    """A user's class's init arguments that differ from its defaults, as `--NAME=VALUE`: what
    the run was given (a value given equal to the default trains the same). [] for the task's
    classes, whose init arguments are the task's settings, recorded under their own keys."""
    if is_task(config, role):
        return []
    defaults = signature_defaults(config[role].class_path)
    init_args = vars(config[role].init_args) if config[role].init_args else {}
    return [
        f"--{name}={value}"
        for name, value in init_args.items()
        if name not in defaults or defaults[name] != value
    ]


def recorded_init_args(role: str, recorded: dict[str, Any], task_values: dict[str, Any]) -> Any:
    """The class and init arguments a checkpoint records for `role`, as a LightningCLI default:
    the task's class with its recorded settings (`task_values`), a user's with its recorded
    `--NAME=VALUE` arguments typed by its signature (jsonargparse, as on the command line)."""
    path = recorded.get(role, TASK[role])
    if path == TASK[role]:
        return {"class_path": path, "init_args": task_values}
    cls = classes.import_class(role, path)
    typed = classes.check_init_args(role, cls, list(recorded.get(f"{role}_init_args") or []))
    return {"class_path": path, "init_args": typed}


def link_task_arguments(config: Any) -> None:
    """The task's links, where both ends exist (the task's classes). A target given otherwise
    than its source is refused: the run would silently use the source's value."""
    for source, target in TASK_LINKS:
        role = target.split(".")[0]
        ends = {role, source.split(".")[0]} & set(classes.ROLES)
        if not all(is_task(config, end) for end in ends):
            continue
        value, default = config[source], signature_defaults(TASK[role])[target.rsplit(".")[-1]]
        if config[target] not in (value, default):
            short = target.replace(".init_args.", ".")
            raise errors.UsageError(
                f"--{short} {config[target]}: the task's {role} takes it from "
                f"--{source.replace('.init_args.', '.')} ({value})"
            )
        config[target] = value


def user_init_entries(config: Any, recorded: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """For a resume check: each init argument of a user's class as (key, flag, value now,
    value recorded), the recorded value being its default where the run left it out."""
    entries = []
    for role in classes.ROLES:
        if is_task(config, role) or recorded.get(role) != config[role].class_path:
            continue
        kept = recorded_init_args(role, recorded, {})["init_args"]
        defaults = signature_defaults(config[role].class_path)
        for name, value in vars(config[role].init_args).items():
            entries.append((f"{role}.{name}", f"--{role}.{name}", value,
                            kept.get(name, defaults.get(name))))  # fmt: skip
    return entries
