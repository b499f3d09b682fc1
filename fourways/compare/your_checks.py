"""The checks and the verdict when compare.py trains a user's model (--model/--data).

parity.replay replays the task's MLP only, so the rule changes with a user's model:
- runs of plain PyTorch's grouping (the Trainer, Fabric; Accelerate on one process) must equal
  plain PyTorch's weights bit for bit in the same mode; where not, their traces (each run records
  its weights after every step: driving.trace) say at which step and in which layer they part;
- another grouping (Accelerate on several processes) or process count must train what one
  device trains: its float64 replay (driving.replay) within parity.SAME_SAMPLES_FLOAT64_TOL of one
  device's, where rounding would leave them; where not, the replays say where they part;
- the verdict of each mode lists the causes found in the model and data (diagnosis.causes, and
  the learning rates of the traces), each with its fix in every framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fourways import parity
from fourways.compare import diagnosis, yours
from fourways.compare.causes import Cause
from fourways.compare.checks import fmt_diff, load_weights
from fourways.compare.plans import REFERENCE, Mode, Run
from fourways.contract.errors import UsageError
from fourways.driving import replay
from fourways.driving.trace import Trace

RULE = (
    "With your model, a run agrees when its weights equal plain PyTorch's bit for bit in the same "
    "mode (same grouping of the samples), and when its grouping and process count train what one "
    f"device trains: computed in float64 within {parity.SAME_SAMPLES_FLOAT64_TOL:g} of one "
    "device (rounding stays far below it)."
)


@dataclass
class ModeVerdict:
    """What a mode's float64 replays and probes found."""

    mode: Mode
    parts: dict[str, diagnosis.Divergence] = field(default_factory=dict)  # grouping -> where
    causes: list[Cause] = field(default_factory=list)
    unchecked: str = ""  # why the replay could not run, if it could not


def training(run: Run, processes: int, accumulate: int, grouping: str) -> replay.Training:
    """The training of `run`'s classes and seed on `processes` x `accumulate`."""
    assert run.model is not None and run.data is not None
    data = run.data
    if not data.is_task and yours.takes_batch_size(data):
        per_process = run.settings.global_batch_size // (processes * accumulate)
        data = replay.with_batch_size(data, per_process)
    s = run.settings
    return replay.Training(run.model, data, s.seed, s.epochs, processes, accumulate, grouping)


class Replays:
    """float64 replays with their per-step weights, each computed once."""

    def __init__(self) -> None:
        self.cache: dict[str, Trace] = {}

    def get(self, run: Run, t: replay.Training, dtype: torch.dtype = torch.float64) -> Trace:
        key = repr((t, dtype))
        if key not in self.cache:
            args = replay.task_args(run.settings)
            self.cache[key] = diagnosis.replay_trace(t, run.threads, args, dtype)
        return self.cache[key]


def final(trace: Trace) -> dict[str, torch.Tensor]:
    return trace.final if trace.final is not None else trace.weights(trace.steps[-1])


def against_own_replay(group: list[Run], replays: Replays) -> None:
    """Each fp32 run's distance to the float32 replay of its own grouping: reported, not checked
    (the replay follows the Trainer's RNG stream; a runner drawing otherwise is not wrong)."""
    for run in group:
        if run.mode.precision == "32-true":
            n, k = run.mode.processes, run.mode.accumulate
            own = training(run, n, k, parity.grouping_of(run.runner, n))
            replayed = final(replays.get(run, own, torch.float32))
            run.reference_diff = parity.max_abs_diff(load_weights(run), replayed)


def parameter_names(run: Run) -> set[str]:
    module, _ = replay.build(
        training(run, 1, 1, parity.INTERLEAVED), replay.task_args(run.settings)
    )
    return {name for name, _ in module.named_parameters()}


def where_traces(run: Run, reference: Run) -> str:
    """Where `run` parts from plain PyTorch's run, bitwise, from their traces."""
    if not (run.trace.exists() and reference.trace.exists()):
        return "no weight trace to say where (the runner did not record FOURWAYS_TRACE)"
    found = diagnosis.first_divergence(
        Trace.load(run.trace), Trace.load(reference.trace), 0.0, parameter_names(run)
    )
    if found is None:
        return "their traces agree at every recorded step"
    return found.line(f"{run.runner} and {reference.runner}")


def check_your_runs(runs: Sequence[Run]) -> list[ModeVerdict]:
    """Each mode's runs against plain PyTorch's (bitwise), and each grouping against one device
    in float64; sets each run's problems, distances and `where`."""
    replays, verdicts = Replays(), []
    for mode in dict.fromkeys(r.mode for r in runs):
        group = [r for r in runs if r.mode == mode and r.ok]
        for run in group:
            run.problems = []
        if group:
            verdicts.append(check_mode(mode, group, replays))
    return verdicts


