"""Per optimizer step: what each framework adds, what this project adds, where it stops mattering.

    python benchmarks/overhead.py                 # everything: about 20 minutes on 2 cores
    python benchmarks/overhead.py --sections headline   # the split, 6 repeats: about 10 minutes
    python benchmarks/overhead.py --quick         # fewer points and repeats (headline: 3, 5 min)

3 repeats give the median an interval that covers it 75 % of the time, so --quick's verdicts read
"undecided": it is a look; 6 repeats (96.9 %) are the fewest that decide
(fourways/benchmark/intervals.py). Linux only (wait4, sched_setaffinity, /proc). Ctrl-C or SIGTERM
ends every run it started, says what was cut short in one line, exits 130 / 143 and writes no
results (fourways/interrupts.py).

Every run is a runner's real entry point, started by compare.py's machinery: the same thread count
for all (1, unless --threads), the same step timer (torch's global optimizer-step hook), its own
process. The headline times its runs two at a time, time-sliced on one CPU
(fourways/benchmark/slicing.py); the other sections' runs are interleaved: each repeat runs every
configuration once, its runners in an order rotated from one repeat to the next, so that a slow
minute on the machine hits all of them.

Sections:
  headline  width 32, 40000 samples, 4 epochs: each framework's minimal loop (minimal/) and its
            full runner, and the raw-tensor loop (benchmarks/raw_loop.py). Splits the cost:
            the framework (its minimal loop / minimal plain PyTorch) and this project (the full
            runner / its framework's minimal loop), each ratio from a pair of runs timed
            together, with the order-statistic interval of the median over repeats
            (fourways/benchmark/intervals.py: [min, max] of 6 repeats covers 96.9 %, of 3 only
            75 %).
  width     hidden width 32 .. 65536: where the framework's per-step cost stops mattering.
  samples   1k .. 100k samples: whole-command time, start-up included.
  ddp       plain PyTorch with 1 process, 1 process x 2 threads and 2 processes, per width:
            where DDP starts to pay; and every runner with 2 processes at the default width.
  profile   a sampled profile of each runner's steady state: where a step's time goes.

A user's model (the headline only; fourways/benchmark/yours.py):

    python benchmarks/overhead.py --sections headline --model examples.warmup_mlp.WarmupMLP \
        --model.width 700 --model.depth 3 [--data PATH --data.NAME VALUE] \
        [--num-samples 6000 --epochs 3 --slice-s 0.1]

  minimal/ trains only the task's MLP, so the pairs become each full framework runner against the
  full plain runner (what the framework adds for this model) and the full plain runner against
  benchmarks/bare_loop.py (what driving a LightningModule with this project's bookkeeping adds).
  A step of tens of ms needs longer slices (--slice-s): at least 5 steps each.

Writes reports/benchmark-<timestamp>/ (or --out): results.md, results.json and PNG plots.

The code is the package fourways/benchmark/, one module per job (its __init__ lists them).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the runners, and reports/ by default
sys.path.insert(0, str(ROOT))  # the checkout's fourways package, as the runners at its top use
from fourways.benchmark import cli  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, ROOT)


if __name__ == "__main__":
    sys.exit(main())
