"""fourways/parity.py's claims, in-process (no runner started): the groupings it replays are the
loaders' own, they are the same training as one device, and its float64 check catches the usual
mistakes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import default_shuffle_order
from torch.utils.data import DistributedSampler

from fourways import parity, task

FLOAT64 = torch.float64
# The same samples per step, other forward passes: every grouping the runners use.
GROUPINGS = [
    parity.Setup(accumulate=2),
    parity.Setup(processes=2),
    parity.Setup(processes=2, grouping=parity.SHARDED),
    parity.Setup(processes=2, accumulate=2),
    parity.Setup(processes=2, accumulate=2, grouping=parity.SHARDED),
]


@pytest.mark.parametrize(("seed", "num_samples"), [(42, 1000), (1, 320), (2, 320)])
def test_every_grouping_is_one_device_training_in_float64(seed: int, num_samples: int) -> None:
    one_device = parity.replay(parity.Setup(num_samples=num_samples, seed=seed), FLOAT64)
    for grouping in GROUPINGS:
        setup = replace(grouping, num_samples=num_samples, seed=seed)
        gap = parity.max_abs_diff(parity.replay(setup, FLOAT64), one_device)
        assert gap <= parity.SAME_SAMPLES_FLOAT64_TOL, (setup, gap)  # measured ~1e-16


def test_the_float64_check_catches_the_usual_mistakes() -> None:
    one_device = parity.replay(parity.Setup(), FLOAT64)
    mistakes = {
        # shuffle=True: a RandomSampler drawing from the global RNG (measured 2.6e-2 away)
        "order left to a default": parity.replay(parity.Setup(), FLOAT64,
                                                 order=default_shuffle_order),
        # Adam is nearly blind to the loss scale, not quite (measured 1.5e-4)
        "loss not divided by K": parity.replay(parity.Setup(accumulate=2), FLOAT64,
                                               divide_loss=False),
        # an optimizer step after every micro-batch of 16 (measured 0.12)
        "a step per micro-batch": parity.replay(parity.Setup(global_batch_size=16), FLOAT64),
    }  # fmt: skip
    for mistake, weights in mistakes.items():
        gap = parity.max_abs_diff(weights, one_device)
        assert gap > 1e3 * parity.SAME_SAMPLES_FLOAT64_TOL, f"{mistake}: only {gap:.1e}"


def dealt_by_distributed_sampler(train_set, micro: int, epoch: int) -> list[list[list[int]]]:
    """Each rank's micro-batches from torch's DistributedSampler (plain DDP, Fabric, Trainer)."""
    per_rank = []
    for rank in (0, 1):
        sampler = DistributedSampler(train_set, 2, rank, seed=task.SEED)
        sampler.set_epoch(epoch)
        per_rank.append([b.tolist() for b in torch.tensor(list(sampler)).split(micro)])
    return per_rank


def dealt_by_accelerate(data, epoch: int) -> list[list[list[int]]]:
    """Each rank's micro-batches from Accelerate's prepare(), as accelerate_train.py sets it up."""
    from accelerate.data_loader import prepare_data_loader

    row = {tuple(x.tolist()): i for i, x in enumerate(data.train_set.tensors[0])}
    per_rank = []
    for rank in (0, 1):
        loader = prepare_data_loader(data.train_dataloader(), num_processes=2, process_index=rank,
                                     put_on_device=False, even_batches=False)  # fmt: skip
        loader.set_epoch(epoch)
        per_rank.append([[row[tuple(x.tolist())] for x in xb] for xb, _ in loader])
    return per_rank


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_replay_deals_samples_as_the_runners_loaders_do(accumulate: int) -> None:
    from datamodule import TaskDataModule

    data = TaskDataModule()
    data.setup("fit")
    micro = data.set_micro_batch_size(world_size=2, accumulate=accumulate)
    for epoch in range(task.EPOCHS):
        order = torch.tensor(parity.epoch_order(data.train_set, epoch, task.SEED))
        dealt = {
            parity.INTERLEAVED: dealt_by_distributed_sampler(data.train_set, micro, epoch),
            parity.SHARDED: dealt_by_accelerate(data, epoch),
        }
        for grouping, per_rank in dealt.items():
            setup = parity.Setup(processes=2, accumulate=accumulate, grouping=grouping)
            replayed = parity.rank_micro_batches(order, setup)
            assert per_rank == [[b.tolist() for b in rank] for rank in replayed], (epoch, grouping)
            # Either way, each optimizer step sees exactly the one-device step's 32 samples.
            for step in range(len(per_rank[0]) // accumulate):
                steps = slice(step * accumulate, (step + 1) * accumulate)
                taken = sorted(i for rank in per_rank for batch in rank[steps] for i in batch)
                assert taken == sorted(order[32 * step : 32 * (step + 1)].tolist())
