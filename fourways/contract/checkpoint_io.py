"""Checkpoint I/O: every write atomic (beside the file, then renamed: a kill leaves the old file
or the new, never half), every read explicit about what it accepts (tensors and plain values),
a missing, truncated or unsafe file reported in its own one line.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from fourways.contract import faults
from fourways.contract.errors import UsageError
from fourways.workarounds import torch_runtime

T = TypeVar("T")


_writes: dict[str, int] = {}  # atomic writes per file name, for inject_fault


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside `path`, then rename: a kill leaves the old file or the new, never half.

    The temporary file is created by `write` itself, so it gets the usual mode (0644 under a
    022 umask) where `mkstemp` would give 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a killed process that had this pid
    try:
        write(tmp)
        commit_write(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def commit_write(written: Path, path: Path) -> None:
    """The rename that makes a complete write visible as `path` (one point to kill at, too)."""
    _writes[path.name] = _writes.get(path.name, 0) + 1
    faults.inject_fault(f"write-{path.name}", _writes[path.name])  # a kill before the rename
    os.replace(written, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A `torch.save`d checkpoint, tensors and plain values only (`weights_only=True`, passed
    explicitly: `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` only flips torch's default)."""
    return read_checkpoint_file(
        path, lambda p: torch.load(p, map_location="cpu", weights_only=True)
    )


def read_checkpoint_file(
    path: Path, load: Callable[[Path], T], corrupt_errors: tuple[type[Exception], ...] = ()
) -> T:
    """`load(path)`, with a missing, truncated or unsafe file reported in its own one line.

    Only the loader's own failures are caught: a framework error or a bug elsewhere stays a
    traceback, and a good checkpoint is never called corrupt.
    """
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from at {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:  # torch warns before it refuses
            loaded = load(path)
    except pickle.UnpicklingError as err:
        if not torch_runtime.is_weights_only_refusal(err):
            raise corrupt_checkpoint(path, err) from None
        raise UsageError(
            f"{path} holds more than tensors and plain values (it could run code when "
            "unpickled), so it was not loaded; resume only from checkpoints this project wrote"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, *corrupt_errors) as err:
        # A truncated zip, an empty file, a damaged header, bad JSON (a ValueError).
        raise corrupt_checkpoint(path, err) from None
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def corrupt_checkpoint(path: Path, err: Exception) -> UsageError:
    reason = " ".join(str(err).split())[:120] or type(err).__name__
    return UsageError(
        f"{path} is truncated or corrupt ({reason}); resume from an intact checkpoint, "
        "or start a new run directory"
    )


def read_json(path: Path) -> Any:
    """A JSON checkpoint file: plain values by construction."""
    return json.loads(path.read_text())
