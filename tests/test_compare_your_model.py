"""compare.py with a user's model (--model/--data): its command line, its checks and verdict on
runs made here from replays (fast), and end to end through the real runners (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from test_compare import run_compare
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fourways import parity  # noqa: E402
from fourways.compare import cli, commands, your_checks  # noqa: E402
from fourways.compare.plans import Run, plan  # noqa: E402
from fourways.driving import replay  # noqa: E402
from fourways.driving.trace import TRACE_ENV, Trace, WeightTrace  # noqa: E402

WARMUP = "examples.warmup_mlp.WarmupMLP"
BN_DROPOUT = "examples.batchnorm_dropout.BatchNormDropoutMLP"
SMALL = ["--epochs", "2", "--num-samples", "320"]  # the task's data: 256 training samples
DATA = "tests.test_diagnosis.Data"  # a user's DataModule with a batch_size (per process)
FIXED = "tests.test_compare_your_model.FixedBatch"  # and one without


class FixedBatch(L.LightningDataModule):
    """A DataModule whose batch size is its own: compare.py cannot keep a global batch with it."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(8, 4)), batch_size=4)


def parse(*argv: str):
    return cli.parse_args([*argv, "--out", "/nonexistent/never-written"], checkout=ROOT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", WARMUP, "--hidden-dim", "8"], "--hidden-dim sets the task's model"),
        (["--model", WARMUP, "--model.nope", "1"], "no init argument nope=1"),
        (["--model", "examples.nowhere.X"], "cannot import examples.nowhere"),
        (["--model", WARMUP, "--runners", "raw"], "the raw runner trains the task's MLP only"),
        (["--model.hidden_dim", "8"], "the task's model takes the task's options"),
        (["--data", DATA, "--data.batch_size", "8"], "compare.py sets it per run"),
        (["--data", DATA, "--num-samples", "64"], "--num-samples sets the task's data"),
        (["--data", DATA, "--processes", "2", "--batch-size", "15"], "not divisible by 2"),
        (["--data", FIXED, "--processes", "2"], "takes no batch_size: compared on 1 process"),
    ],
)
def test_what_compare_cannot_run_with_a_user_model_is_refused(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(*args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_bad_input_with_a_user_model_is_one_line_and_status_2():
    result = run_compare("--model", WARMUP, "--lr", "0.1", "--out", "/nonexistent/x", timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "--lr sets the task's model" in result.stderr


def test_every_runner_gets_the_model_in_lightningclis_syntax_and_a_trace():
    args = parse("--model", WARMUP, "--model.depth", "3", "--processes", "2", *SMALL)
    for run in plan(args):
        argv, _ = commands.command(run)
        text = " ".join(argv)
        assert f"--model {WARMUP} --model.depth 3" in text, run.runner
        assert "--hidden-dim" not in text and "--model.hidden_dim" not in text
        assert "--lr" not in argv and "--model.lr" not in argv  # the task model's options
        assert "--num-samples 320" in text or "--data.num_samples 320" in text  # the task's data
        assert run.env[TRACE_ENV] == str(run.log_dir / "trace.pt")


def test_a_user_datamodule_gets_its_batch_per_process():
    sys.path.insert(0, str(ROOT / "tests"))
    args = parse("--data", "test_diagnosis.Data", "--processes", "1", "2", "--accumulate", "1", "2")
    for run in plan(args):
        argv, _ = commands.command(run)
        per_process = 32 // (run.mode.processes * run.mode.accumulate)
        assert argv[argv.index("--data.batch_size") + 1] == str(per_process)
        assert "--batch-size" not in argv and "--num-samples" not in argv


def test_the_task_path_passes_no_model_flags_and_records_no_trace():
    for run in plan(parse("--processes", "2")):
        argv, _ = commands.command(run)
        assert "--model" not in argv and "--data" not in argv
        assert TRACE_ENV not in run.env


def fake_runs(tmp_path: Path, nudge_fabric_at: int | None = None, lr_from: int = 0) -> list[Run]:
    """torch and fabric runs of WarmupMLP on one process, written from the float32 replay."""
    args = parse("--model", WARMUP, "--runners", "torch", "fabric", "--epochs", "1",
                 "--num-samples", "160")  # fmt: skip
    args.out = tmp_path
    runs = plan(args)
    t = your_checks.training(runs[0], 1, 1, parity.INTERLEAVED)
    for run in runs:
        recorded = WeightTrace(run.trace)
        final = replay.replay(t, trace=recorded, args=replay.task_args(run.settings))
        if run.runner == "fabric" and nudge_fabric_at is not None:
            for state in recorded.states[nudge_fabric_at:]:
                state["net.2.bias"] = state["net.2.bias"] + 1e-3
            final = dict(recorded.states[-1])
        if run.runner == "fabric" and lr_from:  # a scheduler stepped at another interval
            for lrs in recorded.lrs[lr_from:]:
                lrs[0] *= 2
        run.run_dir.mkdir(parents=True)
        torch.save(final, run.run_dir / "model.pt")
        recorded.save()
        run.exit_code, run.metrics = 0, {}
    return runs


def test_runs_equal_to_plain_pytorch_agree(tmp_path):
    runs = fake_runs(tmp_path)
    agree, lines = your_checks.verdict(runs, your_checks.check_your_runs(runs))
    assert agree and lines[-1].startswith("AGREE"), lines


def test_a_run_that_parts_says_where(tmp_path):
    runs = fake_runs(tmp_path, nudge_fabric_at=3)
    agree, lines = your_checks.verdict(runs, your_checks.check_your_runs(runs))
    assert not agree
    (line,) = [x for x in lines if x.startswith("DISAGREE: fabric")]
    assert "after optimizer step 3, most in layer net.2 (parameter net.2.bias" in line, line


def test_a_run_whose_learning_rates_part_names_the_scheduler(tmp_path):
    runs = fake_runs(tmp_path, lr_from=2)
    agree, lines = your_checks.verdict(runs, your_checks.check_your_runs(runs))
    assert not agree
    assert any(x.startswith("DISAGREE: fabric (1 process): its learning rates part") for x in lines)
    assert any("cause: A scheduler stepped at another interval (after step 2:" in x for x in lines)


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def check_traces(report: dict) -> None:
    for run in report["runs"]:
        trace = Trace.load(Path(run["log_dir"]) / "trace.pt")
        steps = run["metrics"]["optimizer_steps"]
        assert trace.steps == list(range(steps + 1)), run["runner"]


@pytest.mark.slow
@pytest.mark.deep
def test_warmup_mlp_agrees_on_one_and_two_processes(tmp_path):
    out = tmp_path / "report"
    result = run_compare("--model", WARMUP, "--processes", "1", "2", *SMALL, "--check",
                         "--out", str(out), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(out)
    assert report["agree"] and report["verdict"][-1].startswith("AGREE")
    assert all(r["agrees"] for r in report["runs"]) and len(report["runs"]) == 8
    check_traces(report)


@pytest.mark.slow
@pytest.mark.deep
def test_batchnorm_dropout_agrees_on_one_process_and_parts_on_two(tmp_path):
    out = tmp_path / "report"
    result = run_compare("--model", BN_DROPOUT, "--processes", "1", "2", *SMALL, "--check",
                         "--out", str(out), timeout=600)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = report_of(out)
    by_mode = {n: [r for r in report["runs"] if r["mode"]["processes"] == n] for n in (1, 2)}
    assert all(r["agrees"] for r in by_mode[1])
    assert not any(r["agrees"] for r in by_mode[2])
    text = "\n".join(report["verdict"])
    assert "2 processes: cause: BatchNorm under several processes (net.1)" in text
    assert "2 processes: cause: Randomness in training_step" in text
    assert "the fix does NOT run here" in text
    assert "first differ (beyond 1e-09) after optimizer step 1" in text
    check_traces(report)
