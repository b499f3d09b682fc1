"""compare.py's step timer: Python loads it at start-up when this folder is on PYTHONPATH.

It does nothing unless COMPARE_STEP_LOG names a folder. Then, in every Python process of a run
(launchers and ranks alike), it records the time of every optimizer step through torch's global
step hook, so that no runner has to be edited or re-launched differently, and writes those times,
the process's peak RSS and its torch thread count to COMPARE_STEP_LOG/<pid>.json when it exits.
Its cost is one `perf_counter()` and one list append per step, the same for every runner.

With COMPARE_PAUSE_AT=N the process stops itself (SIGSTOP) right after its N-th optimizer step:
the benchmark's barrier, so that two runs start their timed steps together
(fourways/benchmark/slicing.py).

With COMPARE_PROFILE=FIRST:LAST it also samples the main thread's Python stack every 1 ms of wall
time between optimizer steps FIRST and LAST (a statistical profile of the steady state; time spent
inside torch's C++ counts for the Python line that called it). Wall time (SIGALRM), because a
CPU-time timer fired only ~150 times a second here, too coarse for 1 ms steps. cProfile would
instrument every call and inflate exactly the Python-heavy framework code this is meant to weigh.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import importlib.util
import json
import os
import resource
import signal
import sys
import time
from types import FrameType


def _install(folder: str) -> None:
    # The runners import torch anyway; this only moves the import to the start of the process.
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps: list[float] = []
    threads: list[int] = []
    pause_at = int(os.environ.get("COMPARE_PAUSE_AT", "0"))

    def on_step(optimizer: object, args: object, kwargs: object) -> None:
        steps.append(time.perf_counter())  # CLOCK_MONOTONIC on Linux: comparable across processes
        if not threads:
            threads.append(torch.get_num_threads())
        if len(steps) == pause_at:  # the benchmark's barrier: it sends SIGCONT when it is ready
            os.kill(os.getpid(), signal.SIGSTOP)

    register_optimizer_step_post_hook(on_step)
    profile = _profiler(os.environ.get("COMPARE_PROFILE"), steps)
    if profile is not None:
        register_optimizer_step_post_hook(profile.on_step)

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
        if profile is not None:
            record["profile"] = profile.result()
        path = os.path.join(folder, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)

    atexit.register(write)  # every runner, every rank, ends through the interpreter's exit


class _Sampler:
    """Counts the stacks seen by a wall-clock timer signal between two optimizer steps."""

    INTERVAL_S = 0.001

    def __init__(self, first: int, last: int, steps: list[float]) -> None:
        self.first, self.last, self.steps = first, last, steps
        self.stacks: dict[tuple[str, ...], int] = {}

    def on_step(self, optimizer: object, args: object, kwargs: object) -> None:
        if len(self.steps) == self.first:
            signal.signal(signal.SIGALRM, self.sample)
            signal.setitimer(signal.ITIMER_REAL, self.INTERVAL_S, self.INTERVAL_S)
        elif len(self.steps) == self.last:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)

    def sample(self, signum: int, frame: FrameType | None) -> None:
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append(f"{code.co_filename}:{code.co_name}")
            frame = frame.f_back
        key = tuple(reversed(stack))
        self.stacks[key] = self.stacks.get(key, 0) + 1

    def result(self) -> dict[str, object]:
        return {
            "first_step": self.first,
            "last_step": self.last,
            "interval_s": self.INTERVAL_S,
            "stacks": [[list(k), n] for k, n in self.stacks.items()],
        }


def _profiler(spec: str | None, steps: list[float]) -> _Sampler | None:
    if not spec:
        return None
    first, last = (int(x) for x in spec.split(":"))
    return _Sampler(first, last, steps)


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
