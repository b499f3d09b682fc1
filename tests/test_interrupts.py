"""Ctrl-C or SIGTERM on compare.py or the benchmark ends every process they started, launchers'
children included, says so in one line, exits 128 + the signal, and writes no report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, run, run_env

import compare
from benchmarks import overhead
from fourways import interrupts
from fourways.benchmark import cli as benchmark_cli
from fourways.compare import cli, report
from fourways.contract import errors

START_TIMEOUT_S = 180  # torch's import and a launcher's start-up, on a loaded 2-core machine


def tagged_by(pid: int) -> list[int]:
    """Live processes started by the compare.py or benchmark whose pid is `pid` (its tag)."""
    return [p for p in all_pids() if environ_has(p, f"{interrupts.MARKER}={pid}-")]


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def environ_has(pid: int, prefix: str) -> bool:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(prefix.encode()) for e in entries)


def group_and_session(pid: int) -> tuple[int, int] | None:
    """(process group, session) of a live process; None once it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return None if fields[0] == "Z" else (int(fields[2]), int(fields[3]))


def live_in(groups: set[int]) -> list[int]:
    """Live processes in any of these process groups or sessions."""
    return [p for p in all_pids() if (ids := group_and_session(p)) and set(ids) & groups]


def interrupt_when_running(cmd: list[str], processes: int, sig: int) -> tuple[int, str]:
    """Start `cmd`, wait until `processes` of its runs' processes are up, send `sig`, and check
    that nothing of its runs is left once it has exited; its exit status and stderr."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(started := tagged_by(proc.pid)) < processes:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"only {started} started"
            time.sleep(0.2)
        groups = {i for p in started if (ids := group_and_session(p)) for i in ids}
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # Checked at once, no sleeping: the command ends its runs before it exits. Both ways: the
    # tag in the environment, and the process groups and sessions the runs were seen in.
    left = {*tagged_by(proc.pid), *live_in(groups)}
    for pid in left:  # a failing test leaves nothing running either
        os.kill(pid, signal.SIGKILL)
    assert not left, err
    assert "Traceback" not in err
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_on_compare_ends_a_launcher_and_its_ranks(tmp_path: Path) -> None:
    out = tmp_path / "report"
    cmd = [PYTHON, "compare.py", "--runners", "torch", "fabric", "--processes", "2",
           "--epochs", "200", "--num-samples", "320", "--out", str(out)]  # fmt: skip
    # torchrun and its two ranks (each in a session of its own: torch's elastic agent)
    status, err = interrupt_when_running(cmd, 3, signal.SIGINT)
    assert status == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("compare.py: interrupted by SIGINT: ended 1 run(s) in progress"), err
    assert "torch (2 processes)" in line and line.endswith("; no report written")
    assert not any((out / name).exists() for name in report.REPORT_FILES)
    # The same --out again: the interrupted comparison's runs make way, this one reports.
    again = run([PYTHON, "compare.py", "--runners", "torch", "--epochs", "1", "--num-samples",
                 "320", "--out", str(out)])  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "held an interrupted run of it: its runs are replaced" in again.stderr
    assert (out / "report.json").exists() and not (out / interrupts.INTERRUPTED).exists()
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["1p-32-true-acc1"]


@pytest.mark.slow
def test_sigterm_on_the_benchmark_ends_the_pair_it_was_timing(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [PYTHON, "benchmarks/overhead.py", "--sections", "headline", "--quick", "--repeats",
           "1", "--out", str(out)]  # fmt: skip
    status, err = interrupt_when_running(cmd, 2, signal.SIGTERM)  # a headline pair: two runs
    assert status == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("benchmarks/overhead.py: interrupted by SIGTERM: ended 2 run(s)"), err
    assert line.endswith("; no results written")
    assert sorted(p.name for p in out.iterdir()) == ["interrupted.txt", "logs", "runs"]


def test_an_interrupted_comparison_folder_may_be_reused_another_not(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(errors.UsageError, match="holds the runs of another comparison"):
        cli.report_dir(tmp_path, ROOT)
    (tmp_path / interrupts.INTERRUPTED).write_text("compare.py: interrupted by SIGINT ...\n")
    assert cli.report_dir(tmp_path, ROOT) == tmp_path
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(errors.UsageError, match="already holds a report"):
        cli.report_dir(tmp_path, ROOT)


@pytest.mark.parametrize("script", ["compare.py", "benchmarks/overhead.py"])
def test_elsewhere_than_linux_a_one_line_refusal(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    main = {"compare.py": compare.main, "benchmarks/overhead.py": overhead.main}[script]
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "never")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {script} needs Linux"), err
    assert not (tmp_path / "never").exists()


def test_the_benchmark_reuses_an_interrupted_folder_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit) as exit_:
        benchmark_cli.parse_args(["--out", str(tmp_path)], ROOT)
    assert exit_.value.code == 2
    assert "holds the runs of another benchmark" in capsys.readouterr().err
    interrupts.mark_interrupted(tmp_path, "benchmarks/overhead.py: interrupted by SIGINT ...")
    assert benchmark_cli.parse_args(["--out", str(tmp_path)], ROOT).out == tmp_path
    interrupts.clear_interrupted(tmp_path, "benchmarks/overhead.py")
    assert list(tmp_path.iterdir()) == []
    assert "its runs are replaced" in capsys.readouterr().err
