"""An MLP with BatchNorm and Dropout: the runners agree on one device and part on several.

    python compare.py --model examples.batchnorm_dropout.BatchNormDropoutMLP --processes 1 2

On one device the four draw the same dropout masks and normalise over the same batch of 32. With
2 processes each normalises over its own 16 samples (BatchNorm is per process unless converted to
SyncBatchNorm) and each draws its own masks from the same seed: the same training in
distribution, not in bits. docs/your_model.md gives compare.py's verdict and the fixes.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class BatchNormDropoutMLP(L.LightningModule):
    def __init__(
        self,
        num_features: int = 10,
        num_classes: int = 2,
        width: int = 32,
        dropout: float = 0.2,
        lr: float = 1e-3,
        reseed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.reseeded = False
        self.net = nn.Sequential(
            nn.Linear(num_features, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """compare.py's fix for randomness the runners draw differently before training (the
        Trainer re-seeds DDP processes in its setup, the others do not): with `reseed`, each
        process seeds its stream once, right before its first training_step, where every runner
        calls this hook; masks then differ per process, as they should."""
        if self.hparams.reseed is not None and not self.reseeded:
            rank = dist.get_rank() if dist.is_initialized() else 0
            torch.manual_seed(self.hparams.reseed + rank)
            self.reseeded = True

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
