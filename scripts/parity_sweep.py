"""Do the parity checks hold beyond the default task? 5 seeds x 3 sizes, through compare.py --check.

    nice python scripts/parity_sweep.py     # 180 runs: ~19 min on 2 quiet cores, ~70 shared
    python scripts/parity_sweep.py --seeds 1 2 --sizes 320 --out reports/sweep-small

Each cell (seed, number of samples) runs compare.py twice, with --check:
- the four runners on one process, fp32 and bf16-mixed;
- plain PyTorch and Accelerate on two processes, without and with 2 accumulation steps: the two
  groupings of each step's samples (interleaved, sharded). The Trainer and Fabric share plain
  PyTorch's grouping and are checked on two processes by the test suite.
Then it prints, per check, the largest difference seen over all cells and the bound it is held
to (fourways/parity.py gives each bound's reason). The 20x size trains 2 epochs (1000 optimizer
steps) to keep the sweep short (start-up dominates each run); the others train the task's 5.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fourways import parity, task  # noqa: E402

SEEDS = (42, 1, 2, 3, 4)
SIZES = (320, task.NUM_SAMPLES, 20 * task.NUM_SAMPLES)
EPOCHS = {20 * task.NUM_SAMPLES: 2}  # else the task's 5
INVOCATIONS = {
    "one-process": ["--precision", "32-true", "bf16-mixed"],
    "two-processes": ["--runners", "torch", "accelerate", "--processes", "2",
                      "--accumulate", "1", "2"],
}  # fmt: skip


def run_cell(seed: int, size: int, out: Path) -> list[dict]:
    """compare.py --check for one seed and size; every run's entry of report.json."""
    runs = []
    epochs = EPOCHS.get(size, task.EPOCHS)
    for name, args in INVOCATIONS.items():
        folder = out / f"seed{seed}-n{size}" / name
        if not (folder / "report.json").exists():
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted cell: run it again
            command = [sys.executable, "compare.py", "--seed", str(seed), "--num-samples",
                       str(size), "--epochs", str(epochs), "--jobs", "2", "--check",
                       "--out", str(folder), *args]  # fmt: skip
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            print(f"seed {seed}, {size} samples, {name}: exit {result.returncode}", flush=True)
        report = json.loads((folder / "report.json").read_text())
        runs += [run | {"cell": (seed, size), "agree": report["agree"]} for run in report["runs"]]
    return runs


def metric_gap(runs: list[dict]) -> float:
    """Largest relative difference of a per-epoch mean between 2 processes and 1 (same runner)."""
    single = {(r["cell"], r["runner"]): r for r in runs if mode(r) == (1, "32-true", 1)}
    worst = 0.0
    for r in runs:
        if mode(r) != (2, "32-true", 1):
            continue
        one = single[r["cell"], r["runner"]]["metrics"]["epochs"]
        for ours, ref in zip(r["metrics"]["epochs"], one, strict=True):
            for key in ("train_loss", "val_loss", "val_acc"):
                worst = max(worst, abs(ours[key] - ref[key]) / abs(ref[key]))
    return worst


def two_vs_one_process(runs: list[dict]) -> float:
    """Largest weight gap between plain PyTorch on 2 processes and on 1, in float32: reported."""
    import torch

    def weights(run: dict) -> dict:
        return torch.load(Path(run["run_dir"]) / "model.pt", weights_only=True)

    single = {r["cell"]: r for r in runs if r["runner"] == "torch" and mode(r) == (1, "32-true", 1)}
    pairs = [(r, single[r["cell"]]) for r in runs
             if r["runner"] == "torch" and mode(r) == (2, "32-true", 1)]  # fmt: skip
    return largest(parity.max_abs_diff(weights(a), weights(b)) for a, b in pairs)


def mode(run: dict) -> tuple[int, str, int]:
    m = run["mode"]
    return m["processes"], m["precision"], m["accumulate"]


def largest(values: Iterable[float | None]) -> float:
    return max((v for v in values if v is not None), default=float("nan"))


def table(runs: list[dict]) -> list[tuple[str, str, str]]:
    def select(
        processes: int, precision: str, accumulate: int, runners: tuple[str, ...] | None = None
    ) -> list[dict]:
        return [r for r in runs if mode(r) == (processes, precision, accumulate)
                and (runners is None or r["runner"] in runners)]  # fmt: skip

    fp32_1, bf16_1 = select(1, "32-true", 1), select(1, "bf16-mixed", 1)
    two, two_acc = select(2, "32-true", 1), select(2, "32-true", 2)
    sharded = [r for r in two + two_acc if r["runner"] == "accelerate"]
    cells = {r["cell"] for r in runs}
    agreeing = {r["cell"] for r in runs if r["agree"]}

    def worst(group: list[dict], key: str) -> str:
        return f"{largest(r[key] for r in group):.1e} ({len(group)} runs)"

    return [
        ("1 process fp32, 4 runners: max abs dw vs replay", worst(fp32_1, "reference_diff"), "0"),
        ("1 process bf16-mixed, 4 runners: max abs dw vs bf16 replay",
         worst(bf16_1, "reference_diff"), "0"),
        ("1 process bf16-mixed: SMALLEST abs dw vs fp32 replay (must not be 0)",
         f"{min(r['fp32_diff'] for r in bf16_1):.1e} ({len(bf16_1)} runs)",
         f"> {parity.BF16_MIN_DIFF_FROM_FP32:g}"),
        ("2 processes (torch, accelerate): max abs dw vs own-grouping replay",
         worst(two, "reference_diff"), "0"),
        ("2 processes x 2 accumulated: max abs dw vs own-grouping replay",
         worst(two_acc, "reference_diff"), "0"),
        ("compare.py --check: cells that AGREE", f"{len(agreeing)} / {len(cells)}", "all"),
        ("reported: accelerate 2 processes vs torch, float32 (rounding)",
         worst(sharded, "max_weight_diff"), "no bound (see fourways/parity.py)"),
        ("same steps in float64, accelerate's grouping vs torch's", worst(sharded, "float64_gap"),
         f"{parity.SAME_SAMPLES_FLOAT64_TOL:g}"),
        ("reported: torch 2 processes vs 1 process, float32 (rounding)",
         f"{two_vs_one_process(runs):.1e}", "no bound"),
        ("2 processes vs 1: largest relative gap of an epoch's loss or accuracy",
         f"{metric_gap(runs):.1e}", f"{parity.EPOCH_METRIC_REL_TOL:g}"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "parity-sweep")
    args = parser.parse_args()
    runs = [run for seed in args.seeds for size in args.sizes
            for run in run_cell(seed, size, args.out)]  # fmt: skip
    rows = table(runs)
    print(f"\nseeds {args.seeds}, sizes {args.sizes}\n")
    print("| check | largest seen | bound |\n|---|---|---|")
    print("\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows))
    return 0 if all(r["agree"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
