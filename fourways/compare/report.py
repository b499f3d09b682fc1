"""The comparison's report: a table row per run, report.md, report.json, and the console's table.

report.md and report.json go in the report folder with the plots (plots.py); the console gets one
table per mode that fits 100 columns, then the verdict's lines (checks.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fourways.compare.checks import fmt_diff, verdict
from fourways.compare.plans import Mode, Run
from fourways.compare.plots import plot_curves, plot_step_times
from fourways.compare.steplogs import epoch_step_s
from fourways.contract import records

# What write_report leaves in the report folder (an interrupted comparison writes none of them).
REPORT_FILES = ("report.json", "report.md", "curves.png", "step_time.png")
# One row per run in report.md; the console shows CONSOLE_COLUMNS of them.
COLUMNS = (
    "runner", "mode", "world size", "precision", "train loss", "val loss", "val acc",
    "max |Δw| vs torch", "Δw vs replay", "agrees", "total s", "train s", "step µs",
    "step p25–p75 µs", "start-up s", "peak RSS MiB", "state MiB/process",
)  # fmt: skip
# The console's table, one per mode, fits 100 columns; report.md and report.json hold the rest.
CONSOLE_COLUMNS = (
    "runner", "val loss", "val acc", "max |Δw| vs torch", "Δw vs replay", "agrees", "step µs",
    "total s",
)  # fmt: skip


def row(run: Run) -> dict[str, str]:
    """A run's cells, one per column of COLUMNS: "–" where it has nothing to say."""
    flag = " *" if run.extra_args else ""  # extra arguments: not the same task as the others
    cells = dict.fromkeys(COLUMNS, "–")
    cells |= {"runner": run.runner + flag, "mode": run.mode.label}
    if run.refused_as_expected:
        return cells | {"agrees": "refused"}
    if not run.ok:
        return cells | {"agrees": f"FAILED (exit {run.exit_code})"}
    m, last = run.metrics, run.metrics["epochs"][-1]
    agrees = {None: "–", True: "yes", False: "NO"}[run.agrees]
    cells |= {
        "world size": str(m["world_size"]),
        "precision": m["precision"],
        "train loss": f"{last['train_loss']:.4f}",
        "val loss": f"{last['val_loss']:.4f}",
        "val acc": f"{last['val_acc']:.4f}",
        "max |Δw| vs torch": fmt_diff(run.max_weight_diff),
        "Δw vs replay": fmt_diff(run.reference_diff),
        "agrees": agrees,
        "total s": f"{run.wall_s:.1f}",
        "train s": f"{m['wall_clock_s']:.2f}",
        "peak RSS MiB": f"{run.max_rss_kib / 1024:.0f}",
    }
    if (held := m.get("state_bytes_per_process")) is not None:
        cells["state MiB/process"] = f"{held / 2**20:.2f}"
    if run.steps:
        cells["start-up s"] = f"{run.steps['startup_s']:.1f}"
        if (q := run.steps["steady_step_s"]) is not None:
            cells["step µs"] = f"{q['median'] * 1e6:.0f}"
            cells["step p25–p75 µs"] = f"{q['p25'] * 1e6:.0f}–{q['p75'] * 1e6:.0f}"
    return cells


