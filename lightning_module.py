"""The task's LightningModule, and the Lightning Trainer runner through LightningCLI.

python lightning_module.py fit                                   # defaults: 1 device
python lightning_module.py fit --model mypkg.MyModule --model.depth 4 --data mypkg.MyData
python lightning_module.py fit --config configs/lightning/ddp.yaml
python lightning_module.py fit --print_config                    # every option, as YAML
python lightning_module.py validate --ckpt_path runs/lightning/version_0/checkpoints/last.ckpt

The task has a training and a validation split and nothing else, so `fit` and `validate` are the
subcommands offered (`test` and `predict` would have no data to run on). What the run contract adds
to LightningCLI (refusals, run directory, resume checks) is fourways/trainer_cli.py; checkpoints,
fourways/trainer_checkpoints.py.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type
from torch.distributed.fsdp import FSDPModule, fully_shard
from torchmetrics.classification import MulticlassAccuracy

from fourways import settings, task
from fourways.contract import errors
from fourways.trainer_cli import TaskCLI

# The labels are 0 and 1: fewer than two logits cannot classify them (torchmetrics refuses 1).
AtLeastTwo = restricted_number_type("AtLeastTwo", int, (">=", 2))


class MLPClassifier(L.LightningModule):
    """The task's MLP with its loss, its validation metrics and its optimizer: a LightningModule as
    a user writes one. The runners keep the run's bookkeeping (fourways.driving, and the
    Trainer's callback in fourways.trainer_bookkeeping); all four train this class."""

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
        # Micro-averaged over every validation sample of every process (torchmetrics syncs it).
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        return F.cross_entropy(self.model(x), y)  # not self(x): one module call fewer a step

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        # The epoch's value is the mean weighted by batch size, over every process (sync_dist).
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.val_acc.update(logits, y)
        self.log("val_acc", self.val_acc)

    def configure_model(self) -> None:
        """Under ModelParallelStrategy (configs/lightning/fsdp2.yaml): the MLP sharded with FSDP2
        over the data-parallel processes, where Lightning documents it (before the optimizer)."""
        if self.device_mesh is not None and not isinstance(self.model, FSDPModule):
            fully_shard(self.model, mesh=self.device_mesh["data_parallel"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    """LightningCLI: `fit` or `validate`, as Lightning spells it, with any LightningModule and
    LightningDataModule (`--model PATH`, `--data PATH`); the task's MLPClassifier and
    TaskDataModule by default."""
    TaskCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
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
