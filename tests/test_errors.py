"""Bad input: exit status 2, one line on stderr, no traceback, nothing written, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RUNNERS, in_process, run, without_cuda

BY_NAME = {runner.name: runner for runner in RUNNERS}
COMMON = {  # the same mistakes, in each runner's own spelling
    "torch": [["--bogus"], ["--epochs", "0"], ["--num-samples", "-5"], ["--lr", "nan"],
              ["--batch-size", "30", "--accumulate", "4"], ["--device", "cuda"],
              ["--label-noise", "1.5"], ["--val-fraction", "0"], ["--num-classes", "1"],
              ["--num-samples", "100", "--val-fraction", "0.001"]],
    "fabric": [["--bogus"], ["--epochs", "0"], ["--hidden-dim", "0"], ["--lr", "abc"],
               ["--devices", "3"], ["--accelerator", "cuda"], ["--strategy", "bogus"]],
    "lightning": [["--bogus"], ["--trainer.max_epochs", "0"], ["--data.num_samples", "0"],
                  ["--model.lr", "-1"], ["--trainer.devices", "3"],
                  ["--data.batch_size", "30", "--trainer.accumulate_grad_batches", "4"],
                  ["--trainer.accelerator", "gpu"], ["--config", "configs/lightning/none.yaml"],
                  ["--trainer.strategy", "bogus"], ["--trainer.accelerator", "bogus"],
                  ["--data.label_noise", "1.5"], ["--model.num_classes", "1"],
                  ["--data.num_samples", "100", "--data.val_fraction", "0.001"]],
    "accelerate": [["--bogus"], ["--epochs", "0"], ["--batch-size", "0"], ["--lr", "inf"],
                   ["--batch-size", "30", "--accumulate", "4"], ["--mixed-precision", "fp16"],
                   ["--num-features", "0"], ["--val-fraction", "1"]],
}  # fmt: skip
NEEDS_NO_GPU = [["--device", "cuda"], ["--accelerator", "cuda"], ["--trainer.accelerator", "gpu"]]


def case(name: str, args: list[str]) -> object:
    marks = [without_cuda] if args in NEEDS_NO_GPU else []
    return pytest.param(name, args, marks=marks, id=f"{name}:{' '.join(args)}")


# Each runner's first mistake as a real process; every mistake through its main() in-process.
FIRST = [case(name, cases[0]) for name, cases in COMMON.items()]
CASES = [case(name, args) for name, cases in COMMON.items() for args in cases]


def assert_refused(result, run_dir: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout
    assert not (run_dir / "model.pt").exists()


@pytest.mark.parametrize(("name", "args"), FIRST)
def test_bad_input_is_refused_in_one_line(name: str, args: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert_refused(run(BY_NAME[name].command(run_dir, 1, args)), run_dir)
    assert not run_dir.exists() or not any(run_dir.rglob("*.pt"))


@pytest.mark.parametrize(("name", "args"), CASES)
def test_every_mistake_is_refused_in_one_line(
    name: str, args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert_refused(in_process(BY_NAME[name].command(run_dir, 1, args), capsys), run_dir)
    assert not run_dir.exists() or not any(run_dir.rglob("*.pt"))


def test_a_bad_precision_from_accelerate_launch_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `accelerate launch --mixed_precision` or its config file hands the script.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp17")
    run_dir = tmp_path / "run"
    assert_refused(in_process(BY_NAME["accelerate"].command(run_dir, 1), capsys), run_dir)


def test_a_malformed_config_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("trainer: [unclosed\n")
    run_dir = tmp_path / "run"
    command = BY_NAME["lightning"].command(run_dir, 1, ["--config", str(config)])
    assert_refused(in_process(command, capsys), run_dir)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_finished_run_is_never_overwritten(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    earlier = {"model.pt": b"earlier weights", "metrics.json": b'{"earlier": true}'}
    for file, content in earlier.items():
        (run_dir / file).write_bytes(content)
    result = in_process(BY_NAME[name].command(run_dir, 1, []), capsys)
    assert result.returncode == 2 and "already holds a finished run" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == earlier
