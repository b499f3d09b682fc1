"""The run's own bookkeeping, kept by the runners and never by the user's module: each epoch's
train loss (the mean over every sample of the epoch, across all processes), the values the module
logged (fourways.driving.logs), the history of epochs, and the part of it a checkpoint carries.

All four runners use it (the Trainer through fourways/trainer_bookkeeping.py), so metrics.json
means the same everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities.data import extract_batch_size

from fourways.contract.errors import UsageError


def step_loss(output: Any, name: str) -> torch.Tensor:
    """The loss `training_step` returned: a tensor, or a dict's "loss" (Lightning's two forms)."""
    loss = output.get("loss") if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise UsageError(
            f"{name}.training_step returned {type(output).__name__}: return the loss tensor, "
            "or a dict with 'loss'"
        )
    return loss


class RunBook:
    """Train-loss sums of the epoch under way, and the finished epochs' metrics."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        # Each micro-batch's loss is listed and summed once per epoch (or checkpoint): a tensor
        # op per step costs a few % of a small model's step (profiled).
        self.step_losses: list[tuple[torch.Tensor, int]] = []
        self.loss_sum = 0.0  # this process's (rank 0: and a resumed epoch's, all processes')
        self.count = 0

    def record_loss(self, loss: torch.Tensor, batch: Any) -> None:
        """One micro-batch's mean loss, weighted by its samples."""
        self.step_losses.append((loss.detach(), extract_batch_size(batch)))

    def fold(self) -> None:
        if self.step_losses:
            losses, counts = zip(*self.step_losses, strict=True)
            weights = torch.tensor(counts, dtype=torch.float64)
            self.loss_sum += float(torch.stack(losses).double().cpu() @ weights)
            self.count += sum(counts)
            self.step_losses.clear()

    def all_processes_sums(self) -> tuple[float, int]:
        """The epoch's loss sum and sample count so far, over every process (a collective)."""
        self.fold()
        totals = torch.tensor([self.loss_sum, float(self.count)], dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            totals = totals.to(device)
            dist.all_reduce(totals)
        return float(totals[0]), int(totals[1])

    def end_epoch(self, logged: dict[str, float], epoch_s: float) -> dict[str, float]:
        """The epoch's metrics: its train loss, then what the module logged (a value the module
        logged as train_loss is its own, per step: the runners' mean over the epoch wins)."""
        loss_sum, count = self.all_processes_sums()
        metrics = {"train_loss": loss_sum / count if count else float("nan")}
        metrics |= {k: v for k, v in logged.items() if k != "train_loss"}
        metrics["epoch_s"] = epoch_s
        self.history.append(metrics)
        self.loss_sum, self.count = 0.0, 0
        return metrics

    def state(self) -> dict[str, Any]:
        """For a checkpoint (plain values): the history, and the epoch's sums over every process.
        A collective under several processes: every rank must call it."""
        loss_sum, count = self.all_processes_sums()
        return {"history": self.history, "train_loss_sums": [loss_sum, count]}

    def load_state(self, state: dict[str, Any], rank: int) -> None:
        self.history = [dict(epoch) for epoch in state["history"]]
        self.step_losses.clear()
        # The sums cover every process: one rank carries them, the others start at 0.
        loss_sum, count = state["train_loss_sums"]
        self.loss_sum, self.count = (float(loss_sum), int(count)) if rank == 0 else (0.0, 0)
