"""Resume from a checkpoint taken at ANY optimizer step of a small run (4 steps an epoch, 3
epochs, a checkpoint every step), each runner, resume option alone, against the run that was
never interrupted: the same model.pt bit for bit, the same epochs, each recorded once.

A kill at a fault point leaves on disk exactly what the run had written there. So one
uninterrupted run per runner, in this process, copies its run directory at every fault point
(`faults.inject_fault`, the point a `TASK_FAULT` kill would strike): each copy is the run
directory a kill there leaves. The real kills (a subprocess SIGKILLed) are in
test_resume.py, at representative positions (mid-epoch, 1 and 2 processes; after an epoch's last
batch, 2 processes and the Trainer on 1; during a checkpoint write).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from conftest import RUNNERS, assert_equals_replay, in_process, load_metrics, load_weights

from fourways import parity
from fourways.contract import faults

STEPS_PER_EPOCH, EPOCHS, LR = 4, 3, 0.004
# 160 samples: 128 to train (4 steps of 32), 32 to validate. A learning rate of its own: each
# runner's uninterrupted run is checked against the replay (fourways/parity.py), so a runner that
# trained with another (its default) would fail here, in the fast subset.
SMALL_RUN = {"num_samples": "160", "epochs": str(EPOCHS), "lr": str(LR)}
SETUP = parity.Setup(num_samples=160, epochs=EPOCHS, lr=LR)
BY_NAME = {runner.name: runner for runner in RUNNERS}
LIGHTNING = {"num_samples": "--data.num_samples", "epochs": "--trainer.max_epochs",
             "lr": "--model.lr"}  # fmt: skip


def task_args(name: str, every_step: bool) -> list[str]:
    """The small run's options in runner `name`'s spelling; a checkpoint every step or epoch."""
    args = [a for k, v in SMALL_RUN.items() for a in (LIGHTNING[k] if name == "lightning"
            else "--" + k.replace("_", "-"), v)]  # fmt: skip
    if every_step:
        every = "--checkpoint.every_n_train_steps" if name == "lightning" else "--checkpoint-every"
        args += [every, "1"]
    return args


def resume_args(name: str) -> list[str]:
    return ["--ckpt_path", "last"] if name == "lightning" else ["--resume"]


def snapshotting_run(
    name: str, run_dir: Path, every_step: bool, capsys, monkeypatch
) -> dict[str, Path]:
    """Runner `name`'s uninterrupted run, in this process; its run directory copied at each
    fault point, as `{point:count: copy}`."""
    copies: dict[str, Path] = {}

    def copy_at(point: str, count: int) -> None:
        key = f"{point}:{count}"
        if run_dir.is_dir() and key not in copies:
            copies[key] = shutil.copytree(run_dir, run_dir.parent / f"{run_dir.name}@{key}")

    monkeypatch.setattr(faults, "FAULT", "snapshot")  # the Trainer's hook checks it first
    monkeypatch.setattr(faults, "inject_fault", copy_at)
    result = in_process(BY_NAME[name].command(run_dir, 1, task_args(name, every_step)), capsys)
    monkeypatch.undo()
    assert result.returncode == 0, result.stderr
    assert_equals_replay(name, run_dir, SETUP)  # the configured lr, the task's arithmetic
    return copies


def resume(name: str, run_dir: Path, capsys) -> tuple[int, str, str]:
    result = in_process(BY_NAME[name].command(run_dir, 1, resume_args(name)), capsys)
    return result.returncode, result.stdout, result.stderr


def epoch_numbers(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("epoch ")]


def newest_step(name: str, killed_at: int) -> int:
    """The optimizer step of the newest checkpoint a kill after step `killed_at` leaves, in a
    run that checkpoints every step. The Trainer saves an epoch's last step after validation
    (fourways.workarounds.lightning_trainer), so a kill before that resumes from the step before."""
    return killed_at - (name == "lightning" and killed_at % STEPS_PER_EPOCH == 0)


def position(step: int, after_validation: bool = False) -> tuple[int, int]:
    """(epoch counted from 1, batches trained in it) of a checkpoint taken after `step`."""
    if after_validation:
        return step // STEPS_PER_EPOCH + 1, 0
    return (step - 1) // STEPS_PER_EPOCH + 1, (step - 1) % STEPS_PER_EPOCH + 1


def logged_epochs(run_dir: Path) -> list[int]:
    """The epochs (from 0) that the CSV logger wrote a validation result for: the Trainer's rows
    name it in their `epoch` column, Fabric's log it as their `step`."""
    with (run_dir / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("val_loss")]
    return [int(float(row.get("epoch") or row["step"])) for row in rows]


