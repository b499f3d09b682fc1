"""The Trainer runner's bookkeeping of a run, as a Callback: the user's LightningModule keeps none.

The other three runners keep the run's epoch metrics, history and resume sums with
fourways.driving.bookkeeping.RunBook; the Trainer runner keeps them with the same RunBook here, fed
from the Trainer's public hooks, so that metrics.json means the same in all four:

- each training batch: the loss `training_step` returned, weighted by the batch's samples;
- each epoch's end: its train loss (the mean over every sample of every process), then what the
  module logged (the Trainer's callback_metrics, read as the hand-written runners'
  fourways.driving.logs.EpochLogs reproduces them), the epoch line on rank 0, the history;
- checkpoints: the history and the epoch's running sums, as plain values (weights_only).

The resume tests' fault point after each step is the checkpoint callback's
(fourways/trainer_checkpoints.py): it must strike after that step's checkpoint is written, and
Lightning calls checkpoint callbacks after every other callback.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from tqdm import tqdm

from fourways.contract import console
from fourways.driving import trace
from fourways.driving.bookkeeping import RunBook, step_loss

# The checkpoint's entry, as the task's module wrote it before the bookkeeping moved here.
STATE_KEY = "progress"


def epoch_values(callback_metrics: dict[str, Any]) -> dict[str, float]:
    """The Trainer's callback_metrics at an epoch's end, as the epoch's logged values: floats,
    without the `_step` values, and without a `name_epoch` whose `name` is there (the same value,
    logged with both on_step and on_epoch): what EpochLogs.epoch_values gives the other runners."""
    values = {}
    for name, value in sorted(callback_metrics.items()):
        if name.endswith("_step"):
            continue
        if name.endswith("_epoch") and name.removesuffix("_epoch") in callback_metrics:
            continue
        values[name] = float(value)
    return values


class RunBookkeeping(Callback):
    """Records each batch's loss and each epoch's metrics; carries them through checkpoints."""

    def __init__(self) -> None:
        self.book = RunBook()
        self.epoch_start = time.perf_counter()
        self.accumulate = 1
        self.tracer: trace.WeightTrace | None = None
        self.traced_step = 0

    @property
    def history(self) -> list[dict[str, float]]:
        """The finished epochs' metrics, for metrics.json and the checkpoint's position."""
        return self.book.history

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.accumulate = trainer.accumulate_grad_batches
        self.epoch_start = time.perf_counter()  # a run resumed mid-epoch starts its clock here
        # compare.py's diagnosis (FOURWAYS_TRACE): the weights after every optimizer step.
        self.tracer, self.traced_step = trace.recorder(trainer.global_rank), trainer.global_step
        if self.tracer and trainer.global_step == 0:
            self.tracer.record(0, pl_module, trainer.optimizers[0])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tracer:
            self.tracer.save()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = step_loss(outputs, type(pl_module).__name__)
        # Lightning hands over the loss divided by the accumulation steps (it backpropagates
        # that): the batch's own mean loss again (exact for 1, 2, 4, ... steps).
        self.book.record_loss(loss if self.accumulate == 1 else loss * self.accumulate, batch)
        if self.tracer and trainer.global_step != self.traced_step:  # the optimizer stepped
            self.traced_step = trainer.global_step
            self.tracer.record(trainer.global_step, pl_module, trainer.optimizers[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before the module's on_train_epoch_end and the checkpoint callbacks' (Lightning's
        # order): an epoch-end checkpoint holds this epoch in its history.
        logged = epoch_values(trainer.callback_metrics)
        metrics = self.book.end_epoch(logged, time.perf_counter() - self.epoch_start)
        if trainer.is_global_zero:
            tqdm.write(console.epoch_line(len(self.book.history), metrics))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A collective under several processes: Lightning dumps the checkpoint on every rank.
        checkpoint[STATE_KEY] = self.book.state()

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.book.load_state(checkpoint[STATE_KEY], trainer.global_rank)
