"""The sweeps' runs (every section but the headline): a quiet machine before each, one bar.

Other work on the machine would be timed as the runner's, so each run waits until other work
uses under QUIET of the CPUs, for up to --max-wait seconds, and records how busy the machine was
when it started (the report counts the runs that started on a busier one). On a terminal, one
overall bar (a bar per run would be hundreds); plain lines otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fourways.compare import plans as compare_plans
from fourways.compare.progress import PlainProgress

QUIET = 0.15  # a run starts once other work uses under 15 % of the CPUs ...
MAX_WAIT_S = 120.0  # ... or after this long (--max-wait), marked as started on a busy machine


def cpu_busy(seconds: float = 0.5) -> float:
    """The share of all CPUs busy over `seconds` (Linux /proc/stat); 0 where unknown."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


class Progress(PlainProgress):
    """One overall bar on a terminal (a bar per run would be hundreds); plain lines otherwise."""

    def __init__(self, runs: Sequence[compare_plans.Run], max_wait: float = MAX_WAIT_S) -> None:
        super().__init__(runs)
        self.bar, self.max_wait = None, max_wait
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
            from rich.progress import TextColumn as Text

            self.bar = Progress(
                Text("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("benchmark", total=len(runs))

    def __enter__(self) -> Progress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def ready(self, run: compare_plans.Run) -> None:
        """Wait for a quiet machine: others' work would be timed as the runner's."""
        deadline = time.monotonic() + self.max_wait
        while (busy := cpu_busy()) > QUIET and time.monotonic() < deadline:
            time.sleep(1)
        run.busy_before = busy

    def start(self, run: compare_plans.Run) -> None:
        if self.bar:
            self.bar.update(self.task, description=f"{run.point.key} {run.runner}")
        else:
            super().start(run)

    def finish(self, run: compare_plans.Run) -> None:
        if self.bar:
            self.bar.advance(self.task)
            if run.exit_code != 0:
                self.bar.console.print(f"[red]{run.name} failed (exit {run.exit_code})")
        else:
            super().finish(run)