def check_mode(mode: Mode, group: list[Run], replays: Replays) -> ModeVerdict:
    result = ModeVerdict(mode)
    reference = next((r for r in group if r.runner == REFERENCE), None)
    if reference is not None:
        against_reference(group, reference, result)
    try:
        against_own_replay(group, replays)
        against_one_device(mode, group, replays, result)
        result.causes = (
            diagnosis.causes(
                training(group[0], mode.processes, mode.accumulate, parity.INTERLEAVED),
                replay.task_args(group[0].settings),
            )
            + result.causes
        )
    except (ValueError, UsageError) as err:  # a model the replay does not cover
        result.unchecked = f"{mode.label}: not replayed: {err}"
    return result


def against_reference(group: list[Run], reference: Run, result: ModeVerdict) -> None:
    """Each run against plain PyTorch's: bitwise in its grouping; the learning rates in any."""
    ref = load_weights(reference)
    for run in group:
        if run is reference:
            continue
        weights = load_weights(run)
        run.max_weight_diff = parity.max_abs_diff(weights, ref)
        if scheduler := lr_cause(run, reference):  # the rates never depend on the grouping
            assert run.problems is not None
            run.problems.append(f"its learning rates part from plain PyTorch's {scheduler.detail}")
            if scheduler not in result.causes:
                result.causes.append(scheduler)
        same_grouping = parity.grouping_of(run.runner, result.mode.processes) == parity.INTERLEAVED
        if same_grouping and not parity.bitwise_equal(weights, ref):
            run.where = where_traces(run, reference)
            assert run.problems is not None
            run.problems.append(
                f"weights differ from plain PyTorch's by {fmt_diff(run.max_weight_diff)} in the "
                f"same grouping (they must be equal bit for bit): {run.where}"
            )
    reference.max_weight_diff = 0.0


def lr_cause(run: Run, reference: Run) -> Cause | None:
    """Cause (e), when both runs left a trace: their learning rates part at some step."""
    if not (run.trace.exists() and reference.trace.exists()):
        return None
    ours, theirs = Trace.load(run.trace), Trace.load(reference.trace)
    return diagnosis.scheduler_cause(ours, theirs, (run.runner, reference.runner))


def against_one_device(mode: Mode, group: list[Run], replays: Replays, result: ModeVerdict) -> None:
    """Each grouping in this mode, in float64, against one device with the whole batch."""
    if mode.processes * mode.accumulate == 1:
        return
    one = replays.get(group[0], training(group[0], 1, 1, parity.INTERLEAVED))
    names = parameter_names(group[0])
    for grouping in dict.fromkeys(parity.grouping_of(r.runner, mode.processes) for r in group):
        runs = [r for r in group if parity.grouping_of(r.runner, mode.processes) == grouping]
        t = training(runs[0], mode.processes, mode.accumulate, grouping)
        own = replays.get(runs[0], t)
        gap = diagnosis.float_gap(final(own), final(one))
        found = diagnosis.first_divergence(own, one, parity.SAME_SAMPLES_FLOAT64_TOL, names)
        for run in runs:
            run.float64_gap = gap
            if found is not None:
                assert run.problems is not None
                run.problems.append(
                    found.line(f"in float64, its grouping ({grouping}) and one device")
                )
        if found is not None:
            result.parts[grouping] = found


def verdict(runs: Sequence[Run], verdicts: Sequence[ModeVerdict]) -> tuple[bool, list[str]]:
    """Whether every run agrees; the lines that say so, and where and why not."""
    failed = [r for r in runs if not r.ok]
    lines = [RULE]
    lines += [f"FAILED: {r.name} exited with status {r.exit_code}; see {r.log_dir}" for r in failed]
    said: dict[tuple[Mode, str], list[str]] = {}  # one line for runs that part alike
    for r in runs:
        for problem in r.problems or []:
            said.setdefault((r.mode, problem), []).append(r.runner)
    lines += [f"DISAGREE: {', '.join(rs)} ({m.label}): {p}" for (m, p), rs in said.items()]
    off = [r for r in runs if r.problems]
    for v in verdicts:
        lines += [v.unchecked] if v.unchecked else []
        parted = any(r.problems for r in runs if r.mode == v.mode)
        if v.causes and not parted:
            keys = ", ".join(c.title for c in v.causes)
            lines.append(f"{v.mode.label}: found ({keys}), yet its runs agree")
        elif parted and not v.causes and not v.unchecked:
            lines.append(f"{v.mode.label}: no cause found by the probes; see where it parts")
        for c in v.causes if parted else []:
            first, *rest = c.lines()
            lines += [f"{v.mode.label}: cause: {first}", *rest]
    agree = not failed and not off and not any(v.unchecked for v in verdicts)
    checked = sum(r.agrees is True for r in runs)
    if agree:
        lines.append(f"AGREE: all {checked} runs train what plain PyTorch and one device train.")
    else:
        lines.append(
            "The runners do NOT agree." if failed or off else "Not every mode was checked."
        )
    return agree, lines
