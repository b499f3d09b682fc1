"""Bad input, as the contract says it: one line on stderr, exit status 2, before any training.

A runner raises `UsageError` where it finds the problem; `run_main` turns it into the line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2, before any training."""


def rank() -> int:
    """This process's global rank, from the launcher's environment (0 when there is none)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2. Under several processes only rank 0 speaks."""
    if rank() == 0:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option as the contract's one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def run_main(main: Callable[[], None]) -> None:
    """Entry-point guard: a UsageError becomes the contract's one line and exit status 2."""
    try:
        main()
    except UsageError as err:
        fail(str(err))
