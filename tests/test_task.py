"""Unit tests that pin the task itself: the data, the split, the model and the data order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from fourways import task
from fourways.contract import arguments, checkpoint_io, errors, run_dirs


def test_model_has_418_parameters() -> None:
    assert sum(p.numel() for p in task.MLP().parameters()) == 418


def test_labels_follow_the_rule_except_ten_percent_flipped() -> None:
    x, y = task.make_dataset().tensors
    assert x.shape == (1000, 10) and y.shape == (1000,)
    rule = (x[:, 0] + x[:, 1] > 0).long()
    assert (y != rule).sum().item() == 100  # exactly 10 % of 1000


def test_dataset_depends_on_the_seed_only() -> None:
    torch.manual_seed(0)  # the global RNG must not matter
    a = task.make_dataset(seed=7)
    torch.manual_seed(1)
    b = task.make_dataset(seed=7)
    c = task.make_dataset(seed=8)
    assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors, strict=True))
    assert not torch.equal(a.tensors[0], c.tensors[0])


def test_split_is_800_200_identical_across_calls_and_disjoint() -> None:
    train, val = task.split_dataset(task.make_dataset())
    train2, val2 = task.split_dataset(task.make_dataset())
    assert (len(train), len(val)) == (800, 200)
    assert torch.equal(train.tensors[0], train2.tensors[0])
    assert torch.equal(val.tensors[0], val2.tensors[0])
    rows = {tuple(r.tolist()) for r in train.tensors[0]}
    assert not rows & {tuple(r.tolist()) for r in val.tensors[0]}
    assert len(rows) + len(val) == 1000


@pytest.mark.parametrize("epoch", [0, 3])
def test_one_device_walks_the_order_of_distributed_sampler(epoch: int) -> None:
    train, _ = task.split_dataset(task.make_dataset())
    ours = task.EpochShuffleSampler(train, seed=42)
    ours.set_epoch(epoch)
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(train, num_replicas=2, rank=rank, shuffle=True, seed=42)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    order = list(ours)
    # Rank r takes every 2nd index: the step-k batches of 16 on two ranks hold exactly the
    # samples of the step-k batch of 32 on one device.
    for step in range(len(order) // 32):
        both = shards[0][16 * step : 16 * step + 16] + shards[1][16 * step : 16 * step + 16]
        assert sorted(both) == sorted(order[32 * step : 32 * step + 32])


def test_global_batch_is_split_or_refused() -> None:
    assert (
        arguments.micro_batch_size(32, world_size=2, accumulate=1, num_train=800, num_val=200) == 16
    )
    assert (
        arguments.micro_batch_size(32, world_size=2, accumulate=2, num_train=800, num_val=200) == 8
    )
    with pytest.raises(errors.UsageError, match="not divisible"):
        arguments.micro_batch_size(32, world_size=3, accumulate=1, num_train=800, num_val=200)
    with pytest.raises(errors.UsageError, match="training samples"):
        arguments.micro_batch_size(32, world_size=2, accumulate=1, num_train=801, num_val=200)
    with pytest.raises(errors.UsageError, match="validation samples"):
        arguments.micro_batch_size(32, world_size=16, accumulate=1, num_train=800, num_val=200)


@pytest.mark.parametrize("world_size", [3, 5, 6, 7, 12, 16])
@pytest.mark.parametrize("accumulate", [1, 3])
def test_a_refused_split_names_combinations_that_work(world_size: int, accumulate: int) -> None:
    """The advice is followed, as a user would: every combination it names is accepted."""
    with pytest.raises(errors.UsageError) as refused:
        arguments.micro_batch_size(32, world_size, accumulate, *arguments.split_sizes(1000))
    advice = str(refused.value)
    batch, samples = map(int, re.search(r"batch size of (\d+) and (\d+) samples", advice).groups())
    arguments.micro_batch_size(batch, world_size, accumulate, *arguments.split_sizes(samples))
    fitting = re.search(r"settings fit ([\d, or]+) process", advice)
    if accumulate == 3:  # 32 is not a multiple of 3: no process count can help
        assert fitting is None and "no process count fits" in advice
        return
    for n in map(int, re.findall(r"\d+", fitting.group(1))):
        arguments.micro_batch_size(32, n, accumulate, *arguments.split_sizes(1000))


def test_run_dirs_are_versioned(tmp_path: Path) -> None:
    assert run_dirs.next_run_dir(tmp_path, "torch") == tmp_path / "torch" / "version_0"
    (tmp_path / "torch" / "version_0").mkdir(parents=True)
    (tmp_path / "torch" / "version_7").mkdir()
    assert run_dirs.next_run_dir(tmp_path, "torch") == tmp_path / "torch" / "version_8"


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def broken(path: Path) -> None:
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint_io.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_task_datasets_work_in_any_loop_a_learner_writes() -> None:
    train, _ = task.split_dataset(task.make_dataset())
    x, y = train.tensors
    # The plain call, default collate: whole batches, equal to indexing the tensors directly.
    loader = DataLoader(train, batch_size=32, sampler=task.EpochShuffleSampler(train))
    order = list(task.EpochShuffleSampler(train))
    batches = list(loader)
    assert len(batches) == 25
    for step, (bx, by) in enumerate(batches):
        idx = order[step * 32 : (step + 1) * 32]
        assert torch.equal(bx, x[idx]) and torch.equal(by, y[idx])
    # A collate_fn of one's own receives (x, y) samples, as from any map-style dataset.
    samples = next(iter(DataLoader(train, batch_size=4, collate_fn=list)))
    assert len(samples) == 4 and all(len(s) == 2 and s[0].shape == (10,) for s in samples)
    assert torch.equal(samples[1][0], x[1]) and samples[1][1] == y[1]
    stacked = next(iter(DataLoader(train, batch_size=4, collate_fn=default_collate)))
    assert torch.equal(stacked[0], x[:4]) and torch.equal(stacked[1], y[:4])
    # One sample at a time, as TensorDataset gives it.
    assert torch.equal(train[5][0], x[5])
