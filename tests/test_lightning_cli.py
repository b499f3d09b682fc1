"""The Trainer runner's LightningCLI subcommands other than `fit`: what a Lightning user types.

`validate` reads a checkpoint and reports the validation loss and accuracy, as the Trainer's
results table and the logger's metrics.csv; `test` and `predict` are not offered, since the task
has no data for them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import PYTHON, RUNNERS, in_process, load_metrics, shared_runs


@pytest.fixture(scope="session")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Trainer runner once with the defaults (the other runners are not needed here)."""

    def make(root: Path) -> None:
        (trainer,) = [runner for runner in RUNNERS if runner.name == "lightning"]
        trainer.train(root / "run")

    return shared_runs(tmp_path_factory, "trainer_default", make) / "run"


def validate(checkpoint: Path, save_dir: Path, *args: str) -> list[str]:
    return [PYTHON, "lightning_module.py", "validate", "--trainer.accelerator", "cpu",
            "--trainer.logger.init_args.save_dir", str(save_dir), "--ckpt_path", str(checkpoint),
            *args]  # fmt: skip


def test_validate_reports_the_metrics_of_the_checkpoints_last_epoch(
    trainer_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = trainer_run
    result = in_process(validate(run_dir / "checkpoints" / "last.ckpt", tmp_path), capsys)
    assert result.returncode == 0, result.stderr
    # The same weights, the same 200 samples in the same batches, the same float32 arithmetic as
    # the fit's last validation: the very same numbers, not close ones.
    trained = load_metrics(run_dir)["epochs"][-1]
    (logged,) = csv.DictReader((tmp_path / "lightning" / "version_0" / "metrics.csv").open())
    assert float(logged["val_loss"]) == trained["val_loss"]
    assert float(logged["val_acc"]) == trained["val_acc"]
    assert "val_loss" in result.stdout and "val_acc" in result.stdout  # the results table
    assert not (tmp_path / "lightning" / "version_0" / "model.pt").exists()  # nothing trained


def test_validate_takes_the_checkpoints_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint of another width validates as it was trained: its configuration is the
    default, as on resume, and an option that contradicts it is refused in one line."""
    fit = [PYTHON, "lightning_module.py", "fit", "--trainer.accelerator", "cpu",
           "--trainer.max_epochs", "1", "--model.hidden_dim", "8", "--data.num_samples", "200",
           "--trainer.logger.init_args.save_dir", str(tmp_path / "fit")]  # fmt: skip
    assert in_process(fit, capsys).returncode == 0
    run_dir = tmp_path / "fit" / "lightning" / "version_0"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    result = in_process(validate(checkpoint, tmp_path / "val"), capsys)
    assert result.returncode == 0, result.stderr
    (logged,) = csv.DictReader(
        (tmp_path / "val" / "lightning" / "version_0" / "metrics.csv").open()
    )
    assert float(logged["val_loss"]) == load_metrics(run_dir)["epochs"][-1]["val_loss"]
    refused = in_process(validate(checkpoint, tmp_path / "x", "--model.hidden_dim", "16"), capsys)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--model.hidden_dim" in refused.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["test"], ("invalid choice", "'test'")),
        (["predict"], ("invalid choice", "'predict'")),
        (["validate", "--ckpt_path", "last"], ("validate reads a checkpoint by its path",)),
    ],
)
def test_subcommands_without_a_meaning_are_refused_in_one_line(
    args: list[str], words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    result = in_process([PYTHON, "lightning_module.py", *args], capsys)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_validate_never_writes_into_a_training_runs_folder(
    trainer_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lightning's CSV logger would replace the run's metrics.csv: refused, the run untouched."""
    run_dir = trainer_run
    before = (run_dir / "metrics.csv").read_bytes()
    logger = "--trainer.logger.init_args."
    command = validate(run_dir / "checkpoints" / "last.ckpt", run_dir.parent,
                       f"{logger}name", "", f"{logger}version", run_dir.name)  # fmt: skip
    result = in_process(command, capsys)
    assert result.returncode == 2 and "holds files already" in result.stderr, result.stderr
    assert (run_dir / "metrics.csv").read_bytes() == before
