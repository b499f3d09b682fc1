"""What a full runner prints: one line per epoch, and a progress bar only where a person watches."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def epoch_line(epoch: int, metrics: dict[str, float]) -> str:
    """The epoch's metrics (train loss first, then what the module logged), not its timing."""
    shown = {"train_loss": metrics["train_loss"], **metrics}
    values = "  ".join(f"{name} {value:.4f}" for name, value in shown.items() if name != "epoch_s")
    return f"epoch {epoch}  {values}"


def on_terminal() -> bool:
    """The console rule of all four runners: a progress bar only when a person watches (stdout
    and stderr both terminals); in a log or a pipe the epoch lines alone, nothing redrawn."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress(iterable: Iterable[T], enabled: bool, desc: str) -> Iterable[T]:
    """A tqdm bar on rank 0 on a terminal; otherwise the loader itself, unwrapped."""
    if not (enabled and on_terminal()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False)
