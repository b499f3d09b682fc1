"""Starting the runs and collecting them: a small scheduler over subprocesses.

Each run is started in a session of its own (a timeout ends its whole process tree), its stdout
and stderr go to its log folder, and wait4 gives its exit status and the peak memory of its
largest process. Single-process runs may share the machine (--jobs 2); a multi-process run runs
alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fourways.compare.commands import child_env, command
from fourways.compare.plans import MINIMAL, Run
from fourways.compare.progress import PlainProgress, RichProgress

if TYPE_CHECKING:
    import resource  # Unix only: main() refuses elsewhere before anything needs it

# A runner prints one line per epoch: the progress display counts them in its stdout.log.
EPOCH_LINE = re.compile(r"^epoch (\d+) ", re.MULTILINE)


def execute(
    runs: Sequence[Run],
    jobs: int = 1,
    timeout: float = 600.0,
    display: PlainProgress | None = None,
) -> None:
    """Run everything in order; `jobs` single-process runs at a time, a multi-process run alone."""
    display = display or (RichProgress if sys.stderr.isatty() else PlainProgress)(runs)
    pending, active = list(runs), {}
    with display:
        while pending or active:
            while pending and can_start(pending[0], list(active.values()), jobs):
                run = pending.pop(0)
                display.ready(run)
                active[launch(run).pid] = run
                display.start(run)
            time.sleep(0.05)
            for pid, run in list(active.items()):
                if reap(pid, run, timeout):
                    del active[pid]
                    display.finish(run)
                else:
                    text = (run.log_dir / "stdout.log").read_text(errors="replace")
                    display.update(run, len(EPOCH_LINE.findall(text)))


def can_start(run: Run, active: list[Run], jobs: int) -> bool:
    """Whether `run` may start beside the active ones: a multi-process run runs alone."""
    if not active:
        return True
    alone = run.mode.processes > 1 or any(a.mode.processes > 1 for a in active)
    return not alone and len(active) < jobs


def launch(run: Run) -> subprocess.Popen:
    """Start a run's command from its checkout, its output to its logs; the process."""
    (run.log_dir / "steps").mkdir(parents=True, exist_ok=True)
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    if run.runner in MINIMAL:  # --save names a file: its folder must exist
        run.run_dir.mkdir(exist_ok=True)
    run.argv, extra_env = command(run)
    with (
        open(run.log_dir / "stdout.log", "w") as out,
        open(run.log_dir / "stderr.log", "w") as err,
    ):
        run.started = time.perf_counter()
        run.launching = True  # until its pid is kept: a signal may arrive inside Popen
        # Its own session, so that a timeout can end the whole process tree that we started.
        process = subprocess.Popen(
            run.argv,
            cwd=run.checkout,
            env=child_env(run, extra_env | run.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    run.pid, run.launching = process.pid, False
    return process


def reap(pid: int, run: Run, timeout: float) -> bool:
    """Collect a finished run with its peak memory (wait4); end it if past its time."""
    assert run.started is not None
    if time.perf_counter() - run.started > timeout:
        os.killpg(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        with open(run.log_dir / "stderr.log", "a") as err:
            print(f"compare.py: ended after the {timeout:.0f} s timeout", file=err)
    else:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == 0:
            return False
    ended(run, status, usage)
    return True


def ended(run: Run, status: int, usage: resource.struct_rusage) -> None:
    """What a reaped run's wait4 said: its exit status, time and peak memory."""
    assert run.started is not None
    run.wall_s = time.perf_counter() - run.started
    run.exit_code = os.waitstatus_to_exitcode(status)
    # ru_maxrss of a reaped child covers its reaped descendants: the largest single process.
    run.max_rss_kib = usage.ru_maxrss
    run.pid = None
