"""compare.py's command line: its arguments, its report folder, the comparison from start to end.

main() runs the whole comparison under interrupts.guarded (Ctrl-C or SIGTERM ends every run it
started, and no report is written); compare() is the comparison itself, from the runs to the exit
status. The entry point (compare.py, at the checkout's top) passes the checkout it lives in: the
runners are there, never beside this package.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from fourways import interrupts, settings
from fourways.compare import your_checks, yours
from fourways.compare.checks import RULE, check_runs, verdict
from fourways.compare.plans import EXTRA_RUNNERS, RUNNERS, Run, modes, plan
from fourways.compare.processes import execute
from fourways.compare.report import REPORT_FILES, print_table, write_report
from fourways.compare.steplogs import collect
from fourways.contract import arguments, errors
from fourways.driving import classes

# Not the task's: accumulation is a mode (--accumulate 1 2 crosses the runners with each), and
# each runner checkpoints at its own default.
PER_RUN = ("accumulate", "checkpoint_every")


def parse_args(argv: Sequence[str] | None = None, *, checkout: Path) -> argparse.Namespace:
    """The comparison asked for, checked (bad input: one line on stderr, exit 2)."""
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
    accumulate = settings.BY_KEY["accumulate"]
    parser.add_argument(
        "--accumulate", nargs="+", type=accumulate.parse, default=[accumulate.default]
    )
    parser.add_argument(
        "--strategy",
        nargs="+",
        choices=("ddp", arguments.FSDP2),
        default=["ddp"],
        help="for several processes; fsdp2 shards parameters, gradients and optimizer state "
        "(torch, Fabric, the Trainer; Accelerate has none on CPUs and is shown refused)",
    )
    task_group = parser.add_argument_group("task (the same for every runner)")
    for option in settings.OPTIONS:
        if option.key not in PER_RUN:  # None: not given (yours.settle fills in the default)
            task_group.add_argument(
                option.flag, type=option.parse, default=None, help=option.help or None
            )
    classes.add_arguments(parser)  # --model, --data; their --model.NAME VALUE: split_argv
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
    try:
        rest, init = classes.split_argv(list(sys.argv[1:] if argv is None else argv))
    except errors.UsageError as err:
        parser.error(str(err))
    args = parser.parse_args(rest)
    try:
        yours.settle(args, init)
        args.extra = parse_extra_args(args.extra_args, args.runners)
        args.modes = modes(args)
        args.out = report_dir(args.out, checkout)
    except errors.UsageError as err:
        parser.error(str(err))
    args.checkout = checkout
    return args


def parse_extra_args(items: Sequence[str], runners: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """--extra-args RUNNER=ARGS, each RUNNER's ARGS split as a shell would, in order."""
    extra: dict[str, tuple[str, ...]] = {}
    for item in items:
        runner, sep, text = item.partition("=")
        if not sep or runner not in runners:
            raise errors.UsageError(
                f"--extra-args {item!r}: expected RUNNER=ARGS with RUNNER one of {runners}"
            )
        extra[runner] = extra.get(runner, ()) + tuple(shlex.split(text))
    return extra


def report_dir(out: Path | None, checkout: Path) -> Path:
    """An explicit folder must not hold a report or another comparison's runs yet (an
    interrupted one's may be replaced); the default one, under the checkout's reports/, is new
    every time."""
    if out is not None:
        if (out / "report.json").exists():
            raise errors.UsageError(f"{out} already holds a report; choose another --out")
        if (out / "runs").exists() and not (out / interrupts.INTERRUPTED).exists():
            raise errors.UsageError(
                f"{out} holds the runs of another comparison; choose another --out"
            )
        return out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, i = checkout / "reports" / stamp, 1
    while candidate.exists():
        candidate, i = checkout / "reports" / f"{stamp}-{i}", i + 1
    return candidate


def main(argv: Sequence[str] | None = None, *, checkout: Path) -> int:
    """The whole comparison, its runs ended on an interrupt; the exit status."""
    interrupts.require_linux("compare.py")
    args = parse_args(argv, checkout=checkout)
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
    if yours.yours(args):
        agree, lines = your_checks.verdict(runs, your_checks.check_your_runs(runs))
    else:
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
        "rule": your_checks.RULE if yours.yours(args) else RULE,
    }
    if yours.yours(args):
        config["model"] = dataclasses.asdict(args.model)
        config["data"] = dataclasses.asdict(args.data)
    write_report(args.out, runs, config, lines, args.checkout, agree)
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
