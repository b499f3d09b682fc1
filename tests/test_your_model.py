"""A user's LightningModule and LightningDataModule in the hand-written runners (plain PyTorch,
Fabric, Accelerate), through their real commands, against the Trainer where it sets the meaning:

- what the four runners cannot train alike, or what does not import or fit, is refused in one line
  before anything trains (the Trainer's own refusals: test_trainer_your_model.py);
- a scheduler steps where the Trainer steps it (per step with a frequency under accumulation, per
  epoch in the tuple form): the four end bit for bit alike;
- `self.log` means what it means under the Trainer (sync_dist, reduce_fx, step and epoch values,
  torchmetrics objects), on 2 processes;
- a user's model killed mid-epoch resumes alone, bit for bit, in each runner.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RUNNERS, in_process, load_metrics, load_weights, run
from test_resume import assert_same_weights, killed_run

HAND_WRITTEN = [runner for runner in RUNNERS if runner.name != "lightning"]
(TRAINER,) = [runner for runner in RUNNERS if runner.name == "lightning"]
WARMUP = ["--model", "examples.warmup_mlp.WarmupMLP"]
TINY = ["--data", "tests.user_models.TinyData"]

REFUSALS = {
    "does not import": (["--model", "tests.user_models_gone.Model"], "cannot import"),
    "no such class": (["--model", "tests.user_models.Gone"], "has no Gone"),
    "not a LightningModule": (["--model", "tests.user_models.NotAModule"], "LightningModule"),
    "not a LightningDataModule": (["--data", "tests.user_models.TinyModel"], "DataModule"),
    "an unknown init argument": ([*WARMUP, "--model.nope", "1"], "no init argument nope"),
    "an init argument of the wrong type": ([*WARMUP, "--model.depth", "x"], '"depth"'),
    "an init argument without a value": ([*WARMUP, "--model.depth"], "needs a value"),
    "a task option with a user's model": ([*WARMUP, "--hidden-dim", "8"], "--hidden-dim"),
    "an init argument of the task's model": (["--model.hidden_dim", "8"], "--hidden-dim"),
    "manual optimization": (["--model", "tests.user_models.ManualOptimization"], "manual"),
    "two optimizers": (["--model", "tests.user_models.TwoOptimizers"], "2 optimizers"),
    "a monitored scheduler": (["--model", "tests.user_models.MonitoredScheduler"], "monitors"),
    "configure_optimizers reads the Trainer": (
        ["--model", "tests.user_models.StepsFromTheTrainer"], "not attached to a `Trainer`"),
    "a Trainer-only hook": (["--model", "tests.user_models.OverridesOptimizerStep"], "overrides"),
}  # fmt: skip


# Fabric and Accelerate reach the same shared checks through their own start-up: one refusal of
# each stage (import, init arguments, the module contract, configure_optimizers) in each.
EACH_STAGE = ("does not import", "an init argument of the wrong type", "manual optimization",
              "two optimizers")  # fmt: skip


def refusal_cases() -> list:
    """Every refusal in the plain runner; each stage's in Fabric and Accelerate."""
    return [
        pytest.param(runner, args, words, id=f"{runner.name}-{case}")
        for runner in HAND_WRITTEN
        for case, (args, words) in REFUSALS.items()
        if runner.name == "torch" or case in EACH_STAGE
    ]


