"""The profile section's reading: where a step's time goes, by area and by framework function.

The step timer (benchmarks/steptimer/) samples rank 0's stacks over a window of steps
(plans.profile_window) and writes them to its step log; read_profile turns them into µs per
step: by area (torch's forward, backward and optimizer, the DataLoader, each framework, the
runner's own code) and, inside the frameworks, by their innermost function.
"""

from __future__ import annotations

import json
import sysconfig
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fourways.benchmark.plans import BenchRun

STDLIB = sysconfig.get_paths()["stdlib"]
AREAS = (  # (path fragment, area); the first fragment found in a frame's file wins
    ("/torchmetrics/", "torchmetrics"),
    ("/lightning/pytorch/", "lightning.pytorch"),
    ("/lightning/fabric/", "lightning.fabric"),
    ("/lightning_utilities/", "lightning.pytorch"),
    ("/accelerate/", "accelerate"),
    ("/torch/utils/data/", "torch DataLoader"),
    ("/torch/optim/", "torch optimizer step"),
    ("/torch/autograd/", "torch backward"),
    ("/torch/nn/", "torch forward (nn)"),
    ("/torch/", "torch, other"),
    ("/steptimer/", "step timer"),
)
AREA_ORDER = (  # the order of the report's rows and the plot's bars
    "torch forward (nn)", "torch backward", "torch optimizer step", "torch DataLoader",
    "torch, other", "runner code", "torchmetrics", "lightning.fabric", "lightning.pytorch",
    "accelerate", "step timer", "other",
)  # fmt: skip
FRAMEWORK_AREAS = ("torchmetrics", "lightning.pytorch", "lightning.fabric", "accelerate")
# nn.Module attribute bookkeeping: counted for whoever sets or reads the attribute.
BOOKKEEPING = tuple(
    f"/torch/nn/{name}"
    for name in (
        "modules/module.py:__setattr__",
        "modules/module.py:__getattr__",
        "modules/module.py:__delattr__",
        "parameter.py:__instancecheck__",
    )
)


def read_profile(run: BenchRun, root: Path) -> dict[str, Any] | None:
    """Rank 0's sampled stacks, turned into µs per step by area and by framework function;
    `root`: the checkout, whose files are the runners' own code."""
    logs = [json.loads(p.read_text()) for p in (run.log_dir / "steps").glob("*.json")]
    logs = [r for r in logs if r.get("profile")]
    if not logs:
        return None
    log, prof = logs[0], logs[0]["profile"]
    times = log["step_times"]
    first, last = prof["first_step"], prof["last_step"]
    step_us = (times[last - 1] - times[first - 1]) / (last - first) * 1e6  # mean, window only
    stacks = [(frames, n) for frames, n in prof["stacks"]]
    total = sum(n for _, n in stacks)
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks:
        areas[area := area_of(frames, root)] += n
        if area in FRAMEWORK_AREAS:  # the framework's own Python: its innermost function
            own[short(next(f for f in reversed(frames) if framework_frame(f)))] += n
    return {
        "samples": total,
        "step_us": step_us,
        "areas_us": {a: n / total * step_us for a, n in areas.most_common()},
        "framework_functions_us": {f: n / total * step_us for f, n in own.most_common(10)},
    }


def area_of(frames: Sequence[str], root: Path) -> str:
    """Where a sample's time goes: the innermost frame outside the standard library.

    Time in torch's C++ counts for the Python frame that called it, so `loss.backward()`
    lands in torch backward, `model(x)` in torch forward; a framework setting attributes on
    its nn.Module lands in the framework. A frame in a file under `root` (the checkout) is
    runner code.
    """
    for frame in reversed(frames):
        path, _, func = frame.rpartition(":")
        if path.startswith("<") or (path.startswith(STDLIB) and "site-packages" not in path):
            continue
        if frame.endswith(BOOKKEEPING):
            continue
        if path.endswith("torch/_tensor.py") and func == "backward":
            return "torch backward"
        for fragment, name in AREAS:
            if fragment in path:
                return name
        return "runner code" if path.startswith(str(root)) else "other"
    return "other"


def framework_frame(frame: str) -> bool:
    return any(p in frame for p in ("/lightning/", "/accelerate/", "/torchmetrics/"))


def short(frame: str) -> str:
    """A frame as `package/module.py:function`, site-packages' prefix left out."""
    path, _, func = frame.rpartition(":")
    return f"{path.split('site-packages/')[-1]}:{func}"
