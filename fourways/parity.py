"""What a run is checked against, and why each check's bound is what it is: tests and compare.py.

Every runner's `model.pt` is compared BITWISE with an in-process replay of the same training that
follows the runner's own arithmetic: the same data order, the same samples in the same forward
pass on each process, the same gradient combination as DDP. That rule holds for any seed, task
size and CPU, because the replay runs on the same machine, with the same kernels and thread
count, and repeats the runner's operations in the runner's order; no tolerance is tuned.

Two groupings exist. With N processes each optimizer step sees the same 32 samples of the epoch's
permutation, but in other forward passes:

- interleaved (plain DDP, Fabric, the Trainer): `DistributedSampler` gives rank r every N-th index
  of the permutation, so rank r's micro-batch holds samples r, r + N, r + 2N, ... of the step;
- sharded (Accelerate's `prepare()`): the loader's batches of 32 / (N x K) samples go round-robin
  to the ranks, so with N = 2 rank 0 takes samples 0-15 of each step and rank 1 16-31 (with
  accumulation K = 2: rank 0 takes 0-7 and 16-23, rank 1 8-15 and 24-31).

DDP then combines the ranks' gradients: it multiplies each rank's gradient by 1 / N while copying
it into its bucket (torch 2.13 `Reducer`, `at::mul_out(bucket_view, grad, 1 / div_factor)`, with
the default `batched_grad_copy=False`) and all-reduces the buckets with SUM. gloo's sum of two
operands is commutative, so both ranks hold the same bits whatever the ring's order; with three
or more operands the order of gloo's sum is not reproduced here (see `MAX_BITWISE_PROCESSES`).

In float32 the two groupings round differently, and Adam amplifies it (its first updates are about
lr x sign(g): a rounding flip in a near-zero gradient moves a weight by ~lr); so a sharded run
and an interleaved run differ by rounding-sized amounts that no fixed constant bounds for every
seed and CPU. That they are the SAME optimisation is shown in float64, where rounding is 2^29
times smaller: there every grouping lands within `SAME_SAMPLES_FLOAT64_TOL` of one device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fourways import settings, task

INTERLEAVED, SHARDED = "interleaved", "sharded"

# The runners save the task's LightningModule (MLPClassifier), which holds the MLP as `model`; the
# replay, the minimal loops and the raw loop train the MLP itself, so their keys take this prefix.
TASK_MODULE_PREFIX = "model."

# gloo sums two operands in one commutative add; the reduction order of three or more is gloo's
# own (ring, chunked), which the replay does not reproduce, so bitwise checks stop at 2.
MAX_BITWISE_PROCESSES = 2

# float64 replays of the same samples per step in another grouping (N processes, K micro-batches,
# sharded or interleaved) against one device with the whole batch. Derivation: float64 rounds at
# 2^-53 = 1.1e-16, 2^29 times finer than float32's 2^-24. Over the parity sweep (5 seeds x 3 sizes,
# docs/comparison.md) float32 groupings differ by at most 2.9e-6, i.e. Adam amplifies a rounding
# of 6e-8 by at most ~50, so float64 groupings differ by ~50 x 1.1e-16 ~ 6e-15 (measured: at most
# 1e-15). A step with other samples, a forgotten 1 / K or an extra step is another training: the
# smallest such mistake measured, a loss not divided by K, moves weights by 1.5e-4. 1e-9 sits five
# orders of magnitude above the rounding and five below the smallest mistake.
SAME_SAMPLES_FLOAT64_TOL = 1e-9

# A run's per-epoch means (train loss over the epoch's samples, validation loss and accuracy over
# the validation samples) against one device's, at the default task (the tests'). Derivation: a
# mean of n float32 terms summed in another order differs by at most (n - 1) x 2^-24 relative
# (recursive summation's bound); n <= 800 gives 4.8e-5. The losses are also evaluated at weights
# that differ by the grouping's rounding (<= 2.9e-6, above), which moves a loss of ~0.6 by about
# 3e-6 x |dL/dw|_1 (~1): ~3e-6. Sum ~5e-5 -> 1e-4 (measured over the sweep, all sizes: at most
# 8.8e-7). A validation sample missing or counted twice moves the loss by |l_i - mean| / 200
# (relative: 4e-4 to 1e-3 for the median sample, as little as 1.1e-6 for one whose loss is near
# the mean) and the accuracy by acc/199 (sample wrong) or (1 - acc) / (199 acc) (sample right):
# at least 1.7e-3 relative at the default task's epochs (accuracy 0.48 to 0.75). So every such
# mistake moves val_acc by 16x the tolerance or more (tests/test_checks.py, for each sample).
EPOCH_METRIC_REL_TOL = 1e-4

# bf16-mixed must not equal fp32: with autocast every linear layer rounds its inputs to bf16 (8
# significant bits), so a run whose weights equal the fp32 reference bit for bit did not compute
# in bf16. The lower bound is "differs at all"; the bitwise check against the bf16 replay is the
# upper one.
BF16_MIN_DIFF_FROM_FP32 = 0.0


@dataclass(frozen=True)
class Setup(settings.Settings):
    """One training, as every runner is told it: the task's settings and how the run is launched
    (processes, precision, and how its processes split each step's samples)."""

    processes: int = 1
    precision: str = "32-true"
    grouping: str = INTERLEAVED

    @property
    def micro_batch(self) -> int:
        return self.global_batch_size // (self.processes * self.accumulate)


def grouping_of(runner: str, processes: int) -> str:
    """How a runner splits each step's samples over its processes (one process: no split)."""
    return SHARDED if runner == "accelerate" and processes > 1 else INTERLEAVED


Order = Callable[[Sequence, int, int], list[int]]


def epoch_order(train_set: Sequence, epoch: int, seed: int) -> list[int]:
    """The runners' order: DistributedSampler's permutation, seeded with seed + epoch."""
    sampler = task.EpochShuffleSampler(train_set, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def rank_micro_batches(order: torch.Tensor, setup: Setup) -> list[list[torch.Tensor]]:
    """Each rank's micro-batches of one epoch, in the order that rank trains them."""
    n, m = setup.processes, setup.micro_batch
    if setup.grouping == INTERLEAVED:  # DistributedSampler: every N-th index, then batches of m
        return [list(order[rank::n].split(m)) for rank in range(n)]
    batches = list(order.split(m))  # Accelerate: the loader's batches, dealt round-robin
    return [batches[rank::n] for rank in range(n)]


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """The runner's intra-op thread count (compare.py and the tests give every process 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def replay(
    setup: Setup,
    dtype: torch.dtype = torch.float32,
    num_threads: int = 1,
    divide_loss: bool = True,
    order: Order = epoch_order,
) -> dict[str, torch.Tensor]:
    """The runners' training, in this process: every rank's forward/backward, DDP's combination.

    `divide_loss=False` and `order` exist to show that the checks catch the usual mistakes.
    """
    with threads(num_threads):
        dataset = task.make_dataset(
            setup.num_samples, setup.num_features, setup.label_noise, seed=setup.seed
        )
        train_set, _ = task.split_dataset(dataset, setup.val_fraction, seed=setup.seed)
        x, y = train_set.tensors
        torch.manual_seed(setup.seed)  # as every runner seeds before building the model
        model = task.MLP(setup.num_features, setup.hidden_dim, setup.num_classes).to(dtype)
        x = x.to(dtype)
        optimizer = torch.optim.Adam(model.parameters(), lr=setup.lr)
        autocast = torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=setup.precision == "bf16-mixed"
        )
        for epoch in range(setup.epochs):
            per_rank = rank_micro_batches(torch.tensor(order(train_set, epoch, setup.seed)), setup)
            steps = len(per_rank[0]) // setup.accumulate
            for step in range(steps):
                grads = []
                for batches in per_rank:
                    optimizer.zero_grad()  # each rank accumulates its own micro-batches
                    for idx in batches[step * setup.accumulate : (step + 1) * setup.accumulate]:
                        with autocast:
                            loss = F.cross_entropy(model(x[idx]), y[idx])
                        (loss / setup.accumulate if divide_loss else loss).backward()
                    grads.append([p.grad for p in model.parameters()])
                for p, rank_grads in zip(model.parameters(), zip(*grads, strict=True), strict=True):
                    p.grad = all_reduce_mean(list(rank_grads))
                optimizer.step()
                optimizer.zero_grad()
        return as_module_keys({k: v.detach().clone() for k, v in model.state_dict().items()})


def as_module_keys(mlp_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLP's weights under the keys of the runners' model.pt (the task's LightningModule)."""
    return {TASK_MODULE_PREFIX + key: value for key, value in mlp_state.items()}


def all_reduce_mean(rank_grads: list[torch.Tensor]) -> torch.Tensor:
    """DDP's gradient: each rank's times 1 / N (as it fills the bucket), then gloo's SUM."""
    if len(rank_grads) == 1:
        return rank_grads[0]  # one process: no DDP, the gradient as backward left it
    scaled = [g * (1.0 / len(rank_grads)) for g in rank_grads]
    total = scaled[0].clone()
    for g in scaled[1:]:
        total += g
    return total


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |difference| of any weight, computed in float64; inf if the keys differ."""
    if a.keys() != b.keys():
        return float("inf")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
