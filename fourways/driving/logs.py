"""`self.log` / `self.log_dict` as the Trainer means them, for the runners that are not the Trainer.

Outside the Trainer a LightningModule's `self.log` drops its value (plain loops, Accelerate) or
hands it raw to Fabric's loggers, without `on_epoch`, `reduce_fx` or `sync_dist`
(FRAMEWORK_NOTES, 2026-12-01). These values are the module's validation metrics, so the
hand-written runners take them here instead, with the Trainer's meaning:

- where: `training_step` logs per step by default, validation and epoch hooks per epoch;
- an epoch value is the batch-size weighted mean of the logged values (or their sum, max, min),
  over this process, or over every process with `sync_dist=True`: both sums are all-reduced;
- a step value is the last one logged (averaged over processes with `sync_dist=True`);
- a torchmetrics Metric is computed (it syncs itself) and reset at the epoch's end;
- both `on_step` and `on_epoch`: the epoch value as `name` (and `name_epoch`), as in the Trainer's
  `callback_metrics`, whose end-of-epoch content `epoch_values` reproduces.

The capture itself is fourways/workarounds/module_logging.py (no public hook takes a module's log
calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities.data import extract_batch_size
from torchmetrics import Metric

from fourways.contract.errors import UsageError

# The Trainer's defaults (on_step, on_epoch) per hook: training_step and the batch hooks log per
# step; validation and the epoch hooks per epoch.
STEP_HOOKS = frozenset({"training_step", "on_train_batch_start", "on_train_batch_end"})
REDUCTIONS = {"mean", "sum", "max", "min"}
DIST_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@dataclass
class Logged:
    """One name's values in this epoch."""

    on_step: bool
    on_epoch: bool
    reduce_fx: str
    sync_dist: bool
    total: torch.Tensor | None = None  # sum of value x batch size (mean), or the reduction
    weight: float = 0.0  # summed batch sizes (mean)
    last: torch.Tensor | None = None  # the step value
    metric: Metric | None = None


class EpochLogs:
    """A module's `self.log` calls, gathered per epoch with the Trainer's meaning."""

    def __init__(self) -> None:
        self.hook = "training_step"  # the runner says which hook is running
        self.batch: Any = None  # and which batch, for the batch size
        self.logged: dict[str, Logged] = {}

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """LightningModule.log's signature; prog_bar, logger and the rest only place a value."""
        if reduce_fx not in REDUCTIONS:
            raise UsageError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): use one of "
                             f"{', '.join(sorted(REDUCTIONS))}")  # fmt: skip
        in_step = self.hook in STEP_HOOKS
        on_step = in_step if on_step is None else on_step and in_step
        on_epoch = (not in_step) if on_epoch is None else on_epoch
        entry = self.logged.setdefault(name, Logged(on_step, on_epoch, reduce_fx, sync_dist))
        if isinstance(value, Metric):
            entry.metric = value
            return
        value = torch.as_tensor(value).detach().to(torch.float64)
        if on_step:
            entry.last = value
        if on_epoch:
            self.accumulate(entry, value, batch_size)

    def log_dict(self, dictionary: Mapping[str, Any], **options: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, **options)

    def accumulate(self, entry: Logged, value: torch.Tensor, batch_size: int | None) -> None:
        if entry.reduce_fx == "mean":
            size = batch_size if batch_size is not None else extract_batch_size(self.batch)
            entry.total = value * size if entry.total is None else entry.total + value * size
            entry.weight += size
        elif entry.total is None:
            entry.total = value
        elif entry.reduce_fx == "sum":
            entry.total = entry.total + value
        else:
            entry.total = torch.maximum(entry.total, value) if entry.reduce_fx == "max" else (
                torch.minimum(entry.total, value))  # fmt: skip

    def epoch_values(self) -> dict[str, float]:
        """Every value as the Trainer's callback_metrics holds it at the epoch's end; then the
        epoch's values are forgotten. Under several processes every rank must call it."""
        values = {}
        for name, entry in sorted(self.logged.items()):
            if entry.metric is not None:
                values[name] = float(entry.metric.compute())
                entry.metric.reset()
            elif entry.on_epoch and entry.total is not None:
                values[name] = self.epoch_value(entry)
            elif entry.last is not None:
                values[name] = float(synced(entry.last, "sum", entry.sync_dist) / world(entry))
        self.logged.clear()
        return values

    def epoch_value(self, entry: Logged) -> float:
        op = "sum" if entry.reduce_fx == "mean" else entry.reduce_fx
        total = synced(entry.total, op, entry.sync_dist)
        if entry.reduce_fx != "mean":
            return float(total)
        weight = synced(torch.tensor(entry.weight, dtype=torch.float64), "sum", entry.sync_dist)
        return float(total / weight)


def world(entry: Logged) -> int:
    """How many processes a synced step value was summed over."""
    return dist.get_world_size() if entry.sync_dist and dist.is_initialized() else 1


def synced(value: torch.Tensor, op: str, sync_dist: bool) -> torch.Tensor:
    """The value reduced over every process (sync_dist), as the Trainer reduces it."""
    if not (sync_dist and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = value.clone().to(backend_device)
    dist.all_reduce(value, op=DIST_OPS[op])
    return value.cpu()
