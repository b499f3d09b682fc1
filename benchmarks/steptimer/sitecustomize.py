"""compare.py's step timer: Python loads it at start-up when this folder is on PYTHONPATH.

It does nothing unless COMPARE_STEP_LOG names a folder. Then, in every Python process of a run
(launchers and ranks alike), it records the time of every optimizer step through torch's global
step hook, so that no runner has to be edited or re-launched differently, and writes those times,
the process's peak RSS and its torch thread count to COMPARE_STEP_LOG/<pid>.json when it exits.
Its cost is one `perf_counter()` and one list append per step, the same for every runner.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import importlib.util
import json
import os
import resource
import sys
import time


def _install(folder: str) -> None:
    # The runners import torch anyway; this only moves the import to the start of the process.
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps: list[float] = []
    threads: list[int] = []

    def on_step(optimizer: object, args: object, kwargs: object) -> None:
        steps.append(time.perf_counter())  # CLOCK_MONOTONIC on Linux: comparable across processes
        if not threads:
            threads.append(torch.get_num_threads())

    register_optimizer_step_post_hook(on_step)

    def write() -> None:
        record = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "argv": sys.argv,
            "rank": os.environ.get("RANK", os.environ.get("LOCAL_RANK")),
            "threads": threads[0] if threads else None,
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "step_times": steps,
        }
        path = os.path.join(folder, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)

    atexit.register(write)


def _chain() -> None:
    """Run the sitecustomize this one shadows, if the environment has one."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get("COMPARE_STEP_LOG"):
    _install(os.environ["COMPARE_STEP_LOG"])
_chain()
