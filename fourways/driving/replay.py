"""A user's LightningModule trained in this process as N processes x K micro-batches would train it.

parity.replay replays the task's MLP; this replays any LightningModule and LightningDataModule
(classes.Choice), so that compare.py can tell, for a user's model, rounding from another training:
in float64 two groupings of the same samples per step land within parity.SAME_SAMPLES_FLOAT64_TOL
of one device (parity's docstring says why), and a model whose steps depend on how the samples are
split (BatchNorm's per-process statistics, per-process random masks, a summed loss) does not.

What each rank does is what it does in a real run: its own micro-batches (parity's groupings:
DistributedSampler's interleaving, or Accelerate's whole batches dealt round-robin), its own
copy of torch's global RNG (every process seeds the same: the Trainer's stream, see `build`), what
each `iter(DataLoader)` draws from it, the loss divided by K, DDP's gradient combination
(parity.all_reduce_mean). On one device and on two processes it equals the Trainer's weights bit
for bit (WarmupMLP, BatchNormDropoutMLP: measured). The scheduler steps as the Trainer steps it:
an interval "step" scheduler right after each optimizer step, an "epoch" one after the epoch's
last (requirements.Optimization, the runners' own rule).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from fourways import parity, settings
from fourways.driving import classes, requirements
from fourways.driving.trace import WeightTrace


@dataclass(frozen=True)
class Training:
    """One training of a user's (or the task's) classes, as N processes x K micro-batches run it.

    For a user's DataModule, `data.init_args["batch_size"]` is the per-process batch the run was
    given; the task's DataModule splits its global batch itself (set_micro_batch_size)."""

    model: classes.Choice
    data: classes.Choice
    seed: int = settings.DEFAULTS.seed
    epochs: int = settings.DEFAULTS.epochs
    processes: int = 1
    accumulate: int = 1
    grouping: str = parity.INTERLEAVED


def task_args(s: settings.Settings = settings.DEFAULTS) -> argparse.Namespace:
    """The hand-written runners' namespace for `s`: what classes.build gives the task's classes."""
    return argparse.Namespace(**{o.dest: getattr(s, o.key) for o in settings.OPTIONS})


def with_batch_size(choice: classes.Choice, batch_size: int) -> classes.Choice:
    """A user's DataModule choice with its (per-process) batch_size set."""
    given = tuple(g for g in choice.given if not g.startswith("--batch_size="))
    return dataclasses.replace(
        choice,
        given=(*given, f"--batch_size={batch_size}"),
        init_args={**choice.init_args, "batch_size": batch_size},
    )


@contextlib.contextmanager
def silenced(module: L.LightningModule) -> Iterator[None]:
    """`self.log` and `self.log_dict` as no-ops on this instance (they need a Trainer)."""
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log, module.log_dict


def build(t: Training, args: argparse.Namespace | None = None) -> tuple[Any, Any]:
    """Seed, then the module and the DataModule (set up for fit), as the Trainer builds them.

    Under DDP the Trainer seeds again once the process group is up (lightning's `reset_seed`
    in DDPStrategy.setup_distributed), after the classes are built and before their `setup`:
    so does this, on more than one process (it moves what training_step draws)."""
    args = args or task_args()
    L.seed_everything(t.seed, verbose=False)
    module = classes.build(t.model, args)
    data = classes.build(t.data, args)
    if t.processes > 1:
        L.seed_everything(t.seed, verbose=False)
    data.setup("fit")
    module.setup("fit")
    if hasattr(data, "set_micro_batch_size"):  # the task's: a global batch, split here
        data.set_micro_batch_size(t.processes, t.accumulate)
    return module, data


def optimization(module: L.LightningModule, name: str) -> requirements.Optimization:
    """The module checked as the runners check it, and its one optimizer and scheduler."""
    requirements.check_module(module, name)
    return requirements.configure(module, name)


def is_random(sampler: Any) -> bool:
    return isinstance(sampler, (RandomSampler, DistributedSampler))


def epoch_indices(loader: DataLoader, t: Training, epoch: int) -> list[list[list[int]]]:
    """Each rank's micro-batches (lists of sample indices) of one epoch, in training order."""
    if loader.batch_size is None:
        raise ValueError("a loader without a batch_size (a batch_sampler) is not replayed")
    size, n, sampler = loader.batch_size, t.processes, loader.sampler
    if n > 1 and t.grouping == parity.INTERLEAVED:  # the runners' DistributedSampler
        per_rank = []
        for rank in range(n):
            ds = DistributedSampler(
                loader.dataset, n, rank, shuffle=is_random(sampler), seed=t.seed
            )
            ds.set_epoch(epoch)
            per_rank.append(chunks(list(ds), size, loader.drop_last))
        return per_rank
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    batches = chunks(list(sampler), size, loader.drop_last)
    per_rank = [batches[rank::n] for rank in range(n)]
    longest = max(len(b) for b in per_rank)
    for b in per_rank:  # Accelerate's even_batches: the short ranks wrap round to the start
        b += batches[: longest - len(b)]
    return per_rank


