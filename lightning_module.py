"""The task's LightningModule, and the Lightning Trainer runner through LightningCLI.

python lightning_module.py fit                                   # defaults: 1 device
python lightning_module.py fit --config configs/lightning/ddp.yaml
python lightning_module.py fit --print_config                    # every option, as YAML
python lightning_module.py validate --ckpt_path runs/lightning/version_0/checkpoints/last.ckpt

The task has a training and a validation split and nothing else, so `fit` and `validate` are the
subcommands offered (`test` and `predict` would have no data to run on). What the run contract adds
to LightningCLI (refusals, run directory, resume checks) is fourways/trainer_cli.py; checkpoints,
fourways/trainer_checkpoints.py.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from datamodule import TaskDataModule
from fourways import settings, task
from fourways.contract import console, errors, faults
from fourways.trainer_cli import TaskCLI

# The labels are 0 and 1: fewer than two logits cannot classify them (torchmetrics refuses 1).
AtLeastTwo = restricted_number_type("AtLeastTwo", int, (">=", 2))


class MLPClassifier(L.LightningModule):
    """The MLP with its loss, metrics and optimizer. Fabric and Accelerate drive it too."""

    def __init__(
        self,
        num_features: PositiveInt = task.NUM_FEATURES,
        hidden_dim: PositiveInt = task.HIDDEN_DIM,
        num_classes: AtLeastTwo = task.NUM_CLASSES,
        lr: PositiveFloat = task.LEARNING_RATE,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = task.MLP(num_features, hidden_dim, num_classes)
        # torchmetrics sum over every process when computed: the loss is a mean over every
        # sample (weighted by batch size), the accuracy micro-averaged (not per-class).
        self.train_loss = MeanMetric()
        # Each step's loss is listed and handed to the metric once per epoch (or checkpoint): a
        # metric update per step cost more than the MLP's own step, and even one tensor op (or
        # an nn.Module attribute set) a step is a few % of it (profiled).
        self.step_losses: list[tuple[torch.Tensor, int]] = []
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.history: list[dict[str, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)  # not self(x): one module call fewer a step
        self.record_train_loss(loss, y.numel())
        return loss

    def record_train_loss(self, loss: torch.Tensor, count: int) -> None:
        """Lists one micro-batch's mean loss and its samples, for the epoch's mean."""
        self.step_losses.append((loss.detach(), count))

    def fold_train_loss(self) -> None:
        """Moves the listed losses into the metric (which syncs processes): one update, each
        loss weighted by its samples."""
        if self.step_losses:
            losses, counts = zip(*self.step_losses, strict=True)
            device = self.train_loss.device
            self.train_loss.update(
                torch.stack(losses).float().to(device),
                torch.tensor(counts, dtype=torch.float32, device=device),
            )
            self.step_losses.clear()

    def on_validation_epoch_start(self) -> None:
        # Forget the Trainer's sanity-check batches: each epoch validates all 200 samples once.
        self.val_loss.reset()
        self.val_acc.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.val_loss.update(F.cross_entropy(logits, y), weight=y.numel())
        self.val_acc.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        # `validate` alone reports here, through the Trainer's logger and results table; in `fit`
        # the validation metrics join the epoch's line in on_train_epoch_end instead.
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            self.log_dict({"val_loss": self.val_loss.compute(), "val_acc": self.val_acc.compute()})

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's metrics, synced over all processes; resets them for the next epoch."""
        self.fold_train_loss()
        metrics = {
            "train_loss": self.train_loss.compute().item(),
            "val_loss": self.val_loss.compute().item(),
            "val_acc": self.val_acc.compute().item(),
        }
        for metric in (self.train_loss, self.val_loss, self.val_acc):
            metric.reset()
        return metrics

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if faults.FAULT:  # the resume tests' fault points: the step count is a chain of calls
            faults.inject_fault("step", self.trainer.global_step)

    def on_train_start(self) -> None:
        self._epoch_start = time.perf_counter()  # a run resumed mid-epoch starts its clock here

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        metrics = self.epoch_metrics()
        metrics["epoch_s"] = time.perf_counter() - self._epoch_start  # training + validation
        if self.trainer.global_rank == 0:  # under Fabric, `self.trainer` forwards to Fabric
            tqdm.write(console.epoch_line(len(self.history) + 1, metrics))
        self.history.append(metrics)
        self.log_dict(metrics, sync_dist=True)  # equal on every rank already; this is a no-op

    def configure_model(self) -> None:
        """Under ModelParallelStrategy (configs/lightning/fsdp2.yaml): the MLP sharded with FSDP2
        over the data-parallel processes, where Lightning documents it (before the optimizer)."""
        if self.device_mesh is not None and not isinstance(self.model, FSDPModule):
            fully_shard(self.model, mesh=self.device_mesh["data_parallel"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def progress_state(self) -> dict[str, Any]:
        """Finished epochs and this epoch's running train-loss sums over every process.

        For checkpoints. A collective under DDP: every rank must call it.
        """
        self.fold_train_loss()
        with self.train_loss.sync_context():
            sums = [self.train_loss.mean_value.item(), self.train_loss.weight.item()]
        return {"history": self.history, "train_loss_sums": sums}

    def load_progress_state(self, state: dict[str, Any], rank: int) -> None:
        self.history = state["history"]
        self.train_loss.reset()
        self.step_losses.clear()
        if rank == 0:  # the sums cover every rank: one rank carries them, the others start at 0
            self.train_loss.mean_value += state["train_loss_sums"][0]
            self.train_loss.weight += state["train_loss_sums"][1]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["progress"] = self.progress_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_progress_state(checkpoint["progress"], self.trainer.global_rank)


def main() -> None:
    """LightningCLI with the task's model and data: `fit` or `validate`, as Lightning spells it."""
    TaskCLI(
        MLPClassifier,
        TaskDataModule,
        seed_everything_default=settings.DEFAULTS.seed,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its config.yaml
        trainer_defaults={
            "max_epochs": settings.DEFAULTS.epochs,
            # The console the other runners have: epoch lines, no parameter table;
            # --trainer.enable_model_summary true shows it.
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "lightning"},
            },
        },
    )


if __name__ == "__main__":
    errors.run_main(main)
