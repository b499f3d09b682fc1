"""What compare.py and the benchmark started ends with them: Ctrl-C, SIGTERM, an error.

Every run is started in its own session (so that a timeout can end its whole tree), which also
means that a Ctrl-C at the terminal does not reach it, and a launcher's ranks can sit in sessions
of their own (torchrun starts each worker with `start_new_session=True`, torch 2.13): killing the
run's process group does not reach them. So every process a run starts carries this invocation's
tag in its environment (inherited by launchers' children), and ending the runs means: SIGKILL each
run's process group, then every process that still carries the tag, until none is left.

Linux only: the tag is read from /proc/<pid>/environ (and the callers use wait4 and
sched_setaffinity); `require_linux` refuses elsewhere in one line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

MARKER = "COMPARE_RUN_TAG"
TAG = f"{os.getpid()}-{secrets.token_hex(4)}"  # this invocation's: set in every run's environment
INTERRUPTED = "interrupted.txt"  # left in an interrupted command's --out: it may be reused
END_WAIT_S = 10.0  # SIGKILL cannot be caught: this only bounds a process the kernel is slow to end


class Launched(Protocol):
    """A run as compare.py keeps it: its pid while it runs, its exit code once reaped."""

    pid: int | None
    exit_code: int | None
    launching: bool  # its Popen under way: the process may exist, its pid not yet kept

    @property
    def name(self) -> str: ...


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `status` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = 128 + signum


def require_linux(prog: str) -> None:
    """One line and exit status 2 where wait4, sched_setaffinity and /proc are missing."""
    if not sys.platform.startswith("linux"):
        print(
            f"error: {prog} needs Linux (it uses wait4, sched_setaffinity and /proc); this is "
            f"{sys.platform}: run the runners themselves instead",
            file=sys.stderr,
        )
        sys.exit(2)


@contextlib.contextmanager
def raised_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread (SIGTERM's default would end us
    with the runs still going); a second signal during the clean-up is ignored, not obeyed."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def tagged(tag: str = TAG) -> list[int]:
    """Live processes whose environment carries `tag` (a zombie's environment reads empty)."""
    needle = f"{MARKER}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # ended meanwhile, or another user's
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def end_all(groups: Iterable[int], tag: str = TAG) -> None:
    """SIGKILL each process group (a run's session) and every process still carrying `tag`,
    until none is left; reap the group leaders, our own children."""
    groups = list(groups)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + END_WAIT_S
    while (left := tagged(tag)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    for pid in groups:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def remove(paths: Iterable[Path]) -> None:
    """A report cut short is removed, not left half-written."""
    for path in paths:
        path.unlink(missing_ok=True)


def mark_interrupted(out: Path, line: str) -> None:
    """The folder of an interrupted command: its runs are incomplete, --out may name it again."""
    (out / INTERRUPTED).write_text(line + "\n")


def clear_interrupted(out: Path, prog: str) -> None:
    """A folder marked interrupted: its runs and logs make way for the new ones, said in a line."""
    if (out / INTERRUPTED).exists():
        for folder in (out / "runs", out / "logs"):
            shutil.rmtree(folder, ignore_errors=True)
        (out / INTERRUPTED).unlink()
        print(
            f"{prog}: {out} held an interrupted run of it: its runs are replaced", file=sys.stderr
        )


def guarded(
    prog: str,
    out: Path,
    report: tuple[str, Sequence[str]],
    runs: Sequence[Launched],
    body: Callable[[], int],
) -> int:
    """Run `body` (which starts `runs`, then writes the report's files into `out`); on SIGINT or
    SIGTERM, end every run, remove any of the report, say so in one line and return 128 + the
    signal. On any other way out, an error too, no run outlives us."""
    with raised_on_signals():
        try:
            return body()
        except Interrupted as stop:
            # A run being launched counts too: the tag sweep in end_all ends its process.
            going = [r for r in runs if r.pid is not None or r.launching]
            end_all([r.pid for r in going if r.pid is not None])
            what, files = report
            remove(out / name for name in files)
            done = sum(r.exit_code is not None for r in runs)
            names = f" ({', '.join(r.name for r in going)})" if going else ""
            line = (
                f"{prog}: interrupted by {stop}: ended {len(going)} run(s) in progress{names}; "
                f"{done} of {len(runs)} finished; no {what} written"
            )
            mark_interrupted(out, line)
            print(line, file=sys.stderr)
            return stop.status
        finally:
            end_all([r.pid for r in runs if r.pid is not None])
