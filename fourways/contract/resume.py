"""Resume checks: a run's configuration is settled against its checkpoint (what was given, else
the checkpoint's, else the defaults; a contradiction is refused in one line), and a resume
reports where it stands.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fourways import settings
from fourways.contract.errors import UsageError

# On resume, these may differ from the checkpoint: train on to more epochs, checkpoint more or
# less often (settings.Settings says which). Everything else (data, model, optimizer, batch
# split, precision, processes) would make another run.
MAY_CHANGE_ON_RESUME = frozenset(o.key for o in settings.OPTIONS if o.may_change_on_resume)


@dataclass(frozen=True)
class Given:
    """One entry of the run's configuration, as the user spells it in this runner."""

    key: str  # its name in checkpoints and metrics.json
    option: str  # its name on this runner's command line
    given: Any  # None when left out
    default: Any  # taken when left out of a new run


def settle_config(given: Iterable[Given], recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The run's configuration: what was given, else the checkpoint's (on resume), else defaults.

    On resume an option that contradicts the checkpoint is refused, naming both values.
    """
    config = {}
    for setting in given:
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


def given_options(args: argparse.Namespace, keys: Collection[str]) -> list[Given]:
    """The task's options of the hand-written runners (`arguments.task_parser`), as given."""
    options = [o for o in settings.OPTIONS if o.key in keys]
    return [Given(o.key, o.flag, getattr(args, o.dest), o.default) for o in options]


def settle_args(
    args: argparse.Namespace,
    checkpoint: dict[str, Any] | None,
    *fixed: Given,
    keys: Collection[str] = frozenset(settings.BY_KEY),
) -> dict[str, Any]:
    """The hand-written runners' configuration: the task's options among `keys` (written back
    into `args`; a user's class takes none of its role's) and the runner's own `fixed` ones
    (precision, processes, the classes), settled against the configuration the checkpoint
    records; and on resume, no fewer epochs than it has trained into."""
    recorded = None if checkpoint is None else checkpoint.get("config", {})
    config = settle_config([*given_options(args, keys), *fixed], recorded)
    for option in settings.OPTIONS:
        if option.key in keys:
            setattr(args, option.dest, config[option.key])
    if checkpoint is not None:
        check_epochs_left(args.epochs, epochs_reached(checkpoint))
    return config


def resume_line(path: Path, state: dict[str, Any]) -> str:
    return (
        f"resumed from {path}: epoch {state['epoch'] + 1}, batch {state['batch']}, "
        f"optimizer step {state['steps']}"
    )
