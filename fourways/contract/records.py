"""The run's record: `metrics.json` (the contract's fields, the same for every runner) and
`model.pt` (the LightningModule's plain state_dict), written by rank 0 at the end.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fourways.contract.checkpoint_io import atomic_write


def framework_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "lightning", "accelerate", "torchmetrics"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


@dataclass
class RunRecord:
    """What `metrics.json` holds: the contract's fields, the same for every runner."""

    runner: str
    world_size: int
    device: str
    precision: str
    seed: int
    global_batch_size: int
    per_device_batch_size: int
    accumulate_grad_batches: int
    optimizer_steps: int
    wall_clock_s: float
    config: dict[str, Any]  # the run's configuration, as its checkpoints record it
    epochs: list[dict[str, float]]
    # Parameters + optimizer state held by rank 0 at the end (its shards under FSDP2).
    state_bytes_per_process: int | None = None

    def to_json(self) -> dict[str, Any]:
        fields = dict(vars(self), epochs=[{"epoch": i + 1, **m} for i, m in enumerate(self.epochs)])
        return {"runner": fields.pop("runner"), "versions": framework_versions(), **fields}


def state_bytes(parameters: Iterable[torch.Tensor], optimizer: Any) -> int | None:
    """Bytes of parameters and optimizer state that this process holds: under FSDP2 its local
    shards (a DTensor's `to_local()`), under DDP full copies. Gradients are freed by then.
    None for an optimizer that is not torch's (DeepSpeed's keeps its state its own way)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(optimizer, torch.optim.Optimizer):
        return None

    held = [*parameters]
    held += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in held]
    return sum(t.numel() * t.element_size() for t in local)


def save_run(run_dir: Path, record: RunRecord, model_state: dict[str, torch.Tensor]) -> None:
    """Rank 0's outputs: `metrics.json`, then the LightningModule's `state_dict` as `model.pt`."""
    state = {k: v.detach().cpu().clone() for k, v in model_state.items()}
    text = json.dumps(record.to_json(), indent=2) + "\n"
    atomic_write(run_dir / "metrics.json", lambda p: p.write_text(text))
    atomic_write(run_dir / "model.pt", lambda p: torch.save(state, p))
    print(f"run saved in {run_dir} (model.pt, metrics.json)", flush=True)
