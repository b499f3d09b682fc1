"""The report's two plots: loss and accuracy per epoch (curves.png), and step times (step_time.png).

matplotlib is imported inside each function: a comparison that never reaches its report never
pays for it. write_report (report.py) selects the Agg backend first.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path

from fourways.compare.plans import Run


def plot_curves(runs: Sequence[Run], path: Path) -> None:
    """Loss and accuracy per epoch, one line per run: lines that agree lie on top of each other."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    styles = itertools.cycle([("-", "o", 3.5), ("--", "s", 2.5), (":", "^", 2.0), ("-.", "x", 1.5)])
    for run, (line, marker, width) in zip([r for r in runs if r.ok], styles, strict=False):
        epochs = run.metrics["epochs"]
        x = [e["epoch"] for e in epochs]
        for ax, key in zip(axes, ("train_loss", "val_loss", "val_acc"), strict=True):
            ax.plot(x, [e[key] for e in epochs], line, marker=marker, lw=width, label=run.name)
    for ax, title in zip(
        axes, ("train loss", "validation loss", "validation accuracy"), strict=True
    ):
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Per epoch, every run (agreeing runs overlap)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_step_times(runs: Sequence[Run], path: Path) -> None:
    """The distribution of steady-state step times per run: box p25-p75, whiskers p5-p95."""
    import matplotlib.pyplot as plt

    timed = [r for r in runs if r.steps and r.steps["intervals_s"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(timed) + 1.2))
    data = [[t * 1e6 for t in r.steps["intervals_s"]] for r in timed]
    if timed:
        ax.boxplot(data, orientation="horizontal", whis=(5, 95), showfliers=False, widths=0.6)
        ax.set_yticks(range(1, len(timed) + 1), [r.name for r in timed], fontsize=8)
        for i, values in enumerate(data, start=1):
            median = statistics.median(values)
            ax.annotate(f"{median:.0f}", (median, i - 0.34), fontsize=7, ha="center")
    ax.invert_yaxis()
    ax.set(
        title="Time per optimizer step (median, box p25–p75, whiskers p5–p95)",
        xlabel="µs, steady state: first epoch excluded, rank 0",
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
