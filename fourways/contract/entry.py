"""How a full runner's `main` begins and ends: bad input becomes the one line and exit status 2;
a multi-process run leaves without tearing its process group down (the reason is below).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from fourways.contract.errors import UsageError, fail


def run_main(main: Callable[[], None]) -> None:
    """Entry-point guard: a UsageError becomes the contract's one line and exit status 2."""
    try:
        main()
    except UsageError as err:
        fail(str(err))


def end_distributed_run(distributed: bool) -> None:
    """Leave a multi-process run without tearing its process group down (call on every rank).

    gloo's process group, when destroyed, joins its worker threads while holding the GIL, and a
    worker that still has to release a tensor created in Python waits for the GIL: the process
    hangs at exit (seen in about 1 run in 20 with two CPU processes, torch 2.13, in plain,
    Accelerate and the launchers above them). Every rank has passed a barrier and rank 0 has
    written its files, so nothing is lost by skipping the destructors.
    """
    if distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
