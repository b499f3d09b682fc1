"""Whether each run is the training it was asked for, and the verdict that says so.

A run agrees when its model.pt equals, bit for bit, an in-process replay of its own arithmetic
(parity.replay), its metrics.json records what was asked, and in bf16-mixed its weights differ from
the fp32 replay. The distance to plain PyTorch in the same mode is measured and reported, not
checked; for another grouping, the same steps in float64 show the gap is rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fourways import parity
from fourways.compare.plans import MINIMAL, REFERENCE, Run

RULE = (
    "A run agrees when its weights equal, bit for bit, an in-process replay of its own arithmetic "
    "(same order, same per-process forward passes, DDP's gradient combination), its metrics.json "
    "records what was asked, and in bf16-mixed its weights differ from the fp32 replay. The "
    "distance to plain PyTorch is reported, not checked."
)


def fmt_diff(value: float | None) -> str:
    """A weight difference as the report shows it: "0" when equal, "–" when not measured."""
    if value is None:
        return "–"
    return "0" if value == 0 else f"{value:.1e}"


def load_weights(run: Run) -> dict[str, Any]:
    """The weights a run saved (its model.pt), loaded as data only."""
    import torch

    weights = torch.load(run.run_dir / "model.pt", weights_only=True)
    if run.runner in MINIMAL:  # the MLP itself, not the task's LightningModule around it
        return parity.as_module_keys(weights)
    return weights


class References:
    """In-process replays (parity.replay), each computed once per training, dtype and threads."""

    def __init__(self) -> None:
        self.cache: dict[tuple, dict[str, Any]] = {}

    def get(self, setup: parity.Setup, threads: int, float64: bool = False) -> dict[str, Any]:
        import torch

        key = (setup, threads, float64)
        if key not in self.cache:
            dtype = torch.float64 if float64 else torch.float32
            self.cache[key] = parity.replay(setup, dtype, num_threads=threads)
        return self.cache[key]


def check_runs(runs: Sequence[Run]) -> None:
    """Each run against the replay of its own arithmetic; the distance to plain PyTorch beside."""
    references = References()
    for run in runs:
        if run.ok and run.mode.processes <= parity.MAX_BITWISE_PROCESSES:
            run.problems = problems(run, load_weights(run), references)
    for mode in dict.fromkeys(r.mode for r in runs):
        group = [r for r in runs if r.mode == mode and r.ok]
        reference = next((r for r in group if r.runner == REFERENCE), None)
        if reference is None:
            continue
        ref = load_weights(reference)
        for run in group:
            run.max_weight_diff = parity.max_abs_diff(load_weights(run), ref)


def problems(run: Run, weights: dict[str, Any], references: References) -> list[str]:
    """Why a run does not count as the training it was asked for; empty when it does."""
    setup, found = run.setup, []
    if run.expected_refusal:  # e.g. Accelerate trained plain DDP when FSDP was asked
        found.append(f"it trained, where it must refuse: {run.expected_refusal}")
    replayed = references.get(setup, run.threads)
    run.reference_diff = parity.max_abs_diff(weights, replayed)
    if not parity.bitwise_equal(weights, replayed):
        found.append(
            f"weights differ from the replay of its own arithmetic ({setup.grouping}) by "
            f"{fmt_diff(run.reference_diff)}; they must be equal bit for bit"
        )
    asked = {"precision": run.mode.precision, "world_size": run.mode.processes,
             "accumulate_grad_batches": run.mode.accumulate}  # fmt: skip
    assert run.metrics is not None
    for key, value in asked.items():
        if run.metrics.get(key) != value:
            found.append(f"metrics.json says {key} {run.metrics.get(key)}, asked {value}")
    if setup.precision == "bf16-mixed":
        fp32 = references.get(dataclasses.replace(setup, precision="32-true"), run.threads)
        run.fp32_diff = parity.max_abs_diff(weights, fp32)
        if run.fp32_diff <= parity.BF16_MIN_DIFF_FROM_FP32:
            found.append("weights equal the fp32 replay bit for bit: it did not compute in bf16")
    if setup.grouping != parity.INTERLEAVED:
        # The same samples per step as plain PyTorch, grouped otherwise: equal in float64.
        plain = dataclasses.replace(setup, precision="32-true", grouping=parity.INTERLEAVED)
        own = dataclasses.replace(setup, precision="32-true")
        run.float64_gap = parity.max_abs_diff(
            references.get(own, run.threads, float64=True),
            references.get(plain, run.threads, float64=True),
        )
        if run.float64_gap > parity.SAME_SAMPLES_FLOAT64_TOL:
            found.append(
                f"its grouping is {fmt_diff(run.float64_gap)} from plain PyTorch's in float64 "
                f"(> {parity.SAME_SAMPLES_FLOAT64_TOL:g}): not the same samples per step"
            )
    return found


def verdict(runs: Sequence[Run]) -> tuple[bool, list[str]]:
    """Whether every run finished and matched its replay; the lines that say so plainly."""
    failed = [r for r in runs if not r.ok and not r.refused_as_expected]
    unchecked = [r for r in runs if r.ok and r.agrees is None]
    off = [r for r in runs if r.agrees is False]
    lines = [RULE]
    lines += [f"refused, as it must: {r.name}: {r.expected_refusal}" for r in runs
              if r.refused_as_expected]  # fmt: skip
    lines += [f"FAILED: {r.name} exited with status {r.exit_code}; see {r.log_dir}" for r in failed]
    lines += [f"DISAGREE: {r.name}: {problem}" for r in off for problem in r.problems or []]
    lines += [
        f"not checked: {r.name}: gloo sums {r.mode.processes} processes' gradients in an order "
        "the replay does not reproduce"
        for r in unchecked
    ]
    lines += [explain_gap(r) for r in runs if r.float64_gap is not None]
    lines += [
        f"{r.name} is {fmt_diff(r.fp32_diff)} from the fp32 replay: it computed in bf16"
        for r in runs
        if r.fp32_diff and r.agrees
    ]
    agree = not failed and not off and not unchecked
    checked = sum(r.agrees is True for r in runs)
    if agree:
        lines.append(f"AGREE: all {checked} runs match the replay of their own arithmetic.")
    elif not failed and not off:
        lines.append(f"{checked} runs match the replay of their own arithmetic; see above.")
    else:
        lines.append("The runners do NOT agree.")
    return agree, lines


def explain_gap(run: Run) -> str:
    """Why a run in another grouping may sit a little away from plain PyTorch, in numbers."""
    measured = (
        f" ({fmt_diff(run.max_weight_diff)} apart in float32)"
        if run.max_weight_diff is not None
        else ""
    )
    return (
        f"{run.name} splits each step's samples over its processes in another grouping than "
        f"plain PyTorch{measured}; computed in float64 the two groupings are "
        f"{fmt_diff(run.float64_gap)} apart, so a float32 gap is rounding (amplified by Adam), "
        "not another training"
    )
