"""The Trainer runner with a user's LightningModule and LightningDataModule, by dotted path, as a
Lightning user types it: `python lightning_module.py fit --model PATH --model.NAME VALUE`.

Through the real command (a subprocess): a user's model trains from its own defaults and writes
its own state_dict; a user's data module trains with its own batch; what the four runners cannot
train alike, or what does not import or fit, is refused in one line before anything trains; a
run killed mid-epoch resumes alone, with its recorded classes and init arguments, bit for bit.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, RUNNERS, in_process, load_metrics, load_weights, run
from test_resume import assert_same_weights, killed_run

from examples.warmup_mlp import WarmupMLP
from fourways.trainer_bookkeeping import epoch_values

(TRAINER,) = [runner for runner in RUNNERS if runner.name == "lightning"]
WARMUP = ["--model", "examples.warmup_mlp.WarmupMLP"]
SMALL = ["--trainer.max_epochs", "2", "--data.num_samples", "320"]  # 8 steps an epoch


def fit(run_dir: Path, *args: str) -> list[str]:
    return TRAINER.command(run_dir, 1, args)


def test_a_user_model_trains_from_its_own_defaults_and_writes_its_state_dict(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    result = run(fit(run_dir, *WARMUP, "--model.depth", "2", *SMALL))
    assert result.returncode == 0, result.stderr
    weights = load_weights(run_dir)
    expected = WarmupMLP(depth=2).state_dict()  # the LightningModule's keys, no prefix
    assert list(weights) == list(expected)
    assert all(weights[k].shape == expected[k].shape for k in expected)
    metrics = load_metrics(run_dir)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for epoch in metrics["epochs"]:
        assert {"train_loss", "val_loss", "val_acc"} <= epoch.keys(), epoch
    assert metrics["config"]["model"] == "examples.warmup_mlp.WarmupMLP"
    assert metrics["config"]["model_init_args"] == ["--depth=2"]  # what was given
    assert "hidden_dim" not in metrics["config"]  # the task's model settings do not apply
    # WarmupMLP's own learning rate (3e-3), not the task model's 1e-3 (which jsonargparse
    # would carry over from the default class).
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 3e-3
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")]\
        == ["1", "2"]  # fmt: skip

    # validate reads the checkpoint's class and init arguments: the fit's last validation again.
    command = [PYTHON, "lightning_module.py", "validate", "--trainer.accelerator", "cpu",
               "--trainer.logger.init_args.save_dir", str(tmp_path / "val"),
               "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]  # fmt: skip
    validated = run(command)
    assert validated.returncode == 0, validated.stderr
    (logged,) = csv.DictReader(
        (tmp_path / "val" / "lightning" / "version_0" / "metrics.csv").open()
    )
    assert float(logged["val_loss"]) == metrics["epochs"][-1]["val_loss"]
    assert float(logged["val_acc"]) == metrics["epochs"][-1]["val_acc"]


def test_a_user_data_module_trains_with_its_own_batch(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    classes = ["--model", "tests.user_models.TinyModel", "--data", "tests.user_models.TinyData"]
    result = run(fit(run_dir, *classes, "--data.batch_size", "8", "--trainer.max_epochs", "1"))
    assert result.returncode == 0, result.stderr
    metrics = load_metrics(run_dir)
    assert metrics["per_device_batch_size"] == metrics["global_batch_size"] == 8
    assert metrics["optimizer_steps"] == 128 // 8  # TinyData's 160 samples, 128 to train
    assert metrics["config"]["data"] == "tests.user_models.TinyData"
    assert metrics["config"]["data_init_args"] == ["--batch_size=8"]
    assert list(load_weights(run_dir)) == ["linear.weight", "linear.bias"]


def test_a_model_whose_optimizer_needs_the_trainer_trains(tmp_path: Path) -> None:
    """configure_optimizers reading self.trainer cannot be checked before fit: the Trainer runs
    it (and checks it) as Lightning does."""
    run_dir = tmp_path / "run"
    model = ["--model", "tests.user_models.StepsFromTheTrainer"]
    result = run(fit(run_dir, *model, "--trainer.max_epochs", "1", "--data.num_samples", "160"))
    assert result.returncode == 0, result.stderr
    assert (run_dir / "model.pt").exists()


REFUSALS = {
    "does not import": (["--model", "tests.user_models_gone.Model"], "cannot import"),
    "not a LightningModule": (["--model", "tests.user_models.NotAModule"], "not a"),
    "not a LightningDataModule": (["--data", "tests.user_models.TinyModel"], "DataModule"),
    "an unknown init argument": ([*WARMUP, "--model.nope", "1"], "--model.nope"),
    "a task option for a user's model": ([*WARMUP, "--model.hidden_dim", "8"], "hidden_dim"),
    "an init argument of the wrong type": ([*WARMUP, "--model.depth", "x"], "--model.depth"),
    "manual optimization": (["--model", "tests.user_models.ManualOptimization"], "manual"),
    "two optimizers": (["--model", "tests.user_models.TwoOptimizers"], "2 optimizers"),
    "a monitored scheduler": (["--model", "tests.user_models.MonitoredScheduler"], "monitors"),
    "a linked task option": (["--data.seed", "3"], "--seed_everything"),
}


@pytest.mark.parametrize(("args", "words"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_a_model_or_data_the_runners_cannot_train_is_refused_in_one_line(
    args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (conftest.in_process: the script's own main); test_errors starts it for real."""
    run_dir = tmp_path / "run"
    result = in_process(fit(run_dir, *args), capsys)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in result.stdout
    assert not run_dir.exists() or not any(run_dir.rglob("*.pt"))


