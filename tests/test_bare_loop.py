"""The benchmark on a user's model: the bare loop trains what plain PyTorch trains, bit for bit,
and the plan pairs the runs as the split needs (each full framework runner with the full plain
runner, the full plain runner with the bare loop); the paired ratios reach the report."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fourways.benchmark import cli, plans, results, slicing, yours  # noqa: E402
from fourways.compare import commands  # noqa: E402

WARMUP = ("--model", "examples.warmup_mlp.WarmupMLP", "--model.width=16", "--model.depth=3")


def train(script: str, run_dir: Path, *extra: str) -> dict[str, torch.Tensor]:
    """One run of `script` on one CPU thread (the task's data, 1 epoch); its model.pt."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    argv = [sys.executable, script, *extra, *WARMUP, "--epochs", "1", "--run-dir", str(run_dir)]
    done = subprocess.run(argv, cwd=ROOT, env=env | {"OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(run_dir / "model.pt")


def test_the_bare_loop_trains_what_plain_pytorch_trains(tmp_path: Path) -> None:
    """WarmupMLP (AdamW, a per-step warm-up scheduler), 1 epoch of the task's default data:
    the bare loop's model.pt equals simple_train.py's bit for bit, through raw_loop.py too
    (the command the benchmark starts)."""
    plain = train("simple_train.py", tmp_path / "torch", "--device", "cpu")
    bare = train("benchmarks/bare_loop.py", tmp_path / "bare")
    assert plain.keys() == bare.keys() and len(plain) == 8  # 4 linear layers' weights, biases
    assert all(torch.equal(plain[k], bare[k]) for k in plain)
    via_raw = train("benchmarks/raw_loop.py", tmp_path / "raw")
    assert all(torch.equal(plain[k], via_raw[k]) for k in plain)


def parse(*argv: str, out: Path) -> plans.Yours | None:
    return cli.parse_args([*argv, "--out", str(out)], ROOT).yours


def test_a_user_model_plan_pairs_full_runners_and_the_bare_loop(tmp_path: Path) -> None:
    argv = [*WARMUP[:2], "--model.width", "16", "--model.depth=3", "--num-samples", "2000"]
    given = parse("--sections", "headline", *argv, "--slice-s", "0.2", out=tmp_path)
    assert given is not None and given.flags == WARMUP and given.slice_s == 0.2
    runs = plans.plan(["headline"], {"headline": 2}, False, tmp_path, ROOT, given)
    pairs = [tuple(r.runner for r in runs[i : i + 2]) for i in range(0, len(runs), 2)]
    wanted = [("torch", "fabric"), ("torch", "accelerate"), ("torch", "lightning"),
              ("raw", "torch")]  # reference first  # fmt: skip
    assert pairs == wanted + wanted[1:] + wanted[:1]  # each repeat rotates
    for first, second in zip(runs[::2], runs[1::2], strict=True):
        assert first.pair == second.pair == plans.pair_name(second.runner, first.runner)
        assert first.env["COMPARE_PAUSE_AT"] == "51"  # 1600 training samples / 32, then 1
    for run in runs:
        argv = commands.command(run)[0]
        assert argv[-len(WARMUP) :] == list(WARMUP) and run.slice_s == 0.2
        assert "--hidden-dim" not in argv and "--model.hidden_dim" not in argv  # refused
        assert "--num-samples" in argv or "--data.num_samples" in argv  # the task's data
        assert run.point.model == shlex.join(WARMUP) and "WarmupMLP" in run.point.key
    assert any("benchmarks/raw_loop.py" in commands.command(r)[0] for r in runs)
    task = plans.plan(["headline"], {"headline": 1}, False, tmp_path, ROOT)
    assert len(task) == 2 * len(plans.HEADLINE_PAIRS) and not any(r.extra_args for r in task)


def test_a_user_model_is_checked_and_its_options_refused_without_it(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="sizes a user's model"):
        parse("--epochs", "3", out=tmp_path)
    with pytest.raises(Exception, match="--sections headline"):
        parse(*WARMUP, out=tmp_path)
    with pytest.raises(Exception, match="no init argument"):
        parse("--sections", "headline", *WARMUP, "--model.wdth=3", out=tmp_path)


def test_the_user_model_report_states_each_paired_ratio() -> None:
    """Records as the pairs leave them, each subject 3 % slower than its reference in slices
    of 0.2 s: the report gives each ratio with its interval and n."""
    given = plans.Yours(WARMUP, num_samples=2000, epochs=3, slice_s=0.2)
    records = []
    for repeat in range(6):
        for subject, reference in plans.YOURS_PAIRS:
            for runner, factor in ((reference, 1.0), (subject, 1.03)):
                starts = [i * 0.2 for i in range(int(runner == subject), 40, 2)]
                records.append(
                    dataclasses.asdict(given.point(runner))
                    | {"repeat": repeat, "ok": True, "pair": plans.pair_name(subject, reference)}
                    | {"slices": [(t, factor * 1e-2) for t in starts], "slice_s": 0.2}
                    | {"step_us": 1e4 * factor}
                )
    text = yours.headline_section(results.Results(records), given)
    assert text.count("1.030 [1.030–1.030] | 6, 0") == 4
    assert "over n = 6 repeats (min–max)" in text
    # The same slices judged as 0.05 s slices are too far apart to pair: no ratio at all.
    slices = [(i * 0.2, 1e-2) for i in range(0, 40, 2)]
    assert slicing.paired_ratio(slices[1:], slices, 0.05) is None