def assert_resumes_exactly(
    name: str, copy: Path, reference: Path, expected: tuple[int, int, int], capsys
) -> None:
    """The run directory a kill left, resumed alone, ends as the uninterrupted run did."""
    code, out, err = resume(name, copy, capsys)
    assert code == 0, err
    epoch, batch, step = expected
    assert f": epoch {epoch}, batch {batch}, optimizer step {step}" in out, out
    finished = epoch - 1
    assert epoch_numbers(out) == list(range(finished + 1, EPOCHS + 1)), out
    ours, theirs = load_weights(copy), load_weights(reference)
    assert ours.keys() == theirs.keys()
    for key in theirs:  # every tensor, bit for bit
        assert torch.equal(ours[key], theirs[key]), (copy.name, key)
    resumed, uninterrupted = load_metrics(copy), load_metrics(reference)
    assert [e["epoch"] for e in resumed["epochs"]] == list(range(1, EPOCHS + 1))
    for mine, ref in zip(resumed["epochs"], uninterrupted["epochs"], strict=True):
        for metric in ("train_loss", "val_loss", "val_acc"):
            # Bit for bit: the same weights, and the train-loss sums folded at the same steps
            # (the resume keeps the recorded --checkpoint-every).
            assert mine[metric] == ref[metric], (copy.name, mine["epoch"], metric)
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"]
    assert resumed["config"] == uninterrupted["config"]
    if name in ("lightning", "fabric"):  # their CSV logs: each epoch once
        assert logged_epochs(copy) == list(range(EPOCHS)), copy.name


ALL_STEPS = range(1, STEPS_PER_EPOCH * EPOCHS + 1)
FAST_STEPS = {"lightning": [4], "torch": [6], "fabric": [6], "accelerate": [6]}


def writing_next(copies: dict[str, Path], step: int) -> Path:
    """The copy from a kill while the checkpoint of `step` was being written (before its
    rename): what remains is the one before, here an epoch-end one (after validation)."""
    keys = list(copies)
    return copies[[k for k in keys[: keys.index(f"step:{step}")] if k.startswith("write-")][-1]]


def assert_resumes_after_validation(name: str, copies: dict, reference: Path, capsys) -> None:
    # Killed while writing step 5's checkpoint: the newest whole one is epoch 1's end.
    expected = (*position(STEPS_PER_EPOCH, after_validation=True), STEPS_PER_EPOCH)
    copy = writing_next(copies, STEPS_PER_EPOCH + 1)
    assert_resumes_exactly(name, copy, reference, expected, capsys)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_resume_at_an_epochs_last_batch_or_mid_epoch(name: str, tmp_path, capsys, monkeypatch):
    # The fast representative of the matrix below: the Trainer at its failing position (an
    # epoch's last batch, before validation), the others mid-epoch; all four after validation.
    copies = snapshotting_run(name, tmp_path / "run", True, capsys, monkeypatch)
    for killed_at in FAST_STEPS[name]:
        step = newest_step(name, killed_at)
        expected = (*position(step), step)
        copy = copies[f"step:{killed_at}"]
        assert_resumes_exactly(name, copy, tmp_path / "run", expected, capsys)
    assert_resumes_after_validation(name, copies, tmp_path / "run", capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BY_NAME))
def test_resume_from_every_position_of_a_small_run(name: str, tmp_path, capsys, monkeypatch):
    # Every optimizer step of a run that checkpoints every step: the first, mid-epoch, each
    # epoch's last batch before its validation, the next epoch's first, the run's last.
    copies = snapshotting_run(name, tmp_path / "every_step", True, capsys, monkeypatch)
    for killed_at in ALL_STEPS:
        step = newest_step(name, killed_at)
        expected = (*position(step), step)
        copy = copies[f"step:{killed_at}"]
        assert_resumes_exactly(name, copy, tmp_path / "every_step", expected, capsys)
    assert_resumes_after_validation(name, copies, tmp_path / "every_step", capsys)
    # A run that checkpoints at each epoch's end (after validation): killed in the next epoch,
    # and after the run's last checkpoint, before its outputs are written.
    copies = snapshotting_run(name, tmp_path / "epochs", False, capsys, monkeypatch)
    final = next(key for key in copies if key.startswith("write-metrics.json:"))
    for killed_at, key in ((5, "step:5"), (9, "step:9"), (12, final)):
        step = killed_at - killed_at % STEPS_PER_EPOCH
        expected = (*position(step, after_validation=True), step)
        assert_resumes_exactly(name, copies[key], tmp_path / "epochs", expected, capsys)
