"""Killed runs resume from their newest complete checkpoint and end as if never interrupted;
a checkpoint never runs code and a resume never silently changes the run."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import test_resume_positions as positions
import torch
from conftest import (
    PYTHON,
    ROOT,
    RUNNERS,
    TIMEOUT_S,
    Runner,
    assert_equals_replay,
    free_port,
    in_process,
    load_metrics,
    load_weights,
    run,
    run_env,
    shared_runs,
    task_config,
)  # fmt: skip

from fourways import parity
from fourways.contract import checkpoint_io

# Checkpoints every 7 optimizer steps (25 per epoch): the kill at step 60 falls in epoch 3,
# after the checkpoint at step 56, the newest complete one: epoch 3, batch 6.
KILL_STEP, EVERY = 60, 7
BY_NAME = {runner.name: runner for runner in RUNNERS}
# A run configured away from the defaults, so that a resume which forgot the configuration
# (and trained on defaults) could not end with the same weights.
CONFIG = {"lr": "0.002", "hidden_dim": "16", "seed": "7"}
LIGHTNING_OPTIONS = {"lr": "--model.lr", "hidden_dim": "--model.hidden_dim",
                     "num_samples": "--data.num_samples", "seed": "--seed_everything",
                     "epochs": "--trainer.max_epochs", "label_noise": "--data.label_noise",
                     "num_features": "--data.num_features", "num_classes": "--model.num_classes",
                     "val_fraction": "--data.val_fraction"}  # fmt: skip


def option(name: str, key: str) -> str:
    """How runner `name` spells the task option `key`."""
    return LIGHTNING_OPTIONS[key] if name == "lightning" else "--" + key.replace("_", "-")


def options(name: str, **values: str) -> list[str]:
    return [arg for key, value in values.items() for arg in (option(name, key), value)]


def checkpoint_args(name: str, every: int = EVERY) -> list[str]:
    if name == "lightning":
        return ["--checkpoint.every_n_train_steps", str(every)]
    return ["--checkpoint-every", str(every)]


def resume_args(name: str) -> list[str]:
    return ["--ckpt_path", "last"] if name == "lightning" else ["--resume"]


def killed_run(
    runner: Runner, run_dir: Path, processes: int, fault: str, args=(), every: int = EVERY
) -> int:
    """Start a run that SIGKILLs its rank 0 at `fault`; end every process it left behind."""
    command = runner.command(run_dir, processes, [*checkpoint_args(runner.name, every), *args])
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


def assert_same_weights(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == reference.keys()
    for key in reference:  # every tensor, bit for bit
        assert torch.equal(ours[key], reference[key]), key


def epoch_numbers(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.fixture(scope="session")
def configured_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run with CONFIG: the four runners reach the same weights bit for bit
    on one device (test_single_device), so plain PyTorch's run is every runner's reference."""

    def make(root: Path) -> None:
        BY_NAME["torch"].train(root / "run", 1, options("torch", **CONFIG))

    return shared_runs(tmp_path_factory, "configured", make) / "run"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("name", list(BY_NAME))
