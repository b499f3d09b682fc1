"""What the Trainer runner does where no public Lightning API does the job: one entry each.

Everywhere else the runner uses Lightning's public APIs. Each entry here names the version it was
checked with, why it is needed, and its test (tests/test_workarounds_lightning_trainer.py),
which asserts that Lightning still behaves as described: when that test fails, Lightning has
changed, and the entry can go (or must change).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

CHECKED_WITH = "lightning 2.6.6"


class ModelCheckpointAfterValidation(ModelCheckpoint):
    """ModelCheckpoint that saves an epoch's last optimizer step after the epoch's validation.

    Lightning 2.6.6 (loops/fit_loop.py, `reset`) resumes a checkpoint taken after an epoch's last
    batch, before its validation, as if the epoch were over: its validation and epoch-end hooks
    never run (the epoch's metrics are lost) and the next epoch starts from an exhausted loader
    state. ModelCheckpoint(every_n_train_steps=N) saves exactly there whenever N divides the
    epoch's steps. So the step save at an epoch's last batch is skipped, and last.ckpt is saved
    after the epoch's validation instead; a kill between the two resumes from the step before
    and trains the last batch again. Saving by steps or time, ModelCheckpoint 2.6.6 would save
    last.ckpt at an epoch's end only if it saved at that step: here it always does, as the other
    runners save at each epoch's end.

    Whether it saves by steps or time is read from the constructor's arguments: ModelCheckpoint
    keeps them in private attributes only.
    Test: test_a_checkpoint_after_an_epochs_last_batch_... (test_workarounds_lightning_trainer)
    """

    def __init__(
        self,
        *,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            **kwargs,
        )
        self.saves_within_epochs = bool(every_n_train_steps) or train_time_interval is not None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx + 1 < trainer.num_training_batches:  # the last batch: saved after validation
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning calls checkpoint callbacks after the LightningModule's on_train_epoch_end.
        if self.saves_within_epochs and self.save_last:
            trainer.save_checkpoint(self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST))


def epoch_about_to_train(trainer: L.Trainer) -> int:
    """The training epoch about to start, counted from 0, while the train loader is built.

    A Trainer that resumes (Lightning 2.6.6) builds the train loader, and draws its sampler's
    first order, before it sets the sampler's epoch (mid-epoch: to fast-forward the loader); from
    an epoch-end checkpoint `trainer.current_epoch` still names the epoch just finished there. So
    the loader's sampler is started at this epoch: the fit loop's count of processed epochs, the
    number Lightning itself passes to `set_epoch` (fit_loop.py, on_advance_start).
    Test: tests/test_workarounds_lightning_trainer.py, test_a_resumed_trainer_builds_its_loader_...
    """
    return trainer.fit_loop.epoch_progress.current.processed
