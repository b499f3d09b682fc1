"""compare.py end to end, through the real entry points, on a small task (320 samples)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fourways import parity  # noqa: E402
from fourways.benchmark import plans, plots, profiling, results, sections, slicing  # noqa: E402
from fourways.compare import checks, commands, steplogs  # noqa: E402
from fourways.compare.plans import Mode, Run  # noqa: E402
from fourways.settings import Settings  # noqa: E402

SMALL = ["--epochs", "2", "--num-samples", "320"]  # 256 training samples: 8 steps per epoch
PNG = b"\x89PNG\r\n\x1a\n"


def run_compare(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    return subprocess.run(
        [sys.executable, "compare.py", *args],
        cwd=ROOT,
        env=env | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def load_state(run: dict) -> dict[str, torch.Tensor]:
    return torch.load(Path(run["run_dir"]) / "model.pt", weights_only=True)


def check_report(out: Path, result: subprocess.CompletedProcess[str], runs: int) -> dict:
    """The report holds the table, the JSON and the plots, and they say what the runs said."""
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    for name in ("curves.png", "step_time.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    assert len(report["runs"]) == runs
    assert "| max \\|Δw\\| vs torch |" in markdown  # pipes in a header cell escaped: one table
    table = result.stdout.split(checks.RULE)[0].splitlines()
    assert table and all(len(line) <= 100 for line in table), table  # the console's table fits
    for run in report["runs"]:
        said = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())
        assert run["metrics"] == said
        last = said["epochs"][-1]
        cells = [run["runner"], str(said["world_size"]), said["precision"]]
        cells += [f"{last[k]:.4f}" for k in ("train_loss", "val_loss", "val_acc")]
        rows = markdown.splitlines()
        line = next(row for row in rows if row.startswith(f"| {run['runner']} "))
        assert all(f"| {c}" in line for c in cells), (cells, line)
        assert f"{last['val_loss']:.4f}" in result.stdout
        steps = said["optimizer_steps"] // len(said["epochs"])
        assert run["steady_step_s"]["n"] == steps - 1  # epoch 2's intervals, none across epochs
        assert 0 < run["startup_s"] < run["total_s"]
        assert run["peak_rss_mib"] > 50 and run["threads"] == [1]
    return report


@pytest.mark.slow
def test_runners_agree_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "report"
    runners = ["torch", "fabric", "lightning", "accelerate", "raw"]
    result = run_compare(*SMALL, "--runners", *runners, "--jobs", "2", "--check", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = check_report(out, result, runs=5)
    assert report["agree"] is True
    assert "AGREE: all 5 runs match" in result.stdout
    reference = load_state(report["runs"][0])
    for run in report["runs"]:
        state = load_state(run)  # recomputed here, not taken from compare.py's word
        assert all(torch.equal(state[k], reference[k]) for k in reference), run["runner"]
        assert run["max_weight_diff"] == run["reference_diff"] == 0.0 and run["agrees"] is True

    again = run_compare(*SMALL, "--out", str(out))  # never overwrites a report
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already holds a report" in again.stderr


@pytest.mark.slow
def test_a_silent_fp32_run_fails_the_bf16_check(tmp_path: Path) -> None:
    # Fabric told to train in fp32 while bf16-mixed is asked: what a silent fallback would do.
    out = tmp_path / "report"
    fallback = ["--runners", "torch", "fabric", "--precision", "bf16-mixed",
                "--extra-args", "fabric=--precision 32-true", "--jobs", "2"]  # fmt: skip
    result = run_compare(*SMALL, *fallback, "--check", "--out", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    report = check_report(out, result, runs=2)
    assert report["agree"] is False
    torch_run, fabric = report["runs"]
    assert torch_run["agrees"] is True and torch_run["fp32_diff"] > 0
    assert fabric["agrees"] is False and fabric["fp32_diff"] == 0.0
    # The weights alone give it away, whatever metrics.json claims.
    assert "did not compute in bf16" in " ".join(fabric["problems"])
    assert fabric["extra_args"] == ["--precision", "32-true"]
    assert fabric["command"].endswith("--precision 32-true")
    assert "DISAGREE: fabric (1 process, bf16-mixed)" in result.stdout
    assert "| fabric * |" in (out / "report.md").read_text()  # marked: not the same task


def test_the_check_catches_fp32_weights_recorded_as_bf16(tmp_path: Path) -> None:
    # A runner that falls back silently writes "bf16-mixed" in metrics.json: the weights decide.
    settings = Settings(epochs=1, num_samples=320)
    run = Run("fabric", Mode(1, "bf16-mixed"), settings, tmp_path, tmp_path, checkout=ROOT)
    fp32 = dataclasses.replace(run.setup, precision="32-true")
    torch.save(parity.replay(fp32), tmp_path / "model.pt")
    run.exit_code = 0
    run.metrics = {"precision": "bf16-mixed", "world_size": 1, "accumulate_grad_batches": 1}
    found = checks.problems(run, checks.load_weights(run), checks.References())
    assert any("did not compute in bf16" in problem for problem in found), found
    assert run.fp32_diff == 0.0 and run.reference_diff > 0


@pytest.mark.slow
def test_two_processes_in_both_groupings(tmp_path: Path) -> None:
    out = tmp_path / "report"
    two = ["--runners", "torch", "accelerate", "--processes", "2"]
    result = run_compare(
        "--epochs", "1", "--num-samples", "320", *two, "--check", "--out", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    for run in report["runs"]:
        assert run["metrics"]["world_size"] == 2
        assert run["reference_diff"] == 0.0 and run["agrees"] is True, run["problems"]
        ranks = sorted(p["rank"] or "0" for p in run["processes"] if p["steps"])
        assert ranks == ["0", "1"], run["processes"]  # both ranks trained, and were measured
    accelerate = report["runs"][1]
    # Reported, not checked: float32 rounding of another grouping; the same steps in float64.
    assert accelerate["max_weight_diff"] is not None
    assert accelerate["float64_gap"] <= parity.SAME_SAMPLES_FLOAT64_TOL
    assert "computed in float64 the two groupings are" in result.stdout


@pytest.mark.slow
def test_fsdp2_mode_checks_the_sharded_run_and_shows_accelerate_refused(tmp_path: Path) -> None:
    out = tmp_path / "report"
    two = ["--runners", "torch", "accelerate", "--processes", "2", "--strategy", "fsdp2"]
    result = run_compare(
        "--epochs", "1", "--num-samples", "320", *two, "--check", "--out", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    torch_run, accelerate = report["runs"]
    assert "--strategy fsdp2" in torch_run["command"]
    assert torch_run["reference_diff"] == 0.0 and torch_run["agrees"] is True
    held = torch_run["metrics"]["state_bytes_per_process"]
    # 418 float32 parameters + Adam's two moments, halved by sharding (+ Adam's step counters)
    assert 418 * 3 * 4 / 2 <= held < 418 * 3 * 4
    assert accelerate["exit_code"] != 0 and not Path(accelerate["run_dir"], "model.pt").exists()
    assert "refused, as it must: accelerate (2 processes, fsdp2)" in result.stdout
    markdown = (out / "report.md").read_text()
    assert "| state MiB/process |" in markdown and "| refused |" in markdown


def test_accelerate_training_under_fsdp2_counts_as_a_disagreement(tmp_path: Path) -> None:
    # Were Accelerate to train (plain DDP, as it does on CPUs when left alone), its weights could
    # equal the replay: the run must still not count as agreeing.
    settings = Settings(epochs=1, num_samples=320)
    run = Run("accelerate", Mode(2, strategy="fsdp2"), settings, tmp_path, tmp_path, checkout=ROOT)
    torch.save(parity.replay(run.setup), tmp_path / "model.pt")
    run.exit_code = 0
    run.metrics = {"precision": "32-true", "world_size": 2, "accumulate_grad_batches": 1}
    found = checks.problems(run, checks.load_weights(run), checks.References())
    assert found and found[0].startswith("it trained, where it must refuse"), found
    assert run.reference_diff == 0.0  # the weights alone would have passed
    assert not run.refused_as_expected


def test_fsdp2_commands_are_each_runners_own_spelling(tmp_path: Path) -> None:
    settings, mode = Settings(), Mode(2, strategy="fsdp2")
    argv = {
        name: " ".join(
            commands.command(Run(name, mode, settings, tmp_path, tmp_path, checkout=ROOT))[0]
        )
        for name in ("torch", "fabric", "lightning", "accelerate")
    }
    assert "torch.distributed.run" in argv["torch"] and argv["torch"].endswith("--strategy fsdp2")
    assert "--devices 2" in argv["fabric"] and argv["fabric"].endswith("--strategy fsdp2")
    assert "--config configs/lightning/fsdp2.yaml --trainer.devices 2" in argv["lightning"]
    assert "--trainer.strategy.init_args.data_parallel_size 2" in argv["lightning"]
    assert "--trainer.strategy ddp" not in argv["lightning"]
    assert "--config_file configs/accelerate/fsdp.json --num_processes 2" in argv["accelerate"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "3"], "not divisible by 3 process(es)"),
        (["--strategy", "fsdp2"], "fsdp2 is compared with 2 or more --processes"),
        (["--processes", "4", "--check"], "bit for bit with up to 2 processes"),
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in [
                (["--precision", "16-mixed"], "needs a CUDA GPU"),
                (["--extra-args", "nobody=--seed 1"], "expected RUNNER=ARGS"),
                (["--runners", "raw", "--processes", "2"], "raw runner runs 1 process"),
            ]
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(args: list[str], message: str) -> None:
    result = run_compare(*args, "--out", "/nonexistent/never-written", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_steady_intervals_skip_warm_up_and_epoch_ends() -> None:
    times = [0, 1, 2, 3, 10, 11, 13, 16]  # 2 epochs of 4 steps; 3 -> 10 spans validation
    assert steplogs.steady_intervals(times, epochs=2) == [1, 2, 3]
    assert steplogs.steady_intervals(times, epochs=1) == [1, 1, 1, 7, 1, 2, 3]
    assert steplogs.steady_intervals(times[:7], epochs=2) == []  # steps do not split evenly
    assert steplogs.quartiles([4, 1, 3, 2, 5]) == {"median": 3, "p25": 2, "p75": 4, "n": 5}


def test_benchmark_pairs_every_ratio_and_attributes(tmp_path: Path) -> None:
    runs = plans.plan(["headline"], {"headline": 2}, quick=True, out=tmp_path, root=ROOT)
    pairs = [tuple(r.runner for r in runs[i : i + 2]) for i in range(0, len(runs), 2)]
    wanted = [(reference, subject) for subject, reference in plans.HEADLINE_PAIRS]
    assert len(wanted) == 8 and {("raw", "min-torch"), ("min-fabric", "fabric")} <= set(wanted)
    assert pairs == wanted + wanted[1:] + wanted[:1]  # reference first; each repeat rotates
    for first, second in zip(runs[::2], runs[1::2], strict=True):
        assert first.pair == second.pair == plans.pair_name(second.runner, first.runner)
        assert first.env["COMPARE_PAUSE_AT"] == second.env["COMPARE_PAUSE_AT"] == "1001"
        assert first.log_dir != second.log_dir and first.repeat == second.repeat
    site = "/venv/lib/python3.11/site-packages"
    stack = [f"{ROOT}/lightning_module.py:main", f"{site}/lightning/pytorch/loops/x.py:run"]
    backward = f"{site}/torch/_tensor.py:backward"
    assert profiling.area_of([*stack, backward], ROOT) == "torch backward"
    setattr_frame = f"{site}/torch/nn/modules/module.py:__setattr__"
    assert profiling.area_of([*stack, setattr_frame], ROOT) == "lightning.pytorch"
    assert profiling.area_of([f"{ROOT}/simple_train.py:main"], ROOT) == "runner code"


def test_a_paired_ratio_cancels_the_machine_drifting_under_it() -> None:
    """Slices alternate every SLICE_S while the machine's speed swings 1.9x within a second:
    a run 7 % slower than its reference reads as 1.07, not as the swing."""
    slice_s = slicing.SLICE_S

    def speed(t: float) -> float:  # seconds per step of the reference at time t
        return 1e-3 * (1.45 + 0.45 * math.sin(2 * math.pi * t / 0.8))

    starts = [i * slice_s for i in range(40)]
    reference = [(t, speed(t)) for t in starts[::2]]
    run = [(t, 1.07 * speed(t)) for t in starts[1::2]]
    # The mean of the slices either side misses a curved drift by at most 2.4 % here (half its
    # second derivative times SLICE_S squared), as often up as down: the median, within 1 %.
    assert slicing.paired_ratio(run, reference) == pytest.approx(1.07, rel=0.01)
    unpaired = statistics.median(m for _, m in run) / statistics.median(m for _, m in reference)
    assert abs(unpaired - 1.07) > 0.02  # what comparing the runs' medians alone would give
    # A slice with no reference slice close on both sides (the other run had ended, or the
    # orchestrator lagged) is left out; too few compared slices give no ratio at all.
    assert slicing.paired_ratio(run[-3:], reference) is None
    gap = reference[:5] + reference[8:]  # 0.4 s between two reference slices: 4 run slices out
    assert slicing.paired_ratio(run, gap) == pytest.approx(1.07, rel=0.01)
    assert slicing.paired_ratio(run[:7], reference) is not None
    assert slicing.paired_ratio(run[:7], gap) is None  # 4 of its 7 slices left: too few


@pytest.mark.slow
def test_a_pair_trains_by_turns_after_its_barrier(tmp_path: Path) -> None:
    """Two real runs on one CPU: after both reach the barrier, each takes steps only inside its
    own time slices, the other stopped; both end well and give a paired ratio. The benchmark
    itself shares their CPU here, the worst case: a run it wakes preempts it and steps at once."""
    point = plans.Point("headline", "min-torch", **plans.HEADLINE)  # as the benchmark runs
    reference, subject = runs = plans.pair_runs(point, "raw", 0, tmp_path, ROOT)
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(own)})  # execute_pair puts the runs on this CPU
    try:
        slicing.execute_pair(runs, timeout=240)
    finally:
        os.sched_setaffinity(0, own)
    for run in runs:
        steplogs.collect(run)
        assert run.ok, (run.log_dir / "stderr.log").read_text()[-2000:]
        times = next(
            log["step_times"]
            for log in map(json.loads, map(Path.read_text, (run.log_dir / "steps").glob("*.json")))
            if log["step_times"]
        )
        assert len(times) == plans.steps_per_epoch(point) * point.epochs
        barrier = int(run.env["COMPARE_PAUSE_AT"])
        # SIGSTOP takes effect within a scheduler tick: a step may land just past its slice.
        late = 0.02
        outside = [
            t
            for t in times[barrier:]
            if not any(start <= t <= stop + late for start, stop in run.windows)
        ]
        assert outside == [], f"{run.runner}: {len(outside)} steps outside its slices"
    slices = sorted(window for run in runs for window in run.windows)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(slices))  # one run at a time
    assert slicing.paired_ratio(slicing.slice_medians(subject), slicing.slice_medians(reference))


def test_the_headline_report_states_each_split_ratio(tmp_path: Path) -> None:
    """Records as the pairs leave them, each pair's runs 3 % apart: the table, the verdicts and
    the plot all carry the paired ratios. 7 repeats: 6 left where one is left out, the fewest
    whose interval covers the 95 % a verdict needs."""
    records = []
    for repeat in range(7):
        for subject, reference in plans.HEADLINE_PAIRS:
            for runner, factor in ((reference, 1.0), (subject, 1.03)):
                starts = [i * slicing.SLICE_S for i in range(int(runner == subject), 40, 2)]
                point = plans.Point("headline", runner, **plans.HEADLINE)
                records.append(
                    dataclasses.asdict(point)
                    | {"repeat": repeat, "ok": True, "pair": plans.pair_name(subject, reference)}
                    | {"slices": [(t, factor * (1e-3 + repeat * 1e-4)) for t in starts]}
                    | {"step_us": 1000 * factor, "peak_rss_mib": 300.0}
                )
    short = [r for r in records if r["pair"] == "min-torch-vs-raw" and r["repeat"] == 0]
    for rec in short:  # one repeat of one pair whose runs shared 4 slices only: left out
        rec["slices"] = rec["slices"][:4]
    res = results.Results(records)
    body, verdicts = sections.headline_section(res, quick=True)
    assert body.count("1.03 [1.03–1.03]") == 7  # three framework ratios, four project ratios
    assert sum(line.endswith(": met") for line in verdicts) == 5 and "0 of the 8" in verdicts[-1]
    assert verdicts[-2] == "repeats left out, under 5 slices paired: 1 of min-torch-vs-raw"
    assert "over n = 6 repeats (min–max), which holds the true median with probability 96.9%" in (
        body
    )
    plots.plot_headline(res, tmp_path / "headline.png")
    assert (tmp_path / "headline.png").read_bytes().startswith(PNG)


def test_benchmark_ratios_carry_an_interval_and_a_verdict() -> None:
    tight = results.spread([1.04, 1.05, 1.05, 1.06, 1.05, 1.05, 1.04])
    assert tight["low"] <= tight["median"] == 1.05 <= tight["high"] <= 1.06
    assert not sections.too_wide(tight, quick=False)
    assert sections.target_line("full ÷ minimal", tight, 1.10).endswith(": met")
    over = results.spread([1.3, 1.31, 1.32, 1.3, 1.31, 1.3])
    assert "MISSED" in sections.target_line("x", over, 1.10)
    straddling = results.spread([1.0, 1.2, 1.05, 1.15, 1.1])
    assert "undecided" in sections.target_line("x", straddling, 1.10)
    assert sections.too_wide(results.spread([0.8, 1.0, 1.3]), quick=True)
