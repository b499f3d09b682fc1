"""Run directories: a new run gets `runs/<runner>/version_N`; an earlier run's files are never
overwritten (a finished run is kept, an unfinished one continues only with --resume).
"""

from __future__ import annotations

import re
from pathlib import Path

from fourways.contract.errors import UsageError


def next_run_dir(root: str | Path, runner: str) -> Path:
    """`root/runner/version_N` with N one past the highest there: runs never collide."""
    parent = Path(root) / runner
    versions = [
        int(m.group(1))
        for p in (parent.iterdir() if parent.is_dir() else [])
        if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    return parent / f"version_{max(versions, default=-1) + 1}"


def resolve_run_dir(run_dir: Path | None, runner: str, resume: bool) -> Path:
    """The run directory: a new `runs/<runner>/version_N`, or the one given, never overwritten."""
    if run_dir is None:
        if resume:
            raise UsageError("--resume continues the run in --run-dir: name that directory")
        return next_run_dir("runs", runner)
    check_run_dir(run_dir, resume)
    return run_dir


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """An earlier run's files are never overwritten: finished runs stay, others need --resume."""
    if (run_dir / "model.pt").exists():  # its outputs are the record of that run: kept
        raise UsageError(
            f"{run_dir} already holds a finished run (model.pt); choose another run directory "
            "(to train it on further, copy its checkpoints/ into a new one and resume there)"
        )
    if not resume and (run_dir / "checkpoints").exists():
        raise UsageError(
            f"{run_dir} holds an unfinished run; add --resume to continue it, "
            "or choose another run directory"
        )
