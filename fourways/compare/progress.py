"""What a comparison shows while its runs go: a line per start and end, or live bars on a terminal.

execute() (processes.py) calls a display's ready/start/update/finish; the benchmark subclasses
PlainProgress to wait for a quiet machine in ready().
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fourways.compare.plans import Run


class PlainProgress:
    """One line per start and end, for logs and pipes."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.total, self.started, self.done = len(runs), 0, 0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def ready(self, run: Run) -> None:
        """Called just before a run starts (the benchmark waits here for a quiet machine)."""

    def start(self, run: Run) -> None:
        self.started += 1
        print(f"start {self.started}/{self.total}: {run.name}", file=sys.stderr, flush=True)

    def update(self, run: Run, epochs: int) -> None:
        pass

    def finish(self, run: Run) -> None:
        self.done += 1
        status = "done" if run.exit_code == 0 else f"FAILED (exit {run.exit_code})"
        line = f"done {self.done}/{self.total}: {run.name}: {status} in {run.wall_s:.1f} s"
        print(line, file=sys.stderr, flush=True)


class RichProgress(PlainProgress):
    """A live bar per run (epochs done), on a terminal."""

    def __init__(self, runs: Sequence[Run]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        super().__init__(runs)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
        )
        self.tasks = {
            id(run): self.progress.add_task(
                run.name, total=run.settings.epochs, start=False, status="waiting"
            )
            for run in runs
        }

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, run: Run) -> None:
        self.progress.start_task(self.tasks[id(run)])
        self.progress.update(self.tasks[id(run)], status="running")

    def update(self, run: Run, epochs: int) -> None:
        self.progress.update(self.tasks[id(run)], completed=epochs)

    def finish(self, run: Run) -> None:
        status = "[green]done" if run.exit_code == 0 else f"[red]failed (exit {run.exit_code})"
        self.progress.update(self.tasks[id(run)], status=status)
        self.progress.stop_task(self.tasks[id(run)])
