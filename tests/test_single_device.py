"""The four runners on one device: bitwise-equal weights, equal metrics, the contract's outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, assert_equals_replay, load_metrics, load_weights, run, task_config

from fourways import parity, task

CONTRACT_FIELDS = {
    "runner", "versions", "world_size", "device", "precision", "seed", "global_batch_size",
    "per_device_batch_size", "accumulate_grad_batches", "optimizer_steps", "wall_clock_s", "config",
    "epochs",
}  # fmt: skip
CONFIG = {  # the run's configuration, as checkpoints record it: the defaults here
    "seed": task.SEED, "epochs": task.EPOCHS, "global_batch_size": task.GLOBAL_BATCH_SIZE,
    "lr": task.LEARNING_RATE, "num_samples": task.NUM_SAMPLES, "hidden_dim": task.HIDDEN_DIM,
    "accumulate": 1, "precision": "32-true", "world_size": 1, "num_features": task.NUM_FEATURES,
    "num_classes": task.NUM_CLASSES, "label_noise": task.LABEL_NOISE,
    "val_fraction": task.VAL_FRACTION, "checkpoint_every": None,
}  # fmt: skip


def test_four_runners_equal_the_replay_bit_for_bit(single_device_runs: dict[str, Path]) -> None:
    # One process: every runner's arithmetic is the replay's (fourways/parity.py), so no tolerance.
    for name, run_dir in single_device_runs.items():
        weights = load_weights(run_dir)
        # The LightningModule's own state_dict, no framework prefix: the task's holds its MLP
        # as `model`.
        expected = [
            "model.hidden.bias",
            "model.hidden.weight",
            "model.out.bias",
            "model.out.weight",
        ]
        assert sorted(weights) == expected, name
        assert_equals_replay(name, run_dir, parity.Setup())


def test_four_runners_report_the_same_epochs(single_device_runs: dict[str, Path]) -> None:
    reference = load_metrics(single_device_runs["torch"])["epochs"]
    assert len(reference) == task.EPOCHS
    for name, run_dir in single_device_runs.items():
        epochs = load_metrics(run_dir)["epochs"]
        for ours, ref in zip(epochs, reference, strict=True):
            # Equal weights; the means are summed in each runner's own order (fourways/parity.py).
            for key in ("train_loss", "val_loss", "val_acc"):
                expected = pytest.approx(ref[key], rel=parity.EPOCH_METRIC_REL_TOL)
                assert ours[key] == expected, (name, ours["epoch"], key)


def test_metrics_json_holds_the_contract_fields(single_device_runs: dict[str, Path]) -> None:
    for name, run_dir in single_device_runs.items():
        metrics = load_metrics(run_dir)
        assert metrics.keys() >= CONTRACT_FIELDS, name
        assert metrics["runner"] == name
        assert metrics["world_size"] == 1 and metrics["device"] == "cpu"
        assert metrics["global_batch_size"] == metrics["per_device_batch_size"] == 32
        assert metrics["optimizer_steps"] == 5 * 800 // 32
        assert metrics["precision"] == "32-true" and metrics["seed"] == 42
        assert metrics["versions"]["torch"] == torch.__version__
        assert task_config(name, metrics["config"]) == CONFIG, name


def test_outputs_have_the_usual_file_mode(single_device_runs: dict[str, Path]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for name, run_dir in single_device_runs.items():
        for output in ("model.pt", "metrics.json"):
            mode = (run_dir / output).stat().st_mode & 0o777
            assert mode == 0o666 & ~umask, (name, output, oct(mode))


def test_console_outside_a_terminal_redraws_nothing(single_device_runs: dict[str, Path]) -> None:
    """Output to a pipe, as in CI or `> log`: one line per epoch, counted from 1 in all four (the
    Trainer included: its bar counts from 0), no bar redrawn with carriage returns, and the
    line that says where the run was saved."""
    for name, run_dir in single_device_runs.items():
        out = (run_dir / "console.txt").read_text()
        err = (run_dir / "console.err.txt").read_text()
        assert "\r" not in out + err, name
        epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
        assert [line.split()[1] for line in epoch_lines] == ["1", "2", "3", "4", "5"], name
        assert f"run saved in {run_dir} (model.pt, metrics.json)" in out.splitlines(), name


@pytest.mark.parametrize("every_n_steps", [0, 5])
def test_trainer_checkpoints_as_its_flags_say(tmp_path: Path, every_n_steps: int) -> None:
    """The Trainer runner's ModelCheckpoint and config writer are Lightning's, configured by their
    public flags (their per-step cost is the benchmark's to show, docs/comparison.md): every N
    steps a step checkpoint, always last.ckpt, and the run's config.yaml."""
    command = [PYTHON, "lightning_module.py", "fit", "--trainer.accelerator", "cpu",
               "--trainer.max_epochs", "1", "--data.num_samples", "320",
               "--checkpoint.every_n_train_steps", str(every_n_steps),
               "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    result = run(command)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "lightning" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in saved and ("step=5.ckpt" in " ".join(saved)) == bool(every_n_steps)


def test_model_learns(single_device_runs: dict[str, Path]) -> None:
    epochs = load_metrics(single_device_runs["torch"])["epochs"]
    assert epochs[-1]["val_acc"] > 0.7  # chance is 0.5
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_longer_training_approaches_the_noise_ceiling(tmp_path: Path) -> None:
    # 10 % label noise caps the accuracy near 90 %; plain PyTorch is quick enough to check.
    command = [PYTHON, "simple_train.py", "--device", "cpu", "--epochs", "40"]
    result = run([*command, "--run-dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert load_metrics(tmp_path)["epochs"][-1]["val_acc"] >= 0.85


# As if only torch were installed: a None entry in sys.modules makes `import name` fail.
TORCH_ALONE = """
import runpy, sys
for name in ("lightning", "pytorch_lightning", "lightning_fabric", "accelerate",
             "torchmetrics", "jsonargparse", "tqdm"):
    sys.modules[name] = None
sys.argv = ["minimal/simple_train.py", *sys.argv[1:]]
runpy.run_path("minimal/simple_train.py", run_name="__main__")
"""


def test_the_minimal_plain_loop_runs_with_torch_alone(tmp_path: Path) -> None:
    # simple_train.py trains LightningModules (any --model), so it needs lightning; the plain
    # loop for learners keeps the original's promise: torch alone.
    result = run([PYTHON, "-c", TORCH_ALONE, "--epochs", "1", "--save", str(tmp_path / "m.pt")])
    assert result.returncode == 0, result.stderr
    assert set(torch.load(tmp_path / "m.pt", weights_only=True)) == set(task.MLP().state_dict())
