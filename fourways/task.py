"""The task, defined once: the data, the split, the model, the data order and the defaults.

This is all that the minimal loops in `minimal/` import, and what the full runners train. It
needs torch alone. The full runners' shared promises (arguments, run directories, records,
checkpoints, errors) live in `fourways.contract`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import RandomSampler, TensorDataset

from fourways.workarounds.torch_runtime import register_default_collate

# The original project's task; every runner and test reads these defaults from here.
NUM_SAMPLES = 1000
NUM_FEATURES = 10
NUM_CLASSES = 2
HIDDEN_DIM = 32
LABEL_NOISE = 0.1
VAL_FRACTION = 0.2
SEED = 42
GLOBAL_BATCH_SIZE = 32  # split over processes: 2 processes take 16 each per step
LEARNING_RATE = 1e-3
EPOCHS = 5


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def make_dataset(
    num_samples: int = NUM_SAMPLES,
    num_features: int = NUM_FEATURES,
    label_noise: float = LABEL_NOISE,
    seed: int = SEED,
) -> TensorDataset:
    """x ~ N(0, 1); label 1 where x0 + x1 > 0; then exactly `label_noise` of the labels flipped.

    A private generator keeps the data independent of the global RNG, so that seeding order
    in a runner (model first or data first) cannot change the model's initial weights.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, num_features, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    flipped = torch.randperm(num_samples, generator=generator)[: round(label_noise * num_samples)]
    y[flipped] = 1 - y[flipped]
    return TensorDataset(x, y)


def split_dataset(
    dataset: TensorDataset, val_fraction: float = VAL_FRACTION, seed: int = SEED
) -> tuple[TensorDataset, TensorDataset]:
    """A seeded, disjoint train/validation split (800/200 by default), the same in every process."""
    num_val = round(val_fraction * len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 1))
    train_idx, val_idx = order[num_val:], order[:num_val]
    x, y = dataset.tensors
    return (
        BatchTensorDataset(x[train_idx], y[train_idx]),
        BatchTensorDataset(x[val_idx], y[val_idx]),
    )


class BatchTensorDataset(TensorDataset):
    """A `TensorDataset` that fetches a batch with one index per tensor instead of one per sample.

    Use it like any dataset: `DataLoader(train_set, batch_size=32)` yields `[x, y]` batches, and
    a `collate_fn` of your own receives the usual list of `(x, y)` samples. Fetching 32 samples
    one by one and stacking them costs ~150 us a step here, as much as the model's forward and
    backward; the DataLoader asks `__getitems__` for the whole batch instead (same batches).
    """

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices)
        return Batch(tuple(t[index] for t in self.tensors))


class Sample(tuple):
    """One `(x, y)` sample taken out of a `Batch`."""


class Batch(Sequence):
    """A fetched batch that reads as a sequence of samples, built already."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Sample(t[i] for t in self.tensors)


def collate_batch(samples: Sequence[Sample], *, collate_fn_map: Any = None) -> list[torch.Tensor]:
    """default_collate's rule for samples of a `Batch`: hand back its tensors, nothing to stack."""
    if isinstance(samples, Batch):
        return list(samples.tensors)
    return [torch.stack(column) for column in zip(*samples, strict=True)]


# The DataLoader's default collate (and so every framework's) then returns a Batch's tensors as
# they are: torch's documented extension, through a private module (see torch_runtime).
register_default_collate(Sample, collate_batch)


class EpochShuffleSampler(RandomSampler):
    """Reshuffles every epoch from `seed + epoch`: one replica's view of `DistributedSampler`.

    torch's `DistributedSampler(shuffle=True, seed=s)` orders epoch e by `randperm(n)` seeded with
    s + e and gives rank r every N-th index. Walking that same order on one device makes one
    device with batch 32 take the same samples per step as N devices with 32 / N each, which is
    what lets the runners agree bit for bit. It subclasses `RandomSampler` so that the Trainer
    and Fabric, under DDP, recognise a shuffled loader and swap in their `DistributedSampler`
    (seeded with the same seed through `seed_everything`).
    """

    def __init__(self, data_source: Sequence[Any], seed: int = SEED) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """10 -> 32 -> ReLU -> 2 logits: 418 parameters (the original README's "~700" was wrong)."""

    def __init__(
        self,
        num_features: int = NUM_FEATURES,
        hidden_dim: int = HIDDEN_DIM,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(num_features, hidden_dim)
        self.out = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))
