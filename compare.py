"""Run the runners on the same task, side by side: do they agree, and what does each one cost?

    python compare.py                                        # the four runners, 1 process each
    python compare.py --processes 1 2 --precision 32-true bf16-mixed --check
    python compare.py --runners torch fabric --extra-args "fabric=--seed 7" --check   # must fail
    python compare.py --processes 2 --strategy ddp fsdp2 --check   # sharded beside DDP, on CPUs

Each run is the runner's real entry point (`python simple_train.py ...`, `torchrun`, `accelerate
launch`, ...) started as a subprocess with the same task settings, the same thread count and its
own run directory. Then it prints one table (losses, accuracy, max |weight difference| against
plain PyTorch in the same mode, times, memory), says whether the runners agree, and writes a report
folder (default reports/<timestamp>/): report.md, report.json, curves.png, step_time.png, and the
runs' own directories and logs.

When a run agrees (the rule that --check enforces; fourways/parity.py holds the reasons):
- its model.pt equals, BIT FOR BIT, an in-process replay of the same training that follows the
  runner's own arithmetic: the same order, the same samples in each process's forward pass
  (Accelerate shards each step's batch where DistributedSampler interleaves it), DDP's gradient
  combination. The replay runs here, on this CPU, with the run's thread count, so the rule holds
  for any seed, size and machine; no tolerance is tuned. It covers 1 and 2 processes (gloo's sum
  of 3 or more operands has its own order; --check refuses those);
- its metrics.json records the precision, world size and accumulation that were asked;
- in bf16-mixed, its weights differ from the fp32 replay (equal bits mean it never used bf16).
The distance to plain PyTorch is reported, not checked: runners with another grouping round
differently (Adam amplifies it), and the report shows that the same steps computed in float64
are ~1e-16 apart, so the gap is rounding, not another training.

How the costs are measured (see docs/comparison.md):
- step time: the interval between consecutive optimizer steps of rank 0, in every epoch but the
  first (warm-up), never across an epoch's end (validation, checkpoints); median and p25-p75.
  The times come from torch's global optimizer-step hook, installed by
  benchmarks/steptimer/sitecustomize.py through PYTHONPATH, so no runner is edited.
- start-up: from starting the command to the end of the first optimizer step.
- peak RSS: the largest single process of the run (the kernel's max RSS, from wait4). For a
  multi-process run that is one rank or the launcher, not the sum; report.json lists each process.
- state MiB/process: the parameters and optimizer state that rank 0 holds at the end, as the
  runner records it in metrics.json (its shards under FSDP2, full copies under DDP).

Your model: `--model PATH --model.NAME VALUE --data PATH --data.NAME VALUE` (LightningCLI's
syntax; default: the task's classes) goes to every runner in that syntax. The task's options
(--hidden-dim, ...) are refused with a user's class; --batch-size stays the global batch (a user's
DataModule gets `--data.batch_size` = global / (processes x accumulation)). Each run then records
its weights after every optimizer step (FOURWAYS_TRACE), and a run agrees when it equals plain
PyTorch's weights bit for bit in its grouping and when, computed in float64, its grouping and
process count train what one device trains (fourways/compare/your_checks.py); otherwise the
verdict says where (the first optimizer step, the layer) and why (BatchNorm, randomness in
training_step, a sampler of its own, a global-RNG shuffle, an uneven last batch, the scheduler's
interval, a loss not averaged), each cause with its fix in every framework.

With --strategy fsdp2, Accelerate (no FSDP on CPUs) must refuse: the report shows it refused with
its reason, and a run that trained instead disagrees (--check fails).

The machinery is the package fourways.compare, one module per job (plans, commands, processes,
steplogs, checks, report, plots, cli); this file is its entry point at the checkout's top.

Exit status: 0 done (and, with --check, the runners agree); 1 a run failed, or --check and the
runners disagree; 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fourways.compare import cli

ROOT = Path(__file__).resolve().parent  # the checkout: the runners, minimal/, the step timer


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, checkout=ROOT)


if __name__ == "__main__":
    sys.exit(main())
