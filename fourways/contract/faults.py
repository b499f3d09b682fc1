"""Fault points for the resume tests: `TASK_FAULT=<point>:<count>` kills rank 0 there, as a
`kill -9` from outside would. Unset (every real run), each point costs one comparison.
"""

from __future__ import annotations

import os
import signal

from fourways.contract.errors import rank

# Read once: the check runs every step, and an environment lookup costs more than a comparison.
FAULT = os.environ.get("TASK_FAULT")


def inject_fault(point: str, count: int) -> None:
    """Fault injection for the resume tests: TASK_FAULT=<point>:<count> kills rank 0 there.

    SIGKILL, as `kill -9` from outside would: no cleanup, no atexit, no flushed buffers.
    """
    if FAULT is not None and f"{point}:{count}" == FAULT and rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
