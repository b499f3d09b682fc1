"""A deeper MLP with AdamW and a per-step linear warm-up: the four runners train it identically.

    python compare.py --model examples.warmup_mlp.WarmupMLP
    python fabric_train.py --model examples.warmup_mlp.WarmupMLP --model.depth 6

Nothing in it depends on how many processes share a batch: no batch statistics, no randomness
after initialisation, a loss averaged over the batch. The scheduler steps every optimizer step
(`"interval": "step"`), which each runner honours as the Trainer does.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class WarmupMLP(L.LightningModule):
    """`depth` hidden layers of `width` units; AdamW with the learning rate ramped up linearly
    over `warmup_steps` optimizer steps, then held."""

    def __init__(
        self,
        num_features: int = 10,
        num_classes: int = 2,
        width: int = 64,
        depth: int = 4,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        warmup_steps: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(num_features if i == 0 else width, width), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / hp.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}
