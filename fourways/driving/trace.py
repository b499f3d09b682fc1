"""The weights after every optimizer step, so that two runs can be compared step by step.

A run's model.pt says only WHETHER two runs ended apart; to say WHERE they parted (the first
optimizer step, the layer) compare.py needs each step's weights. Every runner records them through
`recorder(rank)` when the environment variable FOURWAYS_TRACE names a file (rank 0 only):

    trace = recorder(rank)                      # None unless FOURWAYS_TRACE is set, rank 0
    if trace: trace.record(0, module, optimizer)             # the initial weights
    ... after each optimizer step (and its scheduler step):
    if trace: trace.record(step, module, optimizer)
    if trace: trace.save()                                    # at the end of the run

The file (torch.save; tensors and plain values only, `torch.load(path, weights_only=True)`):

    {"format": 1, "steps": [0, 1, ...],        # the optimizer step of each record
     "lr": [[lr of each param group], ...],    # one list per record
     "state": {key: tensor[records, *shape]},  # module.state_dict(), stacked over the records
     "skipped": str | None}                     # why recording stopped early, if it did

Unset, it costs nothing. A model over MAX_PARAMETERS values is not recorded (one warning line), so
large cost runs are not slowed; recording also stops (one warning line) once MAX_RECORDED_BYTES
are held.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

TRACE_ENV = "FOURWAYS_TRACE"
FORMAT = 1
MAX_PARAMETERS = 4_000_000  # values in one state_dict
MAX_RECORDED_BYTES = 256 * 2**20  # over the whole run


def recorder(rank: int) -> WeightTrace | None:
    """A WeightTrace writing to $FOURWAYS_TRACE on rank 0; None elsewhere or when unset."""
    path = os.environ.get(TRACE_ENV)
    if not path or rank != 0:
        return None
    return WeightTrace(Path(path))


def warn(message: str) -> None:
    print(f"warning: {TRACE_ENV}: {message}", file=sys.stderr, flush=True)


class WeightTrace:
    """Each optimizer step's state_dict and learning rates, held in memory until `save`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: list[int] = []
        self.lrs: list[list[float]] = []
        self.states: list[dict[str, torch.Tensor]] = []
        self.held = 0
        self.skipped: str | None = None

    def record(self, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The module's weights and buffers and each param group's lr, after optimizer step `step`
        (0: the initial weights)."""
        if self.skipped is not None:
            return
        state = module.state_dict()
        tensors = [t for t in state.values() if torch.is_tensor(t)]
        size = sum(t.numel() for t in tensors)
        if size > MAX_PARAMETERS:
            return self.skip(f"{size} values per state_dict (> {MAX_PARAMETERS}): not recorded")
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        if self.held + nbytes > MAX_RECORDED_BYTES:
            last = self.steps[-1] if self.steps else "none"
            return self.skip(f"recording stopped after step {last} (memory cap)")
        self.held += nbytes
        self.steps.append(int(step))
        self.lrs.append([float(group["lr"]) for group in optimizer.param_groups])
        self.states.append(
            {k: v.detach().to("cpu", copy=True) for k, v in state.items() if torch.is_tensor(v)}
        )

    def skip(self, why: str) -> None:
        self.skipped = why
        warn(why)

    def content(self) -> dict[str, Any]:
        """The file's content (see the module's docstring)."""
        keys = list(self.states[0]) if self.states else []
        return {
            "format": FORMAT,
            "steps": list(self.steps),
            "lr": [list(lrs) for lrs in self.lrs],
            "state": {k: torch.stack([s[k] for s in self.states]) for k in keys},
            "skipped": self.skipped,
        }

    def save(self) -> None:
        """Write the file atomically (a temporary file beside it, then os.replace)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(self.content(), tmp)
        os.replace(tmp, self.path)


class Trace:
    """A trace read back: the weights and learning rates of each recorded step."""

    def __init__(self, content: dict[str, Any]) -> None:
        if content.get("format") != FORMAT:
            raise ValueError(f"not a weight trace of format {FORMAT}")
        self.steps: list[int] = list(content["steps"])
        self.lrs: list[list[float]] = [list(x) for x in content["lr"]]
        self.state: dict[str, torch.Tensor] = content["state"]
        self.skipped: str | None = content.get("skipped")
        self.final: dict[str, torch.Tensor] | None = None  # a replay's last weights, if known

    @classmethod
    def load(cls, path: Path | str) -> Trace:
        return cls(torch.load(path, weights_only=True))

    @classmethod
    def of(cls, trace: WeightTrace) -> Trace:
        """A trace still in memory (the replays'), as if saved and read back."""
        return cls(trace.content())

    def weights(self, step: int) -> dict[str, torch.Tensor]:
        """The state_dict after optimizer step `step`."""
        i = self.steps.index(step)
        return {k: v[i] for k, v in self.state.items()}

    def lr(self, step: int) -> list[float]:
        return self.lrs[self.steps.index(step)]