def test_epoch_values_are_the_callback_metrics_an_epoch_logged() -> None:
    """on_step + on_epoch gives `name` (the epoch's), `name_step` and `name_epoch`: `name` alone
    stays, as the hand-written runners' EpochLogs gives it; an epoch value without a plain twin
    keeps its name."""
    logged = {"loss": torch.tensor(2.0), "loss_step": torch.tensor(1.0),
              "loss_epoch": torch.tensor(2.0), "acc_epoch": torch.tensor(0.5),
              "val_loss": torch.tensor(0.25)}  # fmt: skip
    assert epoch_values(logged) == {"acc_epoch": 0.5, "loss": 2.0, "val_loss": 0.25}


RESUMED = [*WARMUP, "--model.depth", "3", "--trainer.max_epochs", "3", "--data.num_samples",
           "320"]  # fmt: skip


@pytest.mark.slow
def test_a_user_model_killed_mid_epoch_resumes_alone_bit_for_bit(tmp_path: Path) -> None:
    """Checkpoints every 5 steps (8 an epoch): the kill after step 13 leaves step 10's, in
    epoch 2 (batch 2). The resume names nothing but the checkpoint: the recorded class and
    `--model.depth 3`, the scheduler's warm-up and the data position continue exactly."""
    every = ["--checkpoint.every_n_train_steps", "5"]
    reference = tmp_path / "reference"
    assert run(fit(reference, *RESUMED, *every)).returncode == 0
    run_dir = tmp_path / "run"
    assert killed_run(TRAINER, run_dir, 1, "step:13", RESUMED, every=5) != 0
    assert not (run_dir / "model.pt").exists()

    resume = ["--ckpt_path", "last"]
    contradictions = [(["--model.depth", "2"], "--model.depth"),
                      (["--model", "tests.user_models.TinyModel"], "--model")]  # fmt: skip
    for contradiction, option in contradictions:
        refused = run(fit(run_dir, *resume, *contradiction))
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert f"{option} " in refused.stderr and "contradicts" in refused.stderr

    result = run(fit(run_dir, *resume))
    assert result.returncode == 0, result.stderr
    assert "epoch 2, batch 2, optimizer step 10" in result.stdout
    assert_same_weights(load_weights(run_dir), load_weights(reference))
    assert_same_epochs(run_dir, reference)


def assert_same_epochs(run_dir: Path, reference: Path) -> None:
    resumed, uninterrupted = load_metrics(run_dir), load_metrics(reference)
    assert resumed["config"] == uninterrupted["config"]
    for ours, theirs in zip(resumed["epochs"], uninterrupted["epochs"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):  # the same sums, folded alike
            assert ours[key] == theirs[key], (ours["epoch"], key)


# A user's data module with an init argument of its own: 16 steps an epoch, a plain DataLoader.
TINY = ["--data", "tests.user_models.TinyData", "--data.batch_size", "8",
        "--trainer.max_epochs", "2"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.deep
def test_a_user_data_module_resumes_with_its_recorded_init_arguments(tmp_path: Path) -> None:
    """Killed in epoch 2, resumed from epoch 1's end with TinyData's recorded batch of 8. Its
    plain DataLoader cannot resume mid-epoch (Lightning would restart the epoch's data): a
    mid-epoch checkpoint of it is refused in one line."""
    reference = tmp_path / "reference"  # checkpoints each epoch's end (16 steps), as the run
    every_epoch = ["--checkpoint.every_n_train_steps", "16"]
    assert run(fit(reference, *WARMUP, *TINY, *every_epoch)).returncode == 0
    run_dir = tmp_path / "run"
    assert killed_run(TRAINER, run_dir, 1, "step:20", [*WARMUP, *TINY], every=5) != 0
    refused = run(fit(run_dir, "--ckpt_path", "last"))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "mid-epoch" in refused.stderr and "TinyData" in refused.stderr
    assert not (run_dir / "model.pt").exists()

    run_dir = tmp_path / "epochs"
    assert killed_run(TRAINER, run_dir, 1, "step:20", [*WARMUP, *TINY], every=16) != 0
    result = run(fit(run_dir, "--ckpt_path", "last"))
    assert result.returncode == 0, result.stderr
    assert "epoch 2, batch 0, optimizer step 16" in result.stdout
    assert_same_weights(load_weights(run_dir), load_weights(reference))
    assert_same_epochs(run_dir, reference)