def markdown_table(rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    """A Markdown table: a header of `columns`, then one line per row."""

    def cells(values: Iterable[str]) -> str:  # a pipe inside a cell would end it: escaped
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    lines = [cells(columns), "|" + "---|" * len(columns)]
    return "\n".join(lines + [cells(r[c] for c in columns) for r in rows])


def machine(checkout: Path) -> dict[str, Any]:
    """Where the runs ran: CPU, load, versions, and the checkout's commit."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and (m := re.search(r"model name\s*:\s*(.*)", cpuinfo.read_text())):
        cpu = m.group(1)
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),  # others' work on the machine makes timings noisy
        "python": platform.python_version(),
        "versions": records.framework_versions(),
        "commit": git_commit(checkout),
    }


def git_commit(checkout: Path) -> str | None:
    """The runners' commit, marked "+changes" when the working tree differs from it."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
        if result.returncode:
            raise OSError(result.stderr)
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return None
    return commit + (" +changes" if dirty else "")


def shown(argv: Sequence[str]) -> str:
    """A command as a user would type it: `python`, not this interpreter's full path."""
    return shlex.join(["python" if a == sys.executable else a for a in argv])


def run_json(run: Run) -> dict[str, Any]:
    """Everything known about a run, as report.json lists it."""
    steps = dict(run.steps or {})
    intervals = steps.pop("intervals_s", [])
    return {
        "runner": run.runner,
        "mode": dataclasses.asdict(run.mode) | {"label": run.mode.label},
        "command": shown(run.argv),
        "extra_args": list(run.extra_args),
        "run_dir": str(run.run_dir),
        "log_dir": str(run.log_dir),
        "exit_code": run.exit_code,
        "total_s": run.wall_s,
        "peak_rss_mib": run.max_rss_kib / 1024 if run.max_rss_kib else None,
        "max_weight_diff": run.max_weight_diff,
        "reference_diff": run.reference_diff,
        "fp32_diff": run.fp32_diff,
        "float64_gap": run.float64_gap,
        "where": run.where,
        "problems": run.problems,
        "agrees": run.agrees,
        "epoch_based_step_s": epoch_step_s(run.metrics) if run.metrics else None,
        "steady_step_intervals_s": intervals,
        **steps,
        "metrics": run.metrics,
    }


def write_report(
    out: Path,
    runs: Sequence[Run],
    config: dict[str, Any],
    lines: list[str],
    checkout: Path,
    agree: bool | None = None,
) -> None:
    """The report folder's files (REPORT_FILES): the plots, report.json and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    plot_curves(runs, out / "curves.png")
    plot_step_times(runs, out / "step_time.png")
    if agree is None:
        agree, _ = verdict(runs)
    report = {
        "config": config,
        "machine": machine(checkout),
        "agree": agree,
        "verdict": lines,
        "runs": [run_json(r) for r in runs],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown_report(report, runs))


def markdown_report(report: dict[str, Any], runs: Sequence[Run]) -> str:
    """report.md: the machine, the command, the table, the verdict, the plots, each command."""
    m, c = report["machine"], report["config"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    text = [
        "# compare.py report",
        "",
        f"{c['date']} · {m['cpu']} × {m['cpu_count']} · {m['platform']} · Python {m['python']}",
        f"· {versions} · {c['threads']} thread(s) per process",
        "",
        f"Command: `{c['command']}`",
        "",
        markdown_table([row(r) for r in runs]),
        "",
        *[f"- {line}" for line in report["verdict"]],
        "",
        "Step time: interval between optimizer steps of rank 0, first epoch excluded, never across "
        "an epoch's end; median and p25–p75. Start-up: command start to the end of the first step. "
        "Peak RSS: the largest single process of the run (for several processes, not the sum; "
        "report.json lists each process). Total s: the whole command; train s: the runner's "
        "training loop (metrics.json).",
        "",
    ]
    if extras := [r for r in runs if r.extra_args]:
        text += ["\\* extra arguments, so not the same task as the others:", ""]
        text += [f"- {r.name}: `{shlex.join(r.extra_args)}`" for r in extras] + [""]
    text += ["![loss and accuracy per epoch](curves.png)", "", "![time per step](step_time.png)"]
    text += ["", "Commands (run from the repository root):", ""]
    text += [f"- {r.name}: `{shown(r.argv)}`" for r in runs]
    return "\n".join(text) + "\n"


def print_table(runs: Sequence[Run], lines: list[str]) -> None:
    """One table per mode on the console (rich's on a terminal), then the verdict's lines."""
    by_mode: dict[Mode, list[dict[str, str]]] = {}
    for run in runs:
        by_mode.setdefault(run.mode, []).append(row(run))
    for mode, rows in by_mode.items():
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            table = Table(*CONSOLE_COLUMNS, title=mode.label, header_style="bold")
            for r in rows:
                style = "red" if r["agrees"] not in ("yes", "–") else None
                table.add_row(*(r[c] for c in CONSOLE_COLUMNS), style=style)
            Console().print(table)
            continue
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in CONSOLE_COLUMNS}
        print(f"{mode.label}:")
        print("  ".join(c.ljust(widths[c]) for c in CONSOLE_COLUMNS).rstrip())
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in CONSOLE_COLUMNS).rstrip())
    print("\n".join(lines))
