"""The verdict for a user's model: WHERE two trainings part (the first optimizer step, the layer)
and WHY (the causes found in the model and data, each with its fix in every framework).

WHERE compares two traces step by step (driving.trace): bitwise for runs of the same grouping,
beyond a bound otherwise. For another grouping or process count the bound is
parity.SAME_SAMPLES_FLOAT64_TOL between float64 replays (driving.replay): the same samples per
step land within it of one device, so a step beyond it is another training, not rounding.
The layer is the module of the parameter or buffer with the largest relative difference there.

WHY comes from driving.probes (the built objects and one batch) and from the traces (the
learning rates); compare.causes holds each cause's explanation and fixes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from fourways import parity
from fourways.compare.causes import Cause, cause
from fourways.driving import probes, replay
from fourways.driving.trace import Trace, WeightTrace


@dataclass(frozen=True)
class Divergence:
    """The first optimizer step at which two traces part, and where in the model."""

    step: int
    key: str  # the state_dict entry with the largest relative difference at that step
    kind: str  # "parameter", "buffer" or "entry" (unknown)
    rel_diff: float
    abs_diff: float
    bound: float  # 0: bitwise

    @property
    def layer(self) -> str:
        return self.key.rpartition(".")[0] or self.key

    def line(self, what: str) -> str:
        how = "bitwise" if self.bound == 0 else f"beyond {self.bound:g}"
        return (
            f"{what} first differ ({how}) after optimizer step {self.step}, most in layer "
            f"{self.layer} ({self.kind} {self.key}: {self.rel_diff:.1e} relative, "
            f"{self.abs_diff:.1e} absolute)"
        )


def abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(a.double().abs().max().item(), b.double().abs().max().item(), 1e-300)
    return abs_diff(a, b) / scale if a.numel() else 0.0


def float_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |difference| of the floating entries (a counter such as BatchNorm's
    num_batches_tracked counts forwards, not training)."""
    return max((abs_diff(a[k], b[k]) for k in a if a[k].is_floating_point()), default=0.0)


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], bound: float) -> list[str]:
    """The entries that differ: bitwise (bound 0), or by more than `bound` (floating ones)."""
    if bound == 0:
        return [k for k in a if not torch.equal(a[k], b[k])]
    return [k for k in a if a[k].is_floating_point() and abs_diff(a[k], b[k]) > bound]


def first_divergence(
    a: Trace, b: Trace, bound: float = 0.0, parameters: set[str] | None = None
) -> Divergence | None:
    """The first step both traces recorded at which they differ; None if they never do."""
    for step in sorted(set(a.steps) & set(b.steps)):
        wa, wb = a.weights(step), b.weights(step)
        if wa.keys() != wb.keys():
            key = sorted(wa.keys() ^ wb.keys())[0]
            inf = float("inf")
            return Divergence(step, key, "entry (in one trace only)", inf, inf, bound)
        keys = differing(wa, wb, bound)
        if keys:
            key = max(keys, key=lambda k: rel_diff(wa[k], wb[k]))
            kind = "entry" if parameters is None else "parameter" if key in parameters else "buffer"
            rel, gap = rel_diff(wa[key], wb[key]), abs_diff(wa[key], wb[key])
            return Divergence(step, key, kind, rel, gap, bound)
    return None


def lr_divergence(a: Trace, b: Trace) -> tuple[int, list[float], list[float]] | None:
    """The first step both traces recorded at which their learning rates differ."""
    for step in sorted(set(a.steps) & set(b.steps)):
        if a.lr(step) != b.lr(step):
            return step, a.lr(step), b.lr(step)
    return None


def scheduler_cause(a: Trace, b: Trace, names: tuple[str, str]) -> Cause | None:
    """Cause (e): the two runs' learning rates part at some step."""
    found = lr_divergence(a, b)
    if found is None:
        return None
    step, lr_a, lr_b = found
    return cause("scheduler", f"after step {step}: {names[0]} lr {lr_a}, {names[1]} lr {lr_b}")


def replay_trace(
    t: replay.Training,
    threads: int,
    args: argparse.Namespace | None,
    dtype: torch.dtype = torch.float64,
) -> Trace:
    """The replay of `t` (float64 by default), with its weights after every step (`final`: the
    last weights, also when the trace stopped recording at its memory cap)."""
    recorded = WeightTrace(None)  # type: ignore[arg-type]  # held in memory, never saved
    last = replay.replay(t, dtype, num_threads=threads, trace=recorded, args=args)
    trace = Trace.of(recorded)
    trace.final = last
    return trace


def replay_divergence(
    t: replay.Training,
    one: replay.Training,
    threads: int = 1,
    args: argparse.Namespace | None = None,
) -> Divergence | None:
    """Where `t` parts from one device `one` in float64 beyond SAME_SAMPLES_FLOAT64_TOL."""
    module, _ = replay.build(one, args)
    names = {n for n, _ in module.named_parameters()}
    a, b = replay_trace(t, threads, args), replay_trace(one, threads, args)
    return first_divergence(a, b, parity.SAME_SAMPLES_FLOAT64_TOL, names)


def global_batch(data: object, loader: torch.utils.data.DataLoader, t: replay.Training) -> int:
    """Samples per optimizer step: the task's global batch, or a user's batch x N x K."""
    if hasattr(data, "set_micro_batch_size"):  # the task's DataModule: its global batch
        return int(data.hparams["batch_size"])
    return int(loader.batch_size or 1) * t.processes * t.accumulate


def causes(t: replay.Training, args: argparse.Namespace | None = None) -> list[Cause]:
    """Every cause found in `t`'s model and data that makes it train otherwise than one device
    with the whole global batch (none apply to one process without accumulation)."""
    if t.processes * t.accumulate == 1:
        return []
    module, data = replay.build(t, args)
    loader = data.train_dataloader()
    found: list[Cause] = []
    if layers := probes.batchnorm_layers(module):
        found.append(cause("batchnorm", ", ".join(layers)))
    batch = probes.probe_batch(loader, torch.get_default_dtype())
    if t.processes > 1 and probes.draws_random(module, batch):
        found.append(cause("rng", "one training_step changes torch's RNG state"))
    if t.processes > 1 and (name := probes.odd_sampler(loader)):
        found.append(cause("sampler", name))
    if t.processes > 1 and (shuffle := probes.global_shuffle(loader)):
        found.append(cause("shuffle", shuffle))
    if uneven := probes.uneven_last_batch(len(loader.dataset), global_batch(data, loader, t)):
        found.append(cause("uneven", uneven))
    if reduction := probes.loss_reduction(module, batch):
        found.append(cause("loss", reduction))
    return found
