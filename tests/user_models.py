"""Tiny user classes for `--model` / `--data`, shared by every runner's tests: ones the runners
train (a model and a data module unlike the task's: other init arguments, no `seed`, no
`num_features`) and ones each runner must refuse in one line before anything trains.

    --model tests.user_models.TwoOptimizers          # refused: two optimizers
    --model tests.user_models.ManualOptimization     # refused: manual optimization
    --model tests.user_models.NotAModule             # refused: not a LightningModule
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fourways import task


class TinyModel(L.LightningModule):
    """A linear classifier of the task's 10 features: init arguments the task's model lacks
    (`bias`, `lr`), none it has (no num_features, no hidden_dim)."""

    def __init__(self, bias: bool = True, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(task.NUM_FEATURES, task.NUM_CLASSES, bias=bias)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        return {"loss": F.cross_entropy(self.linear(x), y)}  # Lightning's dict form

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.linear(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(L.LightningDataModule):
    """The task's samples with a batch size of its own, and no seed or num_features argument."""

    def __init__(self, num_samples: int = 160, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        dataset = task.make_dataset(self.hparams.num_samples, task.NUM_FEATURES, 0.1, task.SEED)
        self.train_set, self.val_set = task.split_dataset(dataset, 0.2, task.SEED)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class TwoOptimizers(TinyModel):
    """Two optimizers: only manual optimization trains them, which the runners refuse."""

    def configure_optimizers(self) -> Any:
        half = list(self.parameters())
        return [torch.optim.SGD(half[:1], lr=0.1), torch.optim.SGD(half[1:], lr=0.1)]


class ManualOptimization(TinyModel):
    """Steps its optimizer itself (automatic_optimization = False)."""

    def __init__(self, bias: bool = True, lr: float = 0.05) -> None:
        super().__init__(bias, lr)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)["loss"]
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


class MonitoredScheduler(TinyModel):
    """ReduceLROnPlateau on val_loss: the hand-written runners have no monitored metric."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau,
                                                         "monitor": "val_loss"}}  # fmt: skip


class NotAModule(nn.Module):
    """A plain torch module: not a LightningModule."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(task.NUM_FEATURES, task.NUM_CLASSES)
