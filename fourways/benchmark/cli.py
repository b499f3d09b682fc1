"""The benchmark's command line: its options, the runs in order, then results.json and results.md.

benchmarks/overhead.py is the command; it passes in the checkout's root (where the runners are
and reports/ goes), which this package does not work out from its own place: installed, it sits
in site-packages.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fourways import interrupts, settings
from fourways.benchmark import plots, sections, yours
from fourways.benchmark.plans import SECTIONS, BenchRun, plan
from fourways.benchmark.progress import MAX_WAIT_S, QUIET, Progress
from fourways.benchmark.results import Results, record
from fourways.benchmark.slicing import execute_pair
from fourways.compare import processes, steplogs
from fourways.compare.report import machine as machine_facts
from fourways.compare.report import shown
from fourways.contract import errors

SCRIPT = "benchmarks/overhead.py"  # the command, as its messages and results.json name it
RESULT_FILES = ("results.json", "results.md", *(f"{s}.png" for s in SECTIONS))


def parse_args(argv: Sequence[str] | None, root: Path) -> argparse.Namespace:
    """The options; --out defaults to reports/benchmark-<timestamp> under `root`."""
    parser = errors.ArgumentParser(description="Measure the cost each framework adds per step.")
    yours.add_arguments(parser)
    argv, classes = yours.split_classes(sys.argv[1:] if argv is None else argv)
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--repeats",
        type=settings.positive_int,
        help="headline repeats (default 6; quick 3: too few for a verdict)",
    )
    parser.add_argument("--sweep-repeats", type=settings.positive_int, help="other sections (2)")
    parser.add_argument("--timeout", type=settings.positive_float, default=600, help="s per run")
    parser.add_argument(
        "--max-wait", type=float, default=MAX_WAIT_S, help="s to wait for a quiet machine per run"
    )
    parser.add_argument("--out", type=Path, help="default: reports/benchmark-<timestamp>")
    args = parser.parse_args(argv)
    args.yours = yours.settle(args, classes)
    if args.out is not None and (args.out / "results.json").exists():
        parser.error(f"{args.out} already holds results; choose another --out")
    if (
        args.out
        and (args.out / "runs").exists()
        and not (args.out / interrupts.INTERRUPTED).exists()
    ):
        parser.error(f"{args.out} holds the runs of another benchmark; choose another --out")
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = root / "reports" / f"benchmark-{stamp}"
    return args


def main(argv: Sequence[str] | None, root: Path) -> int:
    """The benchmark, run from the checkout at `root`; its exit status (128 + the signal when
    interrupted)."""
    interrupts.require_linux(SCRIPT)
    args = parse_args(argv, root)
    headline = args.repeats or (3 if args.quick else 6)
    sweep = args.sweep_repeats or (1 if args.quick else 2)
    repeats = {"headline": headline, "width": sweep, "samples": sweep, "ddp": sweep, "profile": 1}
    out = args.out.resolve()
    interrupts.clear_interrupted(out, SCRIPT)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(args.sections, repeats, args.quick, out, root, args.yours)
    return interrupts.guarded(
        SCRIPT, out, ("results", RESULT_FILES), runs,
        lambda: benchmark(args, argv, repeats, runs, out, root),
    )  # fmt: skip


def benchmark(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    repeats: dict[str, int],
    runs: list[BenchRun],
    out: Path,
    root: Path,
) -> int:
    """Every run, then the report; the exit status."""
    started, machine = time.perf_counter(), machine_facts(root)
    paired = [r for r in runs if r.pair]
    for first in range(0, len(paired), 2):
        pair = paired[first : first + 2]
        print(f"headline repeat {pair[0].repeat + 1}: {pair[0].pair}", file=sys.stderr)
        execute_pair(pair, args.timeout)
    rest = [r for r in runs if r.point.section != "headline"]
    processes.execute(rest, timeout=args.timeout, display=Progress(rest, args.max_wait))
    for run in runs:
        steplogs.collect(run)
    res = Results([record(r, root) for r in runs])
    machine["load_average_after"] = machine_facts(root)["load_average"]
    text = report(res, args, machine, time.perf_counter() - started, out)
    results = {
        "command": shown(["python", SCRIPT, *(argv or sys.argv[1:])]),
        "machine": machine,
        "repeats": repeats,
        "records": res.records,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(text)
    print(text)
    print(f"Results: {out}/results.md")
    failed = [r for r in runs if not r.ok]
    for run in failed:
        print(f"FAILED: {run.name} at {run.point.key}: see {run.log_dir}", file=sys.stderr)
    return 1 if failed else 0


def busy_starts(res: Results) -> str:
    """How many of the runs that waited for a quiet machine (all but the headline's) did not
    get one."""
    waited = [r for r in res.records if r["section"] != "headline"]
    return f"{sum((r['busy_before'] or 0) > QUIET for r in waited)} of {len(waited)}"


def report(
    res: Results, args: argparse.Namespace, machine: dict[str, Any], elapsed: float, out: Path
) -> str:
    """results.md: the machine and the method, then each section asked for, with its plot
    (written into `out`)."""
    import matplotlib

    matplotlib.use("Agg")
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    text = [
        "# Framework overhead benchmark",
        "",
        f"{machine['cpu']} × {machine['cpu_count']}, {machine['platform']}, Python "
        f"{machine['python']}, {versions}; commit {machine['commit']}; 1 thread per process "
        f"unless said; load average before {machine['load_average'][0]:.1f}, after "
        f"{machine['load_average_after'][0]:.1f}; {elapsed / 60:.1f} min.",
        "",
        "Outside the headline (whose method it states itself): µs/step is the median over the "
        "steady-state steps of a run (first epoch excluded), then the median over repeats "
        "(min–max in brackets); ratios are paired, each repeat's run against plain PyTorch's run "
        "of the same repeat; each run waited for the machine to be quiet (other work under "
        f"{QUIET:.0%} of the CPUs) for up to {args.max_wait:.0f} s; {busy_starts(res)} "
        "runs started on a busier machine.",
    ]
    asked = set(args.sections)
    if "headline" in asked and args.yours is not None:
        text += ["", "## A user's model: what each framework adds, what this project adds", ""]
        text += [yours.headline_section(res, args.yours)]
    elif "headline" in asked:
        body, verdicts = sections.headline_section(res, args.quick)
        plots.plot_headline(res, out / "headline.png")
        text += ["", "## What each framework costs, and what this project adds", ""]
        text += [sections.HEADLINE_TEXT, "", body, "", *[f"- {v}" for v in verdicts]]
        text += ["", "![the paired ratios and their intervals](headline.png)"]
    if "width" in asked:
        body, verdicts = sections.width_section(res)
        plots.plot_width(res, out / "width.png")
        text += ["", "## Model width (1000 samples, 3 epochs)", "", body, ""]
        text += [*[f"- {v}" for v in verdicts], "", "![width sweep](width.png)"]
    if "samples" in asked:
        plots.plot_samples(res, out / "samples.png")
        text += ["", "## Data set size (width 32, 2 epochs): whole command, start-up included"]
        text += ["", sections.samples_section(res), "", "![samples sweep](samples.png)"]
    if "ddp" in asked:
        plain, every = sections.ddp_section(res)
        plots.plot_ddp(res, out / "ddp.png")
        text += ["", "## 1 process against 2 (plain PyTorch, 1000 samples, 3 epochs)", "", plain]
        text += ["", "![ddp](ddp.png)"]
        if every:
            text += ["", "Every runner with 2 processes, default width:", "", every]
    if "profile" in asked and (body := sections.profile_section(res)):
        plots.plot_profile(res, out / "profile.png")
        text += ["", "## Where a step's time goes (sampled profile, steady state)", "", body]
        text += ["", "![profile](profile.png)"]
    return "\n".join(text) + "\n"
