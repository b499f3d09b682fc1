"""The report's five plots, one PNG per section: results.md shows each below its table.

matplotlib is imported inside each function: the benchmark's runs need none of it, and the
report selects its non-interactive backend first (cli.report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fourways.benchmark.plans import FRAMEWORKS, MINIMAL_OF, RUNNERS, Point
from fourways.benchmark.profiling import AREA_ORDER
from fourways.benchmark.results import Results
from fourways.benchmark.sections import NAMES, PLAIN_VS_RAW_TARGET, PROJECT_TARGET, WIDE_TARGET

COLORS = {
    "raw": "#7f7f7f",
    "torch": "#1f77b4",
    "fabric": "#9467bd",
    "accelerate": "#ff7f0e",
    "lightning": "#2ca02c",
}


def plot_headline(res: Results, path: Path) -> None:
    """The headline's paired ratios with their intervals: what each framework adds (its minimal
    loop against minimal plain PyTorch, and plain against raw tensors), what this project adds
    (each full runner against its framework's minimal loop), each against its target."""
    import matplotlib.pyplot as plt

    plain = MINIMAL_OF["torch"]
    panels = [
        ("What the framework adds: minimal loop ÷ minimal plain PyTorch",
         [("plain PyTorch ÷ raw tensors", res.paired(plain, "raw"), "torch", PLAIN_VS_RAW_TARGET)]
         + [(NAMES[f], res.paired(MINIMAL_OF[f], plain), f, None) for f in FRAMEWORKS]),
        ("What this project adds: full runner ÷ its minimal loop",
         [(NAMES[r], res.paired(r, m), r, PROJECT_TARGET) for r, m in MINIMAL_OF.items()]),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, (title, bars) in zip(axes, panels, strict=True):
        bars = [(label, st, c, t) for label, st, c, t in bars if st]
        for i, (_, st, color, target) in enumerate(bars):
            err = [[st["median"] - st["low"]], [st["high"] - st["median"]]]
            ax.barh(i, st["median"], xerr=err, color=COLORS[color], capsize=3)
            ax.text(max(st["high"], target or 0) + 0.03, i, f"{st['median']:.2f}", va="center",
                    fontsize=8)  # fmt: skip
            if target:
                ax.plot([target] * 2, [i - 0.45, i + 0.45], "k:", lw=1.2)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yticks(range(len(bars)), [label for label, *_ in bars], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max([2.2] + [st["high"] * 1.15 for _, st, *_ in bars]))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ratio of time per step", fontsize=8)
    n = next((st for _, st, *_ in panels[1][1] if st), {"n": 0, "coverage": 0.0})
    fig.suptitle(f"Paired ratios: bar, the median over {n['n']} repeats; whiskers, its "
                 f"order-statistic interval ({n['coverage']:.1%} coverage); dotted, the target",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_log_log(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """A one-panel sweep plot on log-log axes, with its grid and legend, written to `path`."""
    import matplotlib.pyplot as plt

    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_width(res: Results, path: Path) -> None:
    """Time per step against width (left), and each runner against plain PyTorch (right)."""
    import matplotlib.pyplot as plt

    widths = sorted({p.hidden_dim for p in res.by_point if p.section == "width"})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for r in RUNNERS:
        pts = [(w, Point("width", r, hidden_dim=w, epochs=3)) for w in widths]
        base = {w: Point("width", "torch", hidden_dim=w, epochs=3) for w in widths}
        step = [(w, s["median"]) for w, p in pts if (s := res.stat(p, "step_us"))]
        ratio = [(w, x["median"]) for w, p in pts if (x := res.ratio(p, base[w]))]
        if step:
            left.plot(*zip(*step, strict=True), "o-", color=COLORS[r], label=r)
        if ratio and r != "torch":
            right.plot(*zip(*ratio, strict=True), "o-", color=COLORS[r], label=r)
    left.set(
        xscale="log",
        yscale="log",
        xlabel="hidden width",
        ylabel="µs per step",
        title="Time per step",
    )
    right.axhline(1.0, color=COLORS["torch"], lw=1)
    right.axhline(WIDE_TARGET, color="k", ls=":", lw=1, label=f"×{WIDE_TARGET}")
    right.set(
        xscale="log",
        xlabel="hidden width",
        ylabel="× plain PyTorch",
        title="Cost against plain PyTorch",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_samples(res: Results, path: Path) -> None:
    """The whole command's time against the data set's size, start-up included."""
    import matplotlib.pyplot as plt

    sizes = sorted({p.num_samples for p in res.by_point if p.section == "samples"})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in RUNNERS:
        stats = [
            (n, res.stat(Point("samples", r, num_samples=n, epochs=2), "total_s")) for n in sizes
        ]
        pts = [(n, s["median"]) for n, s in stats if s]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=COLORS[r], label=r)
    save_log_log(fig, ax, path, "samples (2 epochs)", "whole command, s",
                 "Start-up included: total time")  # fmt: skip


def plot_ddp(res: Results, path: Path) -> None:
    """Plain PyTorch's time per step per width: 1 process, 2 threads, 2 processes."""
    import matplotlib.pyplot as plt

    widths = sorted(
        {p.hidden_dim for p in res.by_point if p.section == "ddp" and p.runner == "torch"}
    )
    shapes = {(1, 1): "1 process", (1, 2): "1 process × 2 threads", (2, 1): "2 processes (DDP)"}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (procs, threads), label in shapes.items():
        config = Point("ddp", "torch", epochs=3, processes=procs, threads=threads)
        stats = [(w, res.stat(config.config(hidden_dim=w), "step_us")) for w in widths]
        pts = [(w, s["median"]) for w, s in stats if s]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=label)
    save_log_log(fig, ax, path, "hidden width", "µs per optimizer step",
                 "Plain PyTorch on 2 cores: where DDP pays")  # fmt: skip


def plot_profile(res: Results, path: Path) -> None:
    """Each runner's step as one bar, split by where its time goes."""
    import matplotlib.pyplot as plt

    profiles = {r["runner"]: r["profile"] for r in res.records if "profile" in r}
    runners = [r for r in RUNNERS if r in profiles]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(runners) + 1.6))
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(runners):
        left = 0.0
        for j, a in enumerate(AREA_ORDER):
            us = profiles[r]["areas_us"].get(a, 0)
            ax.barh(i, us, left=left, color=cmap(j), label=a if i == 0 else None)
            left += us
    ax.set_yticks(range(len(runners)), runners)
    ax.invert_yaxis()
    ax.set(
        xlabel="µs per optimizer step (sampled profile, steady state)",
        title="Where a step's time goes",
    )
    ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
