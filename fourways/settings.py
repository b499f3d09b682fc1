"""Each setting once: the options every run is told, typed, with their defaults, checks and
spellings in one place.

`Settings` is the single description. From it come the hand-written runners' options
(`--num-samples 320`: `contract.arguments`), the Trainer's (`--data.num_samples 320`:
`trainer_flags`, and the options `trainer_cli` records), the configuration recorded in every
checkpoint and guarded on resume (`contract.resume`), compare.py's plans, the parity replay's
`Setup` and the benchmark's points. The values themselves are the task's (`fourways/task.py`);
how a run is launched (processes, precision, strategy)
is each runner's own and not a setting of the task.

Adding a setting: a field here, and the task's function or class that takes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fourways import task


# ---------------------------------------------------------------------------------------------
# Checks: argparse types, each a clear reason when the text does not fit
# ---------------------------------------------------------------------------------------------
def whole_number(minimum: int, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more{why}")
        return value

    return parse


positive_int = whole_number(1)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive finite number")
    return value


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


def open_fraction(text: str) -> float:
    return fraction(text, open_interval=True)


# ---------------------------------------------------------------------------------------------
# The settings
# ---------------------------------------------------------------------------------------------
def setting(
    default: Any,
    parse: Callable[[str], Any],
    trainer: str,
    help: str = "",
    *,
    flag: str = "",
    may_change_on_resume: bool = False,
) -> Any:
    """A field of `Settings`: its default, its check, its name in the Trainer's LightningCLI
    (`trainer`), its flag in the hand-written runners (default: the field's name, dashed) and
    whether a resume may change it (everything else would make another training)."""
    meta = {"parse": parse, "trainer": trainer, "help": help, "flag": flag}
    return dataclasses.field(
        default=default, metadata={**meta, "may_change_on_resume": may_change_on_resume}
    )


@dataclass(frozen=True)
class Settings:
    """One training, as every runner is told it. The defaults are the task's."""

    seed: int = setting(task.SEED, int, "seed_everything")
    epochs: int = setting(
        task.EPOCHS, positive_int, "trainer.max_epochs", may_change_on_resume=True
    )
    global_batch_size: int = setting(
        task.GLOBAL_BATCH_SIZE, positive_int, "data.batch_size", "the GLOBAL batch size;",
        flag="--batch-size",
    )  # fmt: skip
    lr: float = setting(task.LEARNING_RATE, positive_float, "model.lr")
    accumulate: int = setting(
        1, positive_int, "trainer.accumulate_grad_batches", "micro-batches per step;"
    )
    num_samples: int = setting(task.NUM_SAMPLES, positive_int, "data.num_samples")
    num_features: int = setting(task.NUM_FEATURES, positive_int, "data.num_features")
    label_noise: float = setting(
        task.LABEL_NOISE, fraction, "data.label_noise", "fraction of labels flipped, 0 to 1;"
    )
    val_fraction: float = setting(
        task.VAL_FRACTION, open_fraction, "data.val_fraction",
        "fraction of samples held out to validate, between 0 and 1;",
    )  # fmt: skip
    hidden_dim: int = setting(task.HIDDEN_DIM, positive_int, "model.hidden_dim")
    num_classes: int = setting(
        task.NUM_CLASSES, whole_number(2, " (the labels are 0 and 1)"), "model.num_classes",
        "logits of the model (the labels are 0 and 1), 2 or more;",
    )  # fmt: skip
    # Not the training's: how often it checkpoints (the epoch's loss sum is then added up in
    # another grouping, the same up to float32 rounding). Recorded, so that a resume alone
    # keeps checkpointing as the run did.
    checkpoint_every: int | None = setting(
        None, positive_int, "checkpoint.every_n_train_steps",
        "optimizer steps (and each epoch);", may_change_on_resume=True,
    )  # fmt: skip

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


DEFAULTS = Settings()


@dataclass(frozen=True)
class Option:
    """One setting as the runners spell it."""

    key: str  # its name in Settings, checkpoints and metrics.json
    default: Any
    parse: Callable[[str], Any]
    help: str
    flag: str  # the hand-written runners': --num-samples
    trainer: str  # the Trainer's LightningCLI option, without its dashes: data.num_samples
    may_change_on_resume: bool

    @property
    def dest(self) -> str:
        """Its name in the hand-written runners' parsed arguments."""
        return self.flag.removeprefix("--").replace("-", "_")


def options() -> Iterator[Option]:
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        yield Option(
            key=f.name,
            default=f.default,
            parse=meta["parse"],
            help=meta["help"],
            flag=meta["flag"] or "--" + f.name.replace("_", "-"),
            trainer=meta["trainer"],
            may_change_on_resume=meta["may_change_on_resume"],
        )


OPTIONS = tuple(options())
BY_KEY = {option.key: option for option in OPTIONS}


def hand_written_flags(settings: Settings) -> list[str]:
    """`settings` as the hand-written runners' flags (a setting left at None is left out)."""
    return flags(settings, lambda option: option.flag)


def trainer_flags(settings: Settings) -> list[str]:
    """`settings` as the Trainer's LightningCLI flags."""
    return flags(settings, lambda option: "--" + option.trainer)


def flags(settings: Settings, spelling: Callable[[Option], str]) -> list[str]:
    pairs = ((spelling(o), getattr(settings, o.key)) for o in OPTIONS)
    return [str(x) for flag, value in pairs if value is not None for x in (flag, value)]


def from_args(args: argparse.Namespace) -> Settings:
    """The settings an argparse namespace holds (by each option's dest); the others default."""
    given = {o.key: getattr(args, o.dest) for o in OPTIONS if hasattr(args, o.dest)}
    return Settings(**{key: value for key, value in given.items() if value is not None})


def init_arguments(cls: Callable[..., Any], args: argparse.Namespace) -> dict[str, Any]:
    """`cls`'s init arguments taken from the hand-written runners' options, by name: a class
    (or function) of the task takes every argument it declares, none hand-listed here."""
    arguments = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        if hasattr(args, name):
            arguments[name] = getattr(args, name)
        elif parameter.default is not inspect.Parameter.empty:  # would be left at its default
            raise TypeError(f"{cls.__name__}({name}=...) has no field in settings.Settings")
    return arguments
