"""What a LightningModule must offer to be trained the same way by all four runners, checked
before anything trains; and the one optimizer (and at most one scheduler) it configures.

The contract (README, "Your model"): automatic optimization; `training_step` returning a loss
tensor or a dict with "loss"; `configure_optimizers` returning one optimizer, optionally with one
scheduler stepped per "step" or per "epoch" as Lightning's dict form says; the hooks the
hand-written loops call (HOOKS_CALLED) and no other loop hook overridden. Anything else is refused
in one line (errors.UsageError) that names what is unsupported.

`configure_optimizers` has no public normaliser in Lightning (the Trainer's is private, and
Fabric never calls it), so the documented return forms are read here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from fourways.contract.errors import UsageError

# The LightningModule hooks every runner calls, at the Trainer's points.
HOOKS_CALLED = (
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_save_checkpoint", "on_load_checkpoint", "setup", "teardown", "configure_model",
)  # fmt: skip
# Loop hooks the Trainer calls and the hand-written loops do not: overriding one would make the
# Trainer train something else than the others.
HOOKS_REFUSED = (
    "backward", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "optimizer_step", "optimizer_zero_grad", "on_before_zero_grad", "lr_scheduler_step",
    "configure_gradient_clipping", "on_before_batch_transfer", "on_after_batch_transfer",
    "transfer_batch_to_device",
)  # fmt: skip
INTERVALS = ("step", "epoch")


@dataclass
class Optimization:
    """The module's optimizer and scheduler, and when the scheduler steps (the Trainer's rule)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # torch.optim.lr_scheduler.LRScheduler, or None
    interval: str = "epoch"
    frequency: int = 1

    def after_optimizer_step(self, batch_idx: int, epoch: int, epoch_ends: bool) -> None:
        """The schedulers after an optimizer step, in the Trainer's order: a "step" one, then on
        the epoch's last batch an "epoch" one (before that batch's on_train_batch_end)."""
        self.step_scheduler("step", batch_idx)
        if epoch_ends:
            self.step_scheduler("epoch", epoch)

    def step_scheduler(self, interval: str, index: int) -> None:
        """After an optimizer step (`interval` "step", `index` = the batch's index in its epoch)
        or after the epoch's last one ("epoch", `index` = the epoch), as the Trainer steps it:
        when the interval matches and `index + 1` is a multiple of the frequency."""
        if self.scheduler is None or interval != self.interval:
            return
        if (index + 1) % self.frequency == 0:
            self.scheduler.step()


def overridden(module: L.LightningModule, hook: str) -> bool:
    return getattr(type(module), hook, None) is not getattr(L.LightningModule, hook, None)


def check_module(module: L.LightningModule, name: str) -> None:
    """Refuse a module the four runners cannot train alike (one line naming what is not)."""
    if not module.automatic_optimization:
        raise UsageError(
            f"{name} uses manual optimization (automatic_optimization = False): only "
            "automatic optimization is supported"
        )
    for hook in ("training_step", "configure_optimizers"):
        if not overridden(module, hook):
            raise UsageError(f"{name} has no {hook}: a module must define it")
    refused = [hook for hook in HOOKS_REFUSED if overridden(module, hook)]
    if refused:
        raise UsageError(
            f"{name} overrides {', '.join(refused)}: only the Trainer would call it, so the "
            "runners would train differently; leave the loop's steps to the runners"
        )


def configure(module: L.LightningModule, name: str) -> Optimization:
    """`module.configure_optimizers()`, read in each form Lightning documents; refused unless it
    is one optimizer with at most one scheduler."""
    try:
        returned = module.configure_optimizers()
    except Exception as err:  # e.g. it reads self.trainer: "... is not attached to a Trainer"
        raise UsageError(
            f"{name}.configure_optimizers raised {type(err).__name__}: {err}"
        ) from None
    return optimization_of(returned, name)


def optimization_of(returned: Any, name: str) -> Optimization:
    """What configure_optimizers returned, read; refused unless it is one optimizer with at most
    one scheduler."""
    optimizers, schedulers = split_return(returned, name)
    if len(optimizers) != 1:
        raise UsageError(
            f"{name}.configure_optimizers returned {len(optimizers)} optimizers: one is "
            "supported (several need manual optimization)"
        )
    if len(schedulers) > 1:
        raise UsageError(f"{name}.configure_optimizers returned {len(schedulers)} schedulers: "
                         "at most one is supported")  # fmt: skip
    optimization = Optimization(optimizers[0])
    if schedulers:
        read_scheduler(optimization, schedulers[0], name)
    return optimization


def split_return(returned: Any, name: str) -> tuple[list[Any], list[Any]]:
    """Optimizers and scheduler entries: an optimizer; a list of them; ([optimizers],
    [schedulers]); a dict with "optimizer" (and "lr_scheduler"); a list of such dicts."""
    if isinstance(returned, torch.optim.Optimizer):
        return [returned], []
    if isinstance(returned, Mapping):
        returned = [returned]
    if (
        isinstance(returned, Sequence)
        and len(returned) == 2
        and all(isinstance(part, Sequence) for part in returned)
    ):
        return list(returned[0]), list(returned[1])
    if isinstance(returned, Sequence) and returned:
        if all(isinstance(item, Mapping) for item in returned):
            for item in returned:
                if "optimizer" not in item:
                    raise UsageError(f"{name}.configure_optimizers: a dict without 'optimizer'")
            return [item["optimizer"] for item in returned], [
                item["lr_scheduler"] for item in returned if item.get("lr_scheduler")
            ]
        if all(isinstance(item, torch.optim.Optimizer) for item in returned):
            return list(returned), []
    raise UsageError(
        f"{name}.configure_optimizers returned {type(returned).__name__}: return an optimizer, "
        "or a dict with 'optimizer' and 'lr_scheduler' (Lightning's documented forms)"
    )


def read_scheduler(optimization: Optimization, entry: Any, name: str) -> None:
    """A scheduler, or Lightning's dict {"scheduler", "interval", "frequency", ...}."""
    config = dict(entry) if isinstance(entry, Mapping) else {"scheduler": entry}
    scheduler = config.get("scheduler")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or config.get("monitor"):
        raise UsageError(
            f"{name}: a scheduler that monitors a metric (ReduceLROnPlateau) is not supported"
        )
    if not hasattr(scheduler, "step") or not hasattr(scheduler, "state_dict"):
        raise UsageError(f"{name}.configure_optimizers: lr_scheduler has no scheduler")
    if getattr(scheduler, "optimizer", optimization.optimizer) is not optimization.optimizer:
        raise UsageError(f"{name}: the scheduler steps another optimizer than the one returned")
    interval, frequency = config.get("interval", "epoch"), config.get("frequency", 1)
    if interval not in INTERVALS:
        raise UsageError(f"{name}: scheduler interval {interval!r}; use 'step' or 'epoch'")
    if not isinstance(frequency, int) or frequency < 1:
        raise UsageError(f"{name}: scheduler frequency {frequency!r}; use a positive integer")
    optimization.scheduler = scheduler
    optimization.interval, optimization.frequency = interval, frequency
