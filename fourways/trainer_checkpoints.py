"""Checkpoints and resume in the Lightning Trainer runner (lightning_module.py).

The contract asks more of a checkpoint than the Trainer's own: the run's configuration recorded
in it (a resume is checked against it), its position said on resume as the other runners say it,
files complete or absent, and reads of tensors and plain values only, of the very file checked.
Fabric's runner writes its checkpoints through the same `AtomicCheckpointIO`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from tqdm import tqdm

from fourways import sharded
from fourways.contract import checkpoint_io, errors, faults, resume
from fourways.trainer_bookkeeping import RunBookkeeping
from fourways.workarounds import lightning_trainer

# An epoch's metrics that the runner computes (fourways.driving.bookkeeping); the rest the module
# logged, and the logger wrote them when they were logged.
RUN_OWN = ("train_loss", "epoch_s")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O (the Trainer's and Fabric's): complete-or-absent writes, and
    reads of tensors and plain values only, whatever the caller asks.

    Lightning's own save goes through an fsspec transaction that writes to the system's temp
    folder with mode 0600, then moves the file: a copy, not a rename, where that folder is on
    another file system. Here the file is written beside its final name, then renamed.

    `checked`: a checkpoint the runner has read already (to settle its configuration), handed to
    the framework as read, so that the file checked is the file loaded (a file swapped between
    two reads is never read).
    """

    def __init__(self, checked: tuple[Path, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._checked = checked

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if self._checked is not None and Path(path).resolve() == self._checked[0].resolve():
            checkpoint, self._checked = self._checked[1], None  # handed over once
            return checkpoint
        # Any other read: tensors and plain values only, explicitly (Lightning 2.6.6 passes
        # weights_only=None, torch's default, unless told).
        return checkpoint_io.load_checkpoint(Path(path))

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        checkpoint_io.atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def hand_over_checked(strategy: Any, checked: tuple[Path, dict[str, Any]] | None) -> None:
    """The Trainer's read of a checkpoint file is the one made on parsing: the file checked is the
    file loaded. ModelParallelStrategy takes no CheckpointIO: its folders were read whole, safely,
    by sharded.read_lightning_checkpoint first."""
    if not isinstance(strategy, ModelParallelStrategy):
        strategy.checkpoint_io = AtomicCheckpointIO(checked)


def read_checked(path: Path) -> dict[str, Any]:
    """The checkpoint that --ckpt_path names, read on parsing: a file, or a folder under
    ModelParallelStrategy; tensors and plain values, explicitly."""
    if errors.rank() == 0:  # a kill between a sharded folder's renames: the previous one
        sharded.recover(path)
    return sharded.read_lightning_checkpoint(path)


def checkpoint_file(config: Any, subcommand: str = "fit") -> Path:
    """The one file that --ckpt_path names: `last` is this run's checkpoints/last.ckpt exactly
    (the Trainer's `last` would take the newest last*.ckpt, last-v1.ckpt included)."""
    if config.ckpt_path == "last" and subcommand != "fit":
        raise errors.UsageError(
            f"{subcommand} reads a checkpoint by its path: --ckpt_path "
            "runs/lightning/version_N/checkpoints/last.ckpt"
        )
    if config.ckpt_path != "last":
        if config.ckpt_path in ("best", "hpc") or str(config.ckpt_path).startswith("registry"):
            raise errors.UsageError(
                f"--ckpt_path {config.ckpt_path}: resume with --ckpt_path last, or a "
                "checkpoint's path"
            )
        return Path(config.ckpt_path)
    init = getattr(config.trainer.logger, "init_args", None)
    if init is None or getattr(init, "version", None) is None:
        raise errors.UsageError(
            "--ckpt_path last continues a named run: give its --trainer.logger.init_args.version "
            "(and save_dir, name), or the checkpoint's path"
        )
    version = init.version if isinstance(init.version, str) else f"version_{init.version}"
    return Path(init.save_dir, init.name or "", version, "checkpoints", "last.ckpt")


def read_weights_only(config: Any) -> None:
    """The Trainer's own read of the checkpoint (checked on parsing), explicitly weights-only."""
    if config.weights_only is False:
        raise errors.UsageError(
            "--weights_only false is not offered: checkpoints are read as tensors and plain "
            "values only"
        )
    config.weights_only = True


def plain_values(mapping: dict[str, Any]) -> dict[str, Any]:
    """The values' builtin types: a `PositiveFloat` becomes the float it is."""
    builtins = (bool, int, float, str)
    return {
        k: next(t(v) for t in builtins if isinstance(v, t)) if isinstance(v, builtins) else v
        for k, v in mapping.items()
    }


def refuse_unresumable_loader(trainer: L.Trainer, position: dict[str, int] | None) -> None:
    """A mid-epoch checkpoint continues exactly only from a training loader that records its
    position (`state_dict` / `load_state_dict`, as torchdata's StatefulDataLoader, which the
    task's data module uses): from any other, Lightning 2.6.6 warns and restarts the epoch's
    data. Refused instead of training something else (nothing is written yet)."""
    if position is None or position["batch"] == 0:
        return
    loader = trainer.train_dataloader
    if isinstance(loader, dict):
        loaders = list(loader.values())
    else:
        loaders = list(loader) if isinstance(loader, list | tuple) else [loader]
    for each in loaders:
        if not (hasattr(each, "state_dict") and hasattr(each, "load_state_dict")):
            data = type(trainer.datamodule).__name__ if trainer.datamodule else "the data"
            raise errors.UsageError(
                f"the checkpoint is mid-epoch (epoch {position['epoch'] + 1}, batch "
                f"{position['batch']}) and {data}'s training loader ({type(each).__name__}) cannot "
                "resume there (no state_dict/load_state_dict; torchdata's StatefulDataLoader "
                "can); checkpoint at epoch ends only (leave --checkpoint.every_n_train_steps out) "
                "or make the loader resumable"
            )


class Checkpoint(lightning_trainer.ModelCheckpointAfterValidation):
    """ModelCheckpoint (configured by its own flags: --checkpoint.every_n_train_steps N, ...) that
    also records the run's configuration and its position in every checkpoint and, on resume,
    says where the run stands and writes the epochs before it back into metrics.csv (the CSV
    logger starts its file anew).

    The position is the other runners' (resume.resume_line): epochs finished (the bookkeeping
    callback's history, fourways.trainer_bookkeeping), batches trained into the next one,
    optimizer steps.
    """

    run_config: dict[str, Any]
    bookkeeping: RunBookkeeping
    train_start: float
    batches_done = 0  # in the epoch under way, as of the last training batch
    resumed_position: dict[str, int] | None = None
    resume_reported = False  # said where the run resumed (say_where_resumed)

    def record_run(self, run_config: dict[str, Any], bookkeeping: RunBookkeeping) -> None:
        """Called before fit: the configuration to record, the run's bookkeeping (its history
        is the position's epoch count), and the training clock's start (reset when training
        starts, which a resumed run that had already finished never does)."""
        self.run_config = run_config
        self.bookkeeping = bookkeeping
        self.train_start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.batches_done = batch_idx + 1  # before a save: the position it records
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # The resume tests' fault point, after the step's checkpoint (a kill -9 there leaves
        # it): Lightning calls checkpoint callbacks after every other callback.
        if faults.FAULT:  # the step count is a chain of calls: checked only under the tests
            faults.inject_fault("step", trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches_done = 0  # after validation and the module's epoch end: a finished epoch
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # After the processes are launched and joined, as in the others (where it is set just
        # before the epoch loop): the launch and the sanity check are start-up, not training.
        self.train_start = time.perf_counter()
        refuse_unresumable_loader(trainer, self.resumed_position)
        self.report_resume(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["run_config"] = self.run_config
        checkpoint["position"] = {
            "epoch": len(self.bookkeeping.history),
            "batch": self.batches_done,
            "steps": trainer.global_step,
        }
        # jsonargparse hands over its own subclasses (PositiveFloat, ...) for the options given:
        # stored as they are, they would make the checkpoint unreadable with weights_only=True.
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain_values(checkpoint[key])

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.resumed_position = checkpoint["position"]
        self.batches_done = self.resumed_position["batch"]

    def report_resume(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Says where the run resumed and logs its finished epochs again. Also called after a
        resume from the run's last checkpoint, where the Trainer starts no training."""
        if self.resumed_position is None or self.resume_reported:
            return
        if trainer.is_global_zero:
            tqdm.write(resume.resume_line(Path(trainer.ckpt_path), self.resumed_position))
        self.resume_reported = True
        steps_per_epoch = -(-trainer.num_training_batches // trainer.accumulate_grad_batches)
        for epoch, metrics in enumerate(self.bookkeeping.history):
            logged = {k: v for k, v in metrics.items() if k not in RUN_OWN}  # the module's
            for logger in trainer.loggers:
                logger.log_metrics({**logged, "epoch": epoch}, (epoch + 1) * steps_per_epoch - 1)