@pytest.mark.parametrize(("runner", "args", "words"), refusal_cases())
def test_what_the_runners_cannot_train_alike_is_refused_in_one_line(
    runner, args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (conftest.in_process: the script's own main); a real start below."""
    run_dir = tmp_path / "run"
    assert_refused_in_one_line(in_process(runner.command(run_dir, 1, args), capsys), words, run_dir)


def test_a_refusal_is_one_line_from_a_real_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--model", "tests.user_models.TwoOptimizers"]
    assert_refused_in_one_line(
        run(HAND_WRITTEN[0].command(run_dir, 1, args)), "2 optimizers", run_dir
    )


def assert_refused_in_one_line(result, words: str, run_dir: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert words in lines[0], lines[0]
    assert not run_dir.exists() or not any(run_dir.rglob("*.pt")), "it trained"


@pytest.mark.slow
@pytest.mark.deep
@pytest.mark.parametrize("model", ["StepsEveryThirdBatch", "DecaysEachEpoch"])
def test_a_scheduler_steps_where_the_trainer_steps_it(model: str, tmp_path: Path) -> None:
    """TinyData: 128 training samples, batches of 16 = 8 an epoch, accumulation 3 steps the
    optimizer after batches 3, 6 and 8 (the epoch's last), as the Trainer does. A per-step
    scheduler every 3rd batch then steps after batch 3 and 6; a per-epoch one after batch 8."""
    classes = ["--model", f"tests.user_models.{model}", *TINY]
    trainer_dir = tmp_path / "lightning"
    trainer_args = [*classes, "--trainer.max_epochs", "3", "--trainer.accumulate_grad_batches", "3"]
    result = run(TRAINER.command(trainer_dir, 1, trainer_args))
    assert result.returncode == 0, result.stderr
    reference = load_weights(trainer_dir)
    assert load_metrics(trainer_dir)["optimizer_steps"] == 9
    for runner in HAND_WRITTEN:
        run_dir = tmp_path / runner.name
        result = run(runner.command(run_dir, 1, [*classes, "--epochs", "3", "--accumulate", "3"]))
        assert result.returncode == 0, result.stderr
        assert load_metrics(run_dir)["optimizer_steps"] == 9, runner.name
        assert_same_weights(load_weights(run_dir), reference)


@pytest.mark.slow
@pytest.mark.deep
def test_self_log_means_what_it_means_under_the_trainer_on_two_processes(tmp_path: Path) -> None:
    """Rank 0 records its own value without sync_dist, the mean over processes with it, the sum
    with reduce_fx="sum"; a step value is rank 0's last; a torchmetrics object covers every
    process's samples (TinyData's 32 validation labels, whose mean is known)."""
    classes = ["--model", "tests.user_models.LogsPerRank", *TINY]
    trainer_dir = tmp_path / "lightning"
    result = run(TRAINER.command(trainer_dir, 2, [*classes, "--trainer.max_epochs", "1"]))
    assert result.returncode == 0, result.stderr
    (expected,) = load_metrics(trainer_dir)["epochs"]
    assert expected["rank_own"] == 0.0 and expected["rank_synced"] == 0.5
    assert expected["rank_summed"] == 3.0  # (0 + 1) + (1 + 1): one validation batch each
    assert expected["step_rank"] == 3.0  # rank 0's last batch index (4 batches each)
    assert expected["epoch_rank"] == 0.5
    for runner in HAND_WRITTEN:
        run_dir = tmp_path / runner.name
        result = run(runner.command(run_dir, 2, [*classes, "--epochs", "1"]))
        assert result.returncode == 0, result.stderr
        (epoch,) = load_metrics(run_dir)["epochs"]
        assert epoch.keys() == expected.keys(), runner.name
        for key in expected.keys() - {"epoch_s", "train_loss", "val_loss", "val_acc"}:
            assert epoch[key] == pytest.approx(expected[key], rel=1e-6), (runner.name, key)


@pytest.mark.slow
@pytest.mark.parametrize(
    "runner",
    # plain PyTorch in every run of the suite; Fabric and Accelerate in the deep tier
    [pytest.param(r, marks=[] if r.name == "torch" else [pytest.mark.deep]) for r in HAND_WRITTEN],
    ids=lambda runner: runner.name,
)
def test_a_user_model_killed_mid_epoch_resumes_alone_bit_for_bit(runner, tmp_path: Path) -> None:
    """WarmupMLP (AdamW, a per-step warm-up) on 320 samples: 8 steps an epoch, a checkpoint
    every 5; the kill after step 13 leaves step 10's, in epoch 2. The resume names nothing but
    the run directory: the recorded class and --model.depth 3 continue the run exactly."""
    args = [*WARMUP, "--model.depth", "3", "--epochs", "3", "--num-samples", "320"]
    reference = tmp_path / "reference"
    assert run(runner.command(reference, 1, args)).returncode == 0
    run_dir = tmp_path / "run"
    assert killed_run(runner, run_dir, 1, "step:13", args, every=5) != 0
    assert not (run_dir / "model.pt").exists()

    refused = run(runner.command(run_dir, 1, ["--resume", "--model.depth", "2"]))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "contradicts" in refused.stderr and "--model.NAME" in refused.stderr

    result = run(runner.command(run_dir, 1, ["--resume"]))
    assert result.returncode == 0, result.stderr
    assert "epoch 2, batch 2, optimizer step 10" in result.stdout
    assert_same_weights(load_weights(run_dir), load_weights(reference))
    resumed, uninterrupted = load_metrics(run_dir)["epochs"], load_metrics(reference)["epochs"]
    assert [e["val_loss"] for e in resumed] == [e["val_loss"] for e in uninterrupted]
