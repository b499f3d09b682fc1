"""Each entry of fourways/workarounds/lightning_trainer.py: Lightning behaves as the entry says.

These tests assert the behaviour the workarounds exist for, on a bare LightningModule, so that a
Lightning release that changes it fails here, by name; the entry can then go or change. That the
runner with its workarounds resumes exactly is test_resume_positions.py's job.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import load_metrics
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from fourways.workarounds import lightning_trainer

TRAIN_BATCHES = 2


class EpochSampler(Sampler[int]):
    """A sampler with an epoch, as DistributedSampler has; it lists what is done to it."""

    def __init__(self, size: int, events: list[tuple[Any, ...]]) -> None:
        self.size, self.events, self.epoch = size, events, 0

    def set_epoch(self, epoch: int) -> None:
        self.events.append(("set_epoch", epoch))
        self.epoch = epoch

    def __iter__(self):
        self.events.append(("draw", self.epoch))
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


class Recorder(L.LightningModule):
    """A one-weight module of 2 training batches an epoch that lists the hooks it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.events: list[tuple[Any, ...]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.events.append(("train", self.current_epoch, batch_idx))
        return self.layer(batch[0]).sum()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.events.append(("validate", self.current_epoch))

    def on_train_epoch_end(self) -> None:
        self.events.append(("epoch end", self.current_epoch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        processed = trainer.fit_loop.epoch_progress.current.processed
        self.events.append(("build loader", trainer.current_epoch, processed))
        sampler = EpochSampler(2 * TRAIN_BATCHES, self.events)
        return StatefulDataLoader(
            TensorDataset(torch.ones(2 * TRAIN_BATCHES, 2)), 2, sampler=sampler
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(2, 2)), batch_size=2)


def fit(epochs: int, ckpt_path: Path | None = None, **checkpoint: Any) -> Recorder:
    module = Recorder()
    callbacks = [ModelCheckpoint(**checkpoint)] if checkpoint else []
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
        enable_checkpointing=bool(checkpoint),
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)
    return module


def test_a_checkpoint_after_an_epochs_last_batch_resumes_as_a_finished_epoch(tmp_path: Path):
    """lightning_trainer.ModelCheckpointAfterValidation: ModelCheckpoint(every_n_train_steps=N)
    saves after an epoch's last batch, before its validation, and a resume from there skips that
    epoch's validation and its end: the epoch counts as finished."""
    fit(1, dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    last_batch = tmp_path / f"epoch=0-step={TRAIN_BATCHES}.ckpt"
    assert last_batch.is_file(), sorted(p.name for p in tmp_path.iterdir())
    resumed = fit(2, ckpt_path=last_batch)
    # An exact resume would validate epoch 0 and end it before training epoch 1.
    assert ("validate", 0) not in resumed.events and ("epoch end", 0) not in resumed.events
    # And the next epoch trains no batch (its loader state is the finished epoch's, exhausted).
    assert ("epoch end", 1) in resumed.events and ("train", 1, 0) not in resumed.events
    # Whether it saves by steps is kept in private attributes only: hence the entry's __init__.
    public = {name for name in vars(ModelCheckpoint(every_n_train_steps=3)) if name[0] != "_"}
    assert not {"every_n_train_steps", "train_time_interval"} & public, public


def test_a_resumed_trainer_builds_its_loader_before_the_sampler_epoch(tmp_path: Path) -> None:
    """lightning_trainer.epoch_about_to_train: resumed from an epoch-end checkpoint, the Trainer
    builds the train loader while `current_epoch` still names the finished epoch (the fit loop has
    counted it processed), and the loader draws its first order before the sampler's epoch is
    set: a sampler left at `current_epoch` would repeat the finished epoch's order."""
    fit(1, dirpath=tmp_path, save_last=True)
    resumed = fit(2, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.events[0] == ("build loader", 0, 1), resumed.events
    draws = [e for e in resumed.events if e[0] in ("draw", "set_epoch")]
    assert draws[0][0] == "draw", draws  # the order drawn at the epoch the sampler was built at


@pytest.mark.slow
def test_the_runner_needs_the_last_batch_workaround(tmp_path, capsys, monkeypatch) -> None:
    """The Trainer runner with ModelCheckpoint's own hooks in place of the workaround's: the run
    resumed from the checkpoint after epoch 1's last batch goes wrong (the epoch's validation is
    lost: no val_loss (the bookkeeping records what was logged; NaN from a module that computes
    it over no batch), or an epoch missing)."""
    from test_resume_positions import EPOCHS, resume, snapshotting_run

    for hook in ("on_train_batch_end", "on_train_epoch_end"):
        stock = getattr(ModelCheckpoint, hook)
        monkeypatch.setattr(lightning_trainer.ModelCheckpointAfterValidation, hook, stock)
    copies = snapshotting_run("lightning", tmp_path / "run", True, capsys, monkeypatch)
    code, out, err = resume("lightning", copies["step:4"], capsys)
    assert code == 0, err
    epochs = load_metrics(copies["step:4"])["epochs"]
    lost = [e for e in epochs if math.isnan(e.get("val_loss", math.nan))]
    assert lost or len(epochs) != EPOCHS, out
