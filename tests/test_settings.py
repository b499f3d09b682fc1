"""Each setting once (fourways/settings.py): every setting is an option of every runner, spelled
for each, reaches the model and the data, and is recorded in the run's configuration (resume
refusals: test_resume.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from conftest import RUNNERS, in_process, load_metrics, load_weights
from jsonargparse import Namespace

from datamodule import TaskDataModule
from fourways import settings, task
from fourways.driving import classes
from fourways.trainer_cli import cli_options
from lightning_module import MLPClassifier

# Away from every default: 160 samples (120 to train: 4 steps of 30, 40 to validate).
GIVEN = {"num_samples": 160, "num_features": 12, "num_classes": 3, "label_noise": 0.3,
         "val_fraction": 0.25, "batch_size": 30, "epochs": 1}  # fmt: skip
TRAINER = {"num_samples": "--data.num_samples", "num_features": "--data.num_features",
           "num_classes": "--model.num_classes", "label_noise": "--data.label_noise",
           "val_fraction": "--data.val_fraction", "batch_size": "--data.batch_size",
           "epochs": "--trainer.max_epochs"}  # fmt: skip


def args(name: str, given: dict) -> list[str]:
    def spell(key: str) -> str:
        return TRAINER[key] if name == "lightning" else "--" + key.replace("_", "-")

    return [a for key, value in given.items() for a in (spell(key), str(value))]


def test_the_options_are_the_task_classes_init_arguments() -> None:
    # The hand-written runners' options cover every init argument of the LightningModule and
    # the LightningDataModule they drive (settings.init_arguments refuses to leave one out).
    dests = {option.dest for option in settings.OPTIONS}
    for cls in (TaskDataModule, MLPClassifier, task.MLP):
        arguments = set(inspect.signature(cls).parameters) - {"dataset"}
        assert arguments <= dests, (cls.__name__, arguments - dests)
    assert {"num_features", "label_noise", "val_fraction", "num_classes"} <= dests


def test_every_argument_of_the_task_is_a_setting() -> None:
    # An argument added to the task's data or model without a field in settings.Settings would
    # be left at its default by every runner, unrecorded: refused here.
    fields = {option.key for option in settings.OPTIONS}
    for function in (task.make_dataset, task.split_dataset, task.MLP):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                assert name in fields, f"{function.__name__}({name}=...) is not in Settings"
                assert parameter.default == getattr(settings.DEFAULTS, name), name


def parsed_task_classes() -> Namespace:
    """LightningCLI's parsed model and data groups for the task's classes (subclass mode)."""
    return Namespace(**{
        role: Namespace(class_path=path, init_args=Namespace(**dict.fromkeys(
            inspect.signature(cls).parameters)))
        for role, path, cls in (("data", classes.TASK_DATA, TaskDataModule),
                                ("model", classes.TASK_MODEL, MLPClassifier))
    })  # fmt: skip


def test_each_setting_is_spelled_for_every_runner() -> None:
    given = settings.Settings(num_samples=320, label_noise=0.3, checkpoint_every=None)
    hand = settings.hand_written_flags(given)
    assert hand[hand.index("--num-samples") + 1] == "320"
    assert hand[hand.index("--batch-size") + 1] == str(task.GLOBAL_BATCH_SIZE)
    assert "--checkpoint-every" not in hand  # left out: None
    trainer = settings.trainer_flags(given)
    assert trainer[trainer.index("--data.label_noise") + 1] == "0.3"
    assert trainer[trainer.index("--trainer.max_epochs") + 1] == str(task.EPOCHS)
    # The Trainer's spelling of the options the LightningCLI records (cli_options).
    parsed = parsed_task_classes()
    recorded = cli_options(parsed)
    for option in settings.OPTIONS:  # LightningCLI's long form, recorded; the short one, typed
        assert recorded[option.key].replace(".init_args.", ".") == option.trainer, option.key


def test_every_runner_trains_the_task_it_was_given(tmp_path: Path, capsys) -> None:
    runs = {}
    for runner in RUNNERS:
        run_dir = tmp_path / runner.name
        result = in_process(runner.command(run_dir, 1, args(runner.name, GIVEN)), capsys)
        assert result.returncode == 0, result.stderr
        runs[runner.name] = run_dir
    default_noise = tmp_path / "default_noise"
    plain = {**GIVEN}
    del plain["label_noise"]
    result = in_process(RUNNERS[0].command(default_noise, 1, args("torch", plain)), capsys)
    assert result.returncode == 0, result.stderr

    reference = load_weights(runs["torch"])
    assert reference["model.hidden.weight"].shape == (task.HIDDEN_DIM, 12)  # num_features
    assert reference["model.out.weight"].shape == (3, task.HIDDEN_DIM)  # num_classes
    # The label noise changes the training: a runner that ignored it would differ from the
    # others, which train bit for bit alike on one device.
    assert not torch.equal(
        reference["model.out.weight"], load_weights(default_noise)["model.out.weight"]
    )
    for name, run_dir in runs.items():
        weights = load_weights(run_dir)
        assert all(torch.equal(weights[k], reference[k]) for k in reference), name
        config = load_metrics(run_dir)["config"]
        recorded = {k: config["global_batch_size" if k == "batch_size" else k] for k in GIVEN}
        assert recorded == GIVEN, name


def test_the_trainer_records_every_init_argument_of_its_classes() -> None:
    # Derived from the parsed model and data groups: nothing listed by hand.
    parsed = parsed_task_classes()
    options = cli_options(parsed)
    keys = {option.key for option in settings.OPTIONS}
    assert keys <= set(options), keys - set(options)
    assert options["num_features"] == "data.init_args.num_features"  # the model's is linked
