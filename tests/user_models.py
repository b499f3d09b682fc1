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
import torch.distributed as dist
import torch.nn.functional as F
import torchmetrics
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


class StepsFromTheTrainer(TinyModel):
    """A one-cycle schedule over the Trainer's `estimated_stepping_batches`: configure_optimizers
    reads `self.trainer`, which only the Trainer provides (a Trainer-only model)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        steps = int(self.trainer.estimated_stepping_batches)
        cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cycle, "interval": "step"}}


class NotAModule(nn.Module):
    """A plain torch module: not a LightningModule."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(task.NUM_FEATURES, task.NUM_CLASSES)


class OverridesOptimizerStep(TinyModel):
    """Overrides a hook only the Trainer calls: the other runners would train differently."""

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)


class StepsEveryThirdBatch(TinyModel):
    """A per-step scheduler with frequency 3: with accumulation, the Trainer counts the
    frequency in batches and steps it only where the optimizer stepped."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        decay = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        every_third = {"scheduler": decay, "interval": "step", "frequency": 3}
        return {"optimizer": optimizer, "lr_scheduler": every_third}


class DecaysEachEpoch(TinyModel):
    """An epoch scheduler in the tuple form: ([optimizers], [schedulers])."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class LogsPerRank(TinyModel):
    """Logs its process's rank with and without sync_dist, step and epoch values, and a
    torchmetrics object: what each runner records must be what the Trainer records."""

    def __init__(self, bias: bool = True, lr: float = 0.05) -> None:
        super().__init__(bias, lr)
        self.val_mean = torchmetrics.MeanMetric()

    def rank(self) -> float:
        return float(dist.get_rank()) if dist.is_initialized() else 0.0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        self.log("step_rank", self.rank() + batch_idx)  # on_step: the last, rank 0's
        self.log("epoch_rank", self.rank(), on_epoch=True, sync_dist=True)
        return output

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("rank_own", self.rank())  # each process its own: rank 0's is recorded
        self.log("rank_synced", self.rank(), sync_dist=True)  # the mean over processes
        self.log("rank_summed", self.rank() + 1, reduce_fx="sum", sync_dist=True)
        self.val_mean.update(batch[1].float())
        self.log("label_mean", self.val_mean)  # computed over every process's samples
