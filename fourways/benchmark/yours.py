"""The benchmark on a user's model (benchmarks/overhead.py --model PATH --model.NAME VALUE ...):
its options, and its headline section.

The task's split (each framework's minimal loop against minimal plain PyTorch; each full runner
against its framework's minimal loop) needs minimal loops, and minimal/ trains only the task's
MLP. For a user's model the split is taken between runs that all train it: each full framework
runner against the full plain runner (what the framework adds for this model), and the full
plain runner against the bare loop (benchmarks/bare_loop.py: what driving a LightningModule with
this project's hooks, log capture, validation, checkpoints and run records adds). The pairing,
the slices and the intervals are the task's (slicing.py, intervals.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from fourways import settings
from fourways.benchmark.plans import BARE, YOURS_PAIRS, Yours
from fourways.benchmark.results import Results
from fourways.benchmark.sections import method_line, table
from fourways.benchmark.slicing import MIN_CYCLES, SLICE_S
from fourways.contract import errors

NAMES = {"torch": "plain PyTorch", "fabric": "Fabric", "accelerate": "Accelerate",
         "lightning": "Trainer", BARE: "bare loop"}  # fmt: skip
DEFAULT_SIZE = {"num_samples": 10000, "epochs": 3}


def split_classes(argv: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """The command line without the user's classes, and those as every run is told them:
    `--model PATH`, `--data PATH` and their init arguments as `--ROLE.NAME=VALUE`."""
    from fourways.driving import classes  # lightning: imported only for a user's model

    rest, init = classes.split_argv(list(argv))
    flags, kept, items = [], [], iter(rest)
    for item in items:
        role, equals, value = item.partition("=")
        if role in ("--model", "--data"):
            flags += [role, value if equals else next(items, "")]
        else:
            kept.append(item)
    for role, given in init.items():
        flags += [f"--{role}.{arg.removeprefix('--')}" for arg in given]
    return kept, tuple(flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "a user's model (--model PATH --model.NAME VALUE, --data PATH --data.NAME VALUE)"
    )
    samples, epochs = DEFAULT_SIZE["num_samples"], DEFAULT_SIZE["epochs"]
    group.add_argument(
        "--num-samples", type=settings.positive_int, help=f"the task's data (default {samples})"
    )
    group.add_argument(
        "--epochs", type=settings.positive_int, help=f"the first warms up (default {epochs})"
    )
    group.add_argument(
        "--slice-s", type=settings.positive_float, help=f"time slice, s (default {SLICE_S})"
    )


def settle(args: argparse.Namespace, flags: tuple[str, ...]) -> Yours | None:
    """The user's model to measure, checked (one line if it does not import or fit), or None
    for the task; its options refused without it."""
    own = [f"--{k.replace('_', '-')}" for k in ("num_samples", "epochs", "slice_s")
           if getattr(args, k) is not None]  # fmt: skip
    if not flags:
        if own:
            raise errors.UsageError(f"{own[0]} sizes a user's model's run: give --model too")
        return None
    if set(args.sections) != {"headline"}:
        raise errors.UsageError("a user's model is measured in the headline: --sections headline")
    if "--data" in flags and args.num_samples is not None:
        raise errors.UsageError("--num-samples sizes the task's data; give --data.NAME VALUE")
    yours = Yours(
        flags,
        num_samples=args.num_samples or DEFAULT_SIZE["num_samples"],
        epochs=args.epochs or DEFAULT_SIZE["epochs"],
        slice_s=args.slice_s,
    )
    if yours.epochs < 2:
        raise errors.UsageError("--epochs 2 or more: the first warms up, the rest are timed")
    return dataclasses.replace(yours, epoch_steps=count_steps(flags))


def count_steps(flags: tuple[str, ...]) -> int:
    """The classes checked as the runners check them (one line if they do not import or fit);
    a user's DataModule built as the runners build it, for its optimizer steps per epoch on one
    process (a run pauses at its second epoch); 0 for the task's data."""
    from fourways.driving import classes

    rest, init = classes.split_argv(list(flags))
    paths = dict(zip(rest[::2], rest[1::2], strict=True))  # --model PATH, --data PATH
    _, data = (
        classes.choose(role, paths.get(f"--{role}", default), init[role], [])
        for role, (default, _) in classes.ROLES.items()
    )
    if data.is_task:
        return 0
    module = classes.build(data, argparse.Namespace())
    module.setup("fit")
    classes.split_global_batch(module, 1, 1)
    return len(module.train_dataloader())


def headline_section(res: Results, yours: Yours) -> str:
    """The split for a user's model: each framework's full runner against the full plain runner,
    and the full plain runner against the bare loop; µs/step for scale."""
    header = ("runner", "µs/step", "against", "ratio [interval]", "n, left out")
    rows, stats = [], []
    for subject, reference in YOURS_PAIRS:
        ratio = res.paired(subject, reference)
        step = res.stat(yours.point(subject), "step_us")
        rows.append(
            [
                NAMES[subject],
                f"{step['median']:.0f}" if step else "–",
                NAMES[reference],
                ci(ratio),
                f"{ratio['n']}, {ratio['left_out']}" if ratio else "–",
            ]
        )
        stats += [ratio] if ratio else []
    bare = res.stat(yours.point(BARE), "step_us")
    rows.append([NAMES[BARE], f"{bare['median']:.0f}" if bare else "–", "–", "–", "–"])
    text = [
        f"Model: `{' '.join(yours.flags)}`; {yours.num_samples} samples (the task's data) "
        f"or the user's DataModule, {yours.epochs} epochs, the first one warm-up; time slices "
        f"of {yours.slice_s or SLICE_S} s; a repeat's ratio needs {MIN_CYCLES} compared slices.",
        "",
        table(header, rows),
        "",
        method_line(stats),
        "Framework rows: the full runner ÷ the full plain runner (what the framework adds for "
        "this model). Plain PyTorch's row: the full plain runner ÷ the bare loop (what the "
        "project's driving and bookkeeping add).",
    ]
    return "\n".join(text)


def ci(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "–"
    return f"{stat['median']:.3f} [{stat['low']:.3f}–{stat['high']:.3f}]"