def test_sigkill_mid_epoch_then_resume_alone_matches_an_uninterrupted_run(
    name: str, processes: int, tmp_path: Path, configured_reference: Path
) -> None:
    runner, run_dir = BY_NAME[name], tmp_path / "run"
    killed = killed_run(runner, run_dir, processes, f"step:{KILL_STEP}", options(name, **CONFIG))
    assert killed != 0
    assert not (run_dir / "model.pt").exists()
    assert (run_dir / "checkpoints").is_dir()

    # The resume names no task option: the configuration comes from the checkpoint.
    result = runner.train(run_dir, processes, checkpoint_args(name) + resume_args(name))
    # Proof that it resumed: where it says it restarted, and the epochs it trained. A run that
    # ignored the checkpoint would train (and print) epochs 1 and 2 again.
    assert "epoch 3, batch 6, optimizer step 56" in result.stdout
    assert epoch_numbers(result.stdout) == [3, 4, 5], result.stdout
    ours, reference = load_weights(run_dir), load_weights(configured_reference)
    if processes == 1:
        assert_same_weights(ours, reference)
    else:  # bit for bit the replay of this runner's own two-process arithmetic (fourways/parity.py)
        grouping = parity.grouping_of(name, processes)
        setup = parity.Setup(lr=0.002, hidden_dim=16, seed=7, processes=2, grouping=grouping)
        assert_equals_replay(name, run_dir, setup)
    resumed, uninterrupted = load_metrics(run_dir), load_metrics(configured_reference)
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"] == 125
    expected = task_config("torch", uninterrupted["config"])  # the reference is plain PyTorch's
    expected |= {"world_size": processes, "checkpoint_every": EVERY}
    # The resume alone kept checkpointing as recorded, and the runner's strategy.
    assert task_config(name, resumed["config"]) == expected
    for ours_epoch, ref in zip(resumed["epochs"], uninterrupted["epochs"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):  # the interrupted epoch included
            assert ours_epoch[key] == pytest.approx(ref[key], abs=1e-6), (ours_epoch["epoch"], key)
    if name in ("lightning", "fabric"):  # their CSV loggers start the file anew on resume
        rows = (run_dir / "metrics.csv").read_text().splitlines()
        assert len([row for row in rows[1:] if "train_loss" not in row]) >= 5, rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "fault", "leftover"),
    [
        ("torch", "write-last.pt:3", ".last.pt.*"),  # the 3rd write: the step-21 checkpoint
        ("fabric", "write-last.ckpt:3", ".last.ckpt.*"),
        ("lightning", "write-last.ckpt:3", ".last.ckpt.*"),
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
    assert "epoch 1, batch 14, optimizer step 14" in result.stdout  # the previous one, whole
    assert_same_weights(load_weights(run_dir), load_weights(single_device_runs[name]))


# ---------------------------------------------------------------------------------------------
# Refusals: each runner's own main(), in this process (torch reads TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
# at every call), on a checkpoint written by a real run. None of these trains.
# ---------------------------------------------------------------------------------------------
SMALL = {"num_samples": "200", "epochs": "2", "lr": "0.002"}  # 5 steps an epoch


@pytest.fixture(scope="session")
def epoch_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each runner's checkpoint after two finished epochs (its outputs removed: unfinished).
    Made once for both workers; the tests copy a runner's folder before they change it."""

    def make(root: Path) -> None:
        runs = [  # side by side: most of each is starting Python
            subprocess.Popen(runner.command(root / runner.name, 1, options(runner.name, **SMALL)),
                             cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL)
            for runner in RUNNERS
        ]  # fmt: skip
        for proc in runs:
            assert proc.wait(timeout=TIMEOUT_S) == 0
        for runner in RUNNERS:
            for output in ("model.pt", "metrics.json"):
                (root / runner.name / output).unlink()

    root = shared_runs(tmp_path_factory, "epoch_checkpoints", make)
    return {runner.name: root / runner.name for runner in RUNNERS}


def resume_in_process(
    name: str, run_dir: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run the runner's real `main()` as `python <script> ... <resume> <args>` would."""
    result = in_process(BY_NAME[name].command(run_dir, 1, [*resume_args(name), *args]), capsys)
    return result.returncode, result.stderr


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def assert_refused(code: int, err: str, run_dir: Path, before: dict[str, bytes]) -> str:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (run_dir / "model.pt").exists()
    assert snapshot(run_dir / "checkpoints") == before, "the checkpoint was changed"
    return lines[0]


class RunsCode:
    """A pickle that creates a file when unpickled: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(RunsCode(marker)))


def test_the_hostile_pickle_really_runs_code_when_the_default_is_flipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The payload below is live, and the environment switch is read at call time: with it set,
    # a load that leaves weights_only to torch's default runs the code; an explicit True wins.
    plant(tmp_path / "evil.pt", tmp_path / "ran")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not (tmp_path / "ran").exists()
    with contextlib.suppress(RuntimeError), pytest.warns(UserWarning):
        torch.load(tmp_path / "evil.pt")  # runs, then torch finds no valid checkpoint
    assert (tmp_path / "ran").exists()


READ = {
    "torch": "last.pt",
    "fabric": "last.ckpt",
    "lightning": "last.ckpt",
}  # + all of Accelerate's


def stray_files(name: str, run_dir: Path) -> list[Path]:
    """Files that are not the checkpoint a resume should read, planted beside it."""
    checkpoints = run_dir / "checkpoints"
    if name == "accelerate":  # a newer folder (taken as the newest), and an unknown file
        newest = sorted(checkpoints.glob("step_*"))[-1]
        return [checkpoints / "step_999999" / "optimizer.bin", newest / "custom_checkpoint_0.pkl"]
    # the Trainer's `--ckpt_path last` alone would take the newest last*.ckpt
    return [checkpoints / ("last-v1.pt" if name == "torch" else "last-v1.ckpt")]


@pytest.mark.parametrize("force_unsafe_default", [False, True])
@pytest.mark.parametrize("name", list(BY_NAME))
def test_no_checkpoint_file_can_run_code(
    name: str,
    force_unsafe_default: bool,
    epoch_checkpoints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = epoch_checkpoints[name]
    written = sorted(p for p in (source / "checkpoints").rglob("*") if p.is_file())
    assert written, "the run wrote no checkpoint"
    if force_unsafe_default:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    cases = [p.relative_to(source) for p in written] + [
        p.relative_to(source) for p in stray_files(name, source)
    ]
    for i, relative in enumerate(cases):  # each file the run wrote, in turn, then the strays
        run_dir, marker = tmp_path / f"case_{i}", tmp_path / f"ran_{i}"
        shutil.copytree(source, run_dir)
        if relative.parent.name == "step_999999":  # a whole newer folder, one file hostile
            newest = sorted((run_dir / "checkpoints").glob("step_*"))[0]
            shutil.copytree(newest, run_dir / relative.parent)
        plant(run_dir / relative, marker)
        before = snapshot(run_dir / "checkpoints")
        code, err = resume_in_process(name, run_dir, [], capsys)
        assert not marker.exists(), f"{relative}: its code ran"
        if code == 0:  # resumed without reading it: only a file that is not the checkpoint
            assert name != "accelerate" and relative.name != READ[name], relative
            assert (run_dir / "model.pt").exists()
        else:
            line = assert_refused(code, err, run_dir, before)
            assert relative.name in line, line  # the file that was checked is named


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_truncated_checkpoint_is_refused_as_such(
    name: str, epoch_checkpoints: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(epoch_checkpoints[name], run_dir)
    files = (run_dir / "checkpoints").rglob(READ.get(name, "*.*"))  # one it reads, the largest
    path = max(files, key=lambda p: p.stat().st_size)
    path.write_bytes(path.read_bytes()[:500])
    before = snapshot(run_dir / "checkpoints")
    line = assert_refused(*resume_in_process(name, run_dir, [], capsys), run_dir, before)
    assert "truncated or corrupt" in line and path.name in line, line
    assert "remove" not in line  # no advice that would delete a checkpoint


# The options of the runs' recorded configuration, including the task's every init argument
# (the data's label noise, features, split; the model's classes): none can change on resume.
OTHER_CONFIG = [("lr", "0.01"), ("hidden_dim", "8"), ("num_samples", "400"),
                ("label_noise", "0.4"), ("num_features", "12"), ("val_fraction", "0.25"),
                ("num_classes", "3")]  # fmt: skip
RECORDED = {"hidden_dim": "32", "label_noise": "0.1", "num_features": "10",
            "val_fraction": "0.2", "num_classes": "2"}  # fmt: skip


@pytest.mark.parametrize(("key", "value"), OTHER_CONFIG)
@pytest.mark.parametrize("name", list(BY_NAME))
def test_resume_with_another_configuration_is_refused(
    name: str, key: str, value: str, epoch_checkpoints: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(epoch_checkpoints[name], run_dir)
    before = snapshot(run_dir / "checkpoints")
    code, err = resume_in_process(name, run_dir, options(name, **{key: value}), capsys)
    line = assert_refused(code, err, run_dir, before)
    recorded = SMALL.get(key, RECORDED.get(key))
    assert f"{option(name, key)} {value} contradicts" in line, line
    assert f"{option(name, key)} {recorded}" in line, line  # the checkpoint's value


@pytest.mark.parametrize("name", list(BY_NAME))
def test_resume_cannot_end_before_the_checkpoint(
    name: str, epoch_checkpoints: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(epoch_checkpoints[name], run_dir)
    before = snapshot(run_dir / "checkpoints")
    code, err = resume_in_process(name, run_dir, options(name, epochs="1"), capsys)
    line = assert_refused(code, err, run_dir, before)
    assert f"{option(name, 'epochs')} 1: the checkpoint has trained into epoch 2" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_resume_may_train_more_epochs(
    name: str, epoch_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(epoch_checkpoints[name], run_dir)
    result = BY_NAME[name].train(run_dir, 1, [*resume_args(name), *options(name, epochs="3")])
    assert epoch_numbers(result.stdout) == [3]
    metrics = load_metrics(run_dir)
    assert metrics["config"]["epochs"] == 3 and metrics["config"]["lr"] == 0.002
    assert [epoch["epoch"] for epoch in metrics["epochs"]] == [1, 2, 3]
    assert metrics["optimizer_steps"] == 15


@pytest.mark.parametrize("name", list(BY_NAME))
def test_resume_without_a_checkpoint_is_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = resume_in_process(name, tmp_path / "run", [], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "no checkpoint to resume from" in err


def test_a_refused_resume_end_to_end(epoch_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # The in-process refusals above, once as a user types it: a hostile file, the variable set.
    run_dir, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(epoch_checkpoints["fabric"], run_dir)
    plant(run_dir / "checkpoints" / "last.ckpt", marker)
    command = [PYTHON, "fabric_train.py", "--accelerator", "cpu", "--run-dir", str(run_dir),
               "--resume"]  # fmt: skip
    result = run(command, run_env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "more than tensors and plain values" in result.stderr
    assert not marker.exists()


def test_fabric_loads_the_checkpoint_it_checked(
    epoch_checkpoints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The Fabric runner reads the checkpoint to settle the run's configuration, then hands it to
    # fabric.load (through AtomicCheckpointIO). A file swapped for a hostile one right after that
    # check must never be read, with torch's default flipped to unsafe too: a second read that
    # forgot weights_only would run it, one that kept it would refuse the run.
    run_dir, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(epoch_checkpoints["fabric"], run_dir)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    check = checkpoint_io.load_checkpoint

    def check_then_swap(path: Path) -> dict:
        checkpoint = check(path)
        torch.save(RunsCode(marker), path)  # a valid torch file: an unsafe load runs it
        return checkpoint

    monkeypatch.setattr(checkpoint_io, "load_checkpoint", check_then_swap)
    code, err = resume_in_process("fabric", run_dir, [], capsys)
    assert not marker.exists(), "the swapped file's code ran"
    assert code == 0, err  # resumed from the checkpoint as checked, never reading it again
    assert (run_dir / "model.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize(  # 2 processes in all four; 1 in the Trainer, the runner that failed
    ("name", "processes"), [*((name, 2) for name in BY_NAME), ("lightning", 1)]
)
def test_sigkill_after_an_epochs_last_batch_then_resume_alone(
    name: str, processes: int, tmp_path: Path
) -> None:
    # The position the Trainer got wrong, as a real kill: the small run of
    # test_resume_positions.py (4 steps an epoch, a checkpoint every step) killed after epoch
    # 1's last step, before its validation: an epoch boundary. (Mid-epoch kills, 1 and 2
    # processes: the test above; every position on one process: test_resume_positions.py.)
    runner, run_dir = BY_NAME[name], tmp_path / "run"
    small = positions.task_args(name, every_step=False)
    assert killed_run(runner, run_dir, processes, "step:4", small, every=1) != 0
    assert not (run_dir / "model.pt").exists()

    result = runner.train(run_dir, processes, resume_args(name))  # the resume option alone
    step = positions.newest_step(name, 4)  # the Trainer saves step 4 after validation
    epoch, batch = positions.position(step)
    assert f"epoch {epoch}, batch {batch}, optimizer step {step}" in result.stdout
    assert epoch_numbers(result.stdout) == [1, 2, 3], result.stdout
    grouping = parity.grouping_of(name, processes)
    setup = dataclasses.replace(positions.SETUP, processes=processes, grouping=grouping)
    assert_equals_replay(name, run_dir, setup)  # bit for bit this runner's own arithmetic
    metrics = load_metrics(run_dir)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    for entry in metrics["epochs"]:  # each epoch validated: no NaN
        assert all(math.isfinite(entry[key]) for key in ("train_loss", "val_loss", "val_acc"))
    assert metrics["config"]["checkpoint_every"] == 1 and metrics["optimizer_steps"] == 12
