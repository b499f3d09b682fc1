"""A LightningModule's step methods called through a wrapper's forward, so that DDP sees them.

DDP synchronises gradients for what runs inside its `forward`; a `training_step` called on the
module directly skips the all-reduce and the processes part silently (FRAMEWORK_NOTES,
2026-12-01: 1e-1 apart in 6 steps). Fabric's wrapper redirects the step methods through forward
itself; torch's DistributedDataParallel and Accelerate's `prepare` have no such redirect, so the
plain and Accelerate runners wrap the module in this and call `wrapper("training_step", ...)`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn


class StepsThroughForward(nn.Module):
    """`wrapper(name, *args)` calls `module.name(*args)` inside forward."""

    def __init__(self, module: L.LightningModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, method)(*args, **kwargs)