def chunks(order: list[int], size: int, drop_last: bool) -> list[list[int]]:
    out = [order[i : i + size] for i in range(0, len(order), size)]
    return out[:-1] if drop_last and out and len(out[-1]) < size else out


def fetch(loader: DataLoader, indices: list[int], dtype: torch.dtype) -> Any:
    """The loader's batch of these samples, its floating tensors in `dtype`."""
    dataset = loader.dataset
    if hasattr(dataset, "__getitems__"):
        samples = dataset.__getitems__(indices)
    else:
        samples = [dataset[i] for i in indices]
    batch = loader.collate_fn(samples)
    return apply_to_collection(
        batch, torch.Tensor, lambda x: x.to(dtype) if x.is_floating_point() else x
    )


def loss_of(output: Any) -> torch.Tensor | None:
    """training_step's loss, in any form Lightning takes (a tensor, a dict with "loss", None)."""
    if isinstance(output, Mapping):
        return output.get("loss")
    return output


class Replayer:
    """One replay: the module, its optimizer and schedulers, and each rank's RNG state."""

    def __init__(self, t: Training, dtype: torch.dtype, args: argparse.Namespace | None) -> None:
        self.t = t
        self.dtype = dtype
        self.module, self.data = build(t, args)
        self.module.to(dtype)
        self.module.train()
        self.optimization = optimization(self.module, t.model.path)
        self.optimizer = self.optimization.optimizer
        self.loader = self.data.train_dataloader()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.rng = [torch.get_rng_state() for _ in range(t.processes)]  # the same seed in each
        self.step = 0
        base = L.LightningDataModule.val_dataloader
        self.validates = getattr(type(self.data), "val_dataloader", base) is not base

    def rank_grads(
        self, rank: int, micro: list[list[int]], first: int
    ) -> list[torch.Tensor | None]:
        """One rank's gradient over its micro-batches of one optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(self.rng[rank])
        for i, indices in enumerate(micro):
            loss = loss_of(
                self.module.training_step(fetch(self.loader, indices, self.dtype), first + i)
            )
            if loss is not None:
                (loss / self.t.accumulate).backward()
        self.rng[rank] = torch.get_rng_state()
        return [p.grad for p in self.params]

    def optimizer_step(self, per_rank: list[list[list[int]]], group: int) -> None:
        """DDP's step: every rank's gradient, combined, then the optimizer and "step" schedulers."""
        k, grads, kept = self.t.accumulate, [], {}
        for rank, batches in enumerate(per_rank):
            grads.append(self.rank_grads(rank, batches[group * k : (group + 1) * k], group * k))
            if rank == 0:  # DDP broadcasts rank 0's buffers before every forward: rank 0's stay
                kept = {name: b.clone() for name, b in self.module.named_buffers()}
        with torch.no_grad():
            for name, b in self.module.named_buffers():
                b.copy_(kept[name])
        for p, rank_grads in zip(self.params, zip(*grads, strict=True), strict=True):
            if all(g is None for g in rank_grads):
                p.grad = None
                continue
            filled = [torch.zeros_like(p) if g is None else g for g in rank_grads]
            p.grad = parity.all_reduce_mean(filled)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        # The Trainer's rule: frequency counts the epoch's micro-batches, up to this step's last
        self.optimization.step_scheduler("step", min((group + 1) * k, len(per_rank[0])) - 1)

    def loader_draws(self, epoch: int | None) -> list[list[list[int]]]:
        """What each process's `iter(DataLoader)` draws from its RNG: the loader's base seed,
        then (for the training loader, `epoch` given) its sampler's order; rank 0's order."""
        orders = []
        for rank in range(self.t.processes):
            torch.set_rng_state(self.rng[rank])
            torch.empty((), dtype=torch.int64).random_()  # _BaseDataLoaderIter's base seed
            if epoch is not None:
                orders.append(epoch_indices(self.loader, self.t, epoch))
            self.rng[rank] = torch.get_rng_state()
        return orders[0] if orders else []

    def epoch(self, epoch: int, trace: WeightTrace | None) -> None:
        per_rank = self.loader_draws(epoch)
        groups = math.ceil(len(per_rank[0]) / self.t.accumulate)
        for group in range(groups):
            self.optimizer_step(per_rank, group)
            if group == groups - 1:
                self.optimization.step_scheduler("epoch", epoch)
            if trace is not None:
                trace.record(self.step, self.module, self.optimizer)
        if self.validates:
            self.loader_draws(None)  # the validation loader's iter, after the epoch's last step


def replay(
    t: Training,
    dtype: torch.dtype = torch.float32,
    num_threads: int = 1,
    trace: WeightTrace | None = None,
    args: argparse.Namespace | None = None,
) -> dict[str, torch.Tensor]:
    """The training `t` in this process; its final state_dict. `trace` records every step."""
    with parity.threads(num_threads), torch.random.fork_rng():
        r = Replayer(t, dtype, args)
        with silenced(r.module):
            if trace is not None:
                trace.record(0, r.module, r.optimizer)
            for epoch in range(t.epochs):
                r.epoch(epoch, trace)
        return {k: v.detach().clone() for k, v in r.module.state_dict().items()}
