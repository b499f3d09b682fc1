"""What in a user's model or data makes N processes (or K micro-batches) train otherwise than one
device: found by looking at the built objects and by small probes on one batch.

Each finder answers with a short detail (what it saw) or None. They never train: a probe runs
one training_step (or a forward) on a copy, inside torch.random.fork_rng, so the caller's RNG and
module are untouched. compare.diagnosis turns what they find into causes with their fixes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from fourways.driving import replay

PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
KNOWN_SAMPLERS = (RandomSampler, SequentialSampler, DistributedSampler)
# A loss is "a mean over the batch" when the whole batch's equals the mean of its halves' within
# this relative error (computed in float64, with dropout off and BatchNorm on running statistics:
# what is left is summation rounding, ~1e-16; a summed loss is off by a factor 2).
MEAN_REL_TOL = 1e-9


def batchnorm_layers(module: nn.Module) -> list[str]:
    """The names of BatchNorm layers that normalise over their own process's batch only."""
    return [name for name, m in module.named_modules() if isinstance(m, PLAIN_BATCHNORMS)]


def odd_sampler(loader: DataLoader) -> str | None:
    """The training sampler's class when the frameworks would each distribute it their own way."""
    sampler = loader.sampler
    if isinstance(sampler, KNOWN_SAMPLERS):
        return None
    return f"{type(sampler).__module__}.{type(sampler).__qualname__}"


def global_shuffle(loader: DataLoader) -> str | None:
    """A RandomSampler without set_epoch: one device orders each epoch from torch's global RNG
    (or the sampler's generator), where DDP's DistributedSampler orders it from seed + epoch."""
    sampler = loader.sampler
    if not isinstance(sampler, RandomSampler) or hasattr(sampler, "set_epoch"):
        return None
    source = "its own generator" if sampler.generator is not None else "torch's global RNG"
    return f"{type(sampler).__qualname__} drawing from {source}"


def uneven_last_batch(train_samples: int, global_batch: int) -> str | None:
    """The last step's samples when the training set is not a whole number of global batches."""
    rest = train_samples % global_batch
    if rest == 0:
        return None
    whole = train_samples // global_batch
    return f"{train_samples} training samples = {whole} x {global_batch} + {rest}"


def probe_batch(loader: DataLoader, dtype: torch.dtype) -> Any:
    """The epoch's first micro-batch, in the sampler's order for epoch 0."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    with torch.random.fork_rng():
        order = list(sampler)
    return replay.fetch(loader, order[: loader.batch_size or 1], dtype)


def draws_random(module: Any, batch: Any) -> bool:
    """Whether one training_step (train mode) draws from torch's global RNG."""
    probe = copy.deepcopy(module)
    probe.train()
    with torch.random.fork_rng(), replay.silenced(probe):
        before = torch.get_rng_state()
        probe.training_step(batch, 0)
        return not torch.equal(before, torch.get_rng_state())


def split_batch(batch: Any, parts: int) -> list[Any]:
    """The batch cut along its first dimension into `parts` equal pieces (a remainder dropped)."""
    sizes = {t.shape[0] for t in _tensors(batch)}
    size = min(sizes) // parts if sizes else 0
    if size == 0:
        return []
    return [_rows(batch, i * size, (i + 1) * size) for i in range(parts)]


def _rows(batch: Any, start: int, stop: int) -> Any:
    """Rows start:stop of every batched tensor in the batch (a 0-d tensor as it is)."""
    return apply_to_collection(batch, torch.Tensor, lambda t: t[start:stop] if t.dim() else t)


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch] if batch.dim() else []
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in _tensors(v)]
    if isinstance(batch, (list, tuple)):
        return [t for v in batch for t in _tensors(v)]
    return []


def loss_reduction(module: Any, batch: Any) -> str | None:
    """None when training_step's loss is a mean over the batch; else what it is ("a sum", ...).

    Measured in float64, in eval mode (no dropout, BatchNorm on running statistics), on the
    whole batch and on its two halves."""
    halves = split_batch(batch, 2)
    if not halves:
        return None
    rows = len(_tensors(halves[0])[0])
    probe = copy.deepcopy(module).to(torch.float64).eval()
    with torch.no_grad(), torch.random.fork_rng(), replay.silenced(probe):
        whole = _loss(probe, _rows(batch, 0, 2 * rows))
        parts = [_loss(probe, h) for h in halves]
    if whole is None or any(p is None for p in parts):
        return None
    mean, total = sum(parts) / len(parts), sum(parts)
    scale = max(abs(whole), 1e-300)
    if abs(whole - mean) <= MEAN_REL_TOL * scale:
        return None
    if abs(whole - total) <= MEAN_REL_TOL * scale:
        return "a sum over the batch"
    return (
        f"not a mean over the batch (whole {whole:.6g}, halves {parts[0]:.6g} and {parts[1]:.6g})"
    )


def _loss(module: Any, batch: Any) -> float | None:
    batch = apply_to_collection(
        batch, torch.Tensor, lambda t: t.double() if t.is_floating_point() else t
    )
    loss = replay.loss_of(module.training_step(batch, 0))
    return None if loss is None else float(loss)
