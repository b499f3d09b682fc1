"""The checks themselves can fail: the per-epoch metric tolerance is tight enough to catch the
mistakes it exists for, and compare.py's verdict says "disagree" when runs disagree. Fast and
in-process: no runner is started."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from fourways import parity, task
from fourways.compare import checks, steplogs
from fourways.compare.plans import Mode, Run
from fourways.settings import Settings


def validation_terms(epochs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each validation sample's loss and whether it is classified right, at the weights every
    runner reaches after `epochs` epochs of the default task (the replay's, bit for bit)."""
    weights = parity.replay(dataclasses.replace(parity.Setup(), epochs=epochs))
    model = task.MLP()
    model.load_state_dict(
        {k.removeprefix(parity.TASK_MODULE_PREFIX): v for k, v in weights.items()}
    )
    _, val_set = task.split_dataset(task.make_dataset(task.NUM_SAMPLES, seed=task.SEED))
    x, y = val_set.tensors
    with torch.no_grad():
        logits = model(x).double()
    return F.cross_entropy(logits, y, reduction="none"), (logits.argmax(1) == y).double()


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() / b.abs()


@pytest.mark.parametrize("epochs", [1, task.EPOCHS])
def test_the_metric_tolerance_catches_a_dropped_or_duplicated_validation_sample(
    epochs: int,
) -> None:
    """For EVERY validation sample: dropping it, or counting it twice, moves the epoch's val_loss
    or val_acc by more than EPOCH_METRIC_REL_TOL, so the runners' metric checks would fail."""
    losses, right = validation_terms(epochs)
    n = len(losses)
    assert n == 200
    mistakes = {
        "dropped": lambda t: (t.sum() - t) / (n - 1),  # the mean without sample i, for every i
        "duplicated": lambda t: (t.sum() + t) / (n + 1),  # the mean with sample i twice
    }
    for mistake, mean_with in mistakes.items():
        # per sample: the larger relative move of the two metrics, against the true means
        moved = torch.maximum(
            relative(mean_with(losses), losses.mean()), relative(mean_with(right), right.mean())
        )
        worst = int(moved.argmin())
        assert moved[worst] > parity.EPOCH_METRIC_REL_TOL, (mistake, worst, moved[worst].item())


SMALL = parity.Setup(num_samples=320, epochs=1)  # 8 steps: the replay takes a moment


def a_run(tmp_path: Path, runner: str, weights: dict[str, torch.Tensor]) -> Run:
    """A finished run as compare.py collects it: exit 0, metrics.json, model.pt."""
    settings = Settings(epochs=SMALL.epochs, num_samples=SMALL.num_samples)
    run = Run(runner, Mode(), settings, tmp_path / runner, tmp_path / "logs", checkout=ROOT)
    run.run_dir.mkdir(parents=True)
    torch.save(weights, run.run_dir / "model.pt")
    epoch = {"epoch": 1, "train_loss": 0.69, "val_loss": 0.68, "val_acc": 0.6}
    metrics = {"runner": runner, "precision": "32-true", "world_size": 1,
               "accumulate_grad_batches": 1, "wall_clock_s": 0.1, "epochs": [epoch]}  # fmt: skip
    (run.run_dir / "metrics.json").write_text(json.dumps(metrics))
    run.exit_code, run.wall_s, run.max_rss_kib = 0, 1.0, 1024
    steplogs.collect(run)
    return run


def test_the_verdict_says_disagree_when_a_run_differs_from_its_replay(tmp_path: Path) -> None:
    replayed = parity.replay(SMALL)
    off = {k: v.clone() for k, v in replayed.items()}
    off["model.out.bias"][0] = torch.nextafter(
        off["model.out.bias"][0], torch.tensor(1.0)
    )  # one ulp
    runs = [a_run(tmp_path, "torch", replayed), a_run(tmp_path, "fabric", off)]
    checks.check_runs(runs)
    agree, lines = checks.verdict(runs)
    assert not agree
    assert any(line.startswith("DISAGREE: fabric (1 process): weights differ") for line in lines)
    assert lines[-1] == "The runners do NOT agree."
    # and the same runs, both equal to the replay, agree: the verdict is not always "no"
    runs[1] = a_run(tmp_path / "again", "fabric", replayed)
    checks.check_runs(runs)
    assert checks.verdict(runs)[0]


def test_the_verdict_says_disagree_when_metrics_json_contradicts_the_mode(tmp_path: Path) -> None:
    run = a_run(tmp_path, "torch", parity.replay(SMALL))
    assert run.metrics is not None
    run.metrics["world_size"] = 2  # a run that trained something else than it was asked
    checks.check_runs([run])
    agree, lines = checks.verdict([run])
    assert not agree and "metrics.json says world_size 2, asked 1" in "\n".join(lines)


def test_the_verdict_says_no_when_a_run_failed_or_was_not_checked(tmp_path: Path) -> None:
    good = a_run(tmp_path, "torch", parity.replay(SMALL))
    checks.check_runs([good])
    failed = dataclasses.replace(good, runner="fabric", exit_code=1, problems=None)
    assert checks.verdict([good, failed])[0] is False
    unchecked = dataclasses.replace(good, runner="fabric", problems=None)
    assert checks.verdict([good, unchecked])[0] is False
