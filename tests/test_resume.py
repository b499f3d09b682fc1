"""Killed runs resume from their newest complete checkpoint and end as if never interrupted."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    RUNNERS,
    TIMEOUT_S,
    Runner,
    free_port,
    load_metrics,
    load_weights,
    max_abs_diff,
    run,
    run_env,
)  # fmt: skip

import contract

# Checkpoints every 7 optimizer steps (25 per epoch): the kill at step 60 falls in epoch 3,
# after the checkpoint at step 56, the newest complete one: epoch 3, batch 6.
KILL_STEP, EVERY = 60, 7
BY_NAME = {runner.name: runner for runner in RUNNERS}


def checkpoint_args(name: str) -> list[str]:
    if name == "lightning":
        return ["--checkpoint.every_n_train_steps", str(EVERY)]
    return ["--checkpoint-every", str(EVERY)]


def resume_args(name: str) -> list[str]:
    return ["--ckpt_path", "last"] if name == "lightning" else ["--resume"]


def killed_run(runner: Runner, run_dir: Path, processes: int, fault: str) -> int:
    """Start a run that SIGKILLs its rank 0 at `fault`; end every process it left behind."""
    command = runner.command(run_dir, processes, checkpoint_args(runner.name))
    env = run_env(TASK_FAULT=fault, MASTER_PORT=str(free_port()))
    proc = subprocess.Popen(command, cwd=Path(__file__).parent.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        return proc.wait(timeout=TIMEOUT_S)
    finally:
        # Under Fabric and the Trainer, rank 0 is the launcher: its other ranks are orphans now.
        with pytest.raises(ProcessLookupError):
            while True:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("name", list(BY_NAME))
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    name: str, processes: int, tmp_path: Path, single_device_runs: dict[str, Path]
) -> None:
    runner, run_dir = BY_NAME[name], tmp_path / "run"
    assert killed_run(runner, run_dir, processes, f"step:{KILL_STEP}") != 0
    assert not (run_dir / "model.pt").exists()
    assert (run_dir / "checkpoints").is_dir()

    result = runner.train(run_dir, processes, checkpoint_args(name) + resume_args(name))
    if name != "lightning":  # the Trainer says it its own way: "Restored all states from ..."
        assert "epoch 3, batch 6, optimizer step 56" in result.stdout
    reference = single_device_runs[name]
    diff = max_abs_diff(load_weights(run_dir), load_weights(reference))
    assert diff == 0.0 if processes == 1 else diff <= 1e-6
    resumed, uninterrupted = load_metrics(run_dir), load_metrics(reference)
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"] == 125
    for ours, ref in zip(resumed["epochs"], uninterrupted["epochs"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):  # the interrupted epoch included
            assert ours[key] == pytest.approx(ref[key], abs=1e-6), (ours["epoch"], key)


@pytest.mark.parametrize(
    ("name", "fault", "leftover"),
    [
        ("torch", "write-last.pt:3", ".last.pt.*"),  # the 3rd write: the step-21 checkpoint
        ("accelerate", "write-checkpoint:21", ".partial_step_000021"),
    ],
)
def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one(
    name: str, fault: str, leftover: str, tmp_path: Path, single_device_runs: dict[str, Path]
) -> None:
    runner, run_dir = BY_NAME[name], tmp_path / "run"
    assert killed_run(runner, run_dir, 1, fault) != 0
    assert list((run_dir / "checkpoints").glob(leftover)), "the kill came before the rename"

    result = runner.train(run_dir, 1, checkpoint_args(name) + resume_args(name))
    assert "optimizer step 14" in result.stdout  # the previous checkpoint, whole
    assert torch.equal(
        load_weights(run_dir)["out.weight"], load_weights(single_device_runs[name])["out.weight"]
    )


class RunsCode:
    """A pickle that creates a file when unpickled: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(RunsCode(marker)))


def test_the_hostile_pickle_really_runs_code_when_trusted(tmp_path: Path) -> None:
    # The payload the next test refuses is live: loaded without weights_only, it runs.
    plant(tmp_path / "evil.pt", tmp_path / "ran")
    with contextlib.suppress(RuntimeError):  # it runs, then torch finds no valid checkpoint
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_checkpoint_that_would_run_code_is_refused(name: str, tmp_path: Path) -> None:
    runner, run_dir, marker = BY_NAME[name], tmp_path / "run", tmp_path / "ran"
    if name == "accelerate":
        # A real checkpoint folder, with its optimizer file swapped for the hostile one.
        assert killed_run(runner, run_dir, 1, "step:10") != 0
        plant(run_dir / "checkpoints" / "step_000007" / "optimizer.bin", marker)
    else:
        plant(run_dir / "checkpoints" / ("last.pt" if name == "torch" else "last.ckpt"), marker)
    result = run(runner.command(run_dir, 1, resume_args(name)))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "not a loadable checkpoint" in result.stderr
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (run_dir / "model.pt").exists()


@pytest.mark.parametrize("name", list(BY_NAME))
def test_resume_without_a_checkpoint_is_refused(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run(BY_NAME[name].command(run_dir, 1, resume_args(name)))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no checkpoint to resume from" in result.stderr


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    contract.save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    result = run(BY_NAME["torch"].command(tmp_path / "run", 1, ["--resume"]))
    assert result.returncode == 2 and "not a loadable checkpoint" in result.stderr
