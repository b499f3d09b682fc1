"""The report's sections: each one's table and text, and the verdicts against the targets.

The headline splits each runner's cost in two (what its framework adds, what this project adds)
and gives each ratio a verdict against its target: met when the whole interval is at or under
it, missed when all of it is above, undecided when the interval spans it or covers less than a
verdict needs (too few repeats). The sweeps (width, samples, ddp) and the profile are tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fourways.benchmark import intervals
from fourways.benchmark.plans import (
    FRAMEWORKS,
    HEADLINE,
    HEADLINE_PAIRS,
    MINIMAL_OF,
    RUNNERS,
    Point,
    pair_name,
)
from fourways.benchmark.profiling import AREA_ORDER
from fourways.benchmark.results import Results
from fourways.benchmark.slicing import MIN_CYCLES, SLICE_S
from fourways.compare import report
from fourways.settings import DEFAULTS

NAMES = {"torch": "plain PyTorch", "fabric": "Fabric", "accelerate": "Accelerate",
         "lightning": "Trainer"}  # fmt: skip
PROJECT_TARGET = 1.10  # a full runner against its own framework's minimal loop
PLAIN_VS_RAW_TARGET = 1.25  # minimal plain PyTorch (DataLoader) against the raw-tensor loop
WIDE_TARGET = 1.1  # each framework against plain PyTorch at the widest model
# A headline ratio decides something only when its interval covers 95 % (intervals.LEVEL: at least
# 6 repeats) and lies within this of it.
INTERVAL_LIMIT = {False: 0.10, True: 0.15}  # full run, --quick
HEADLINE_TEXT = (
    f"Width 32, global batch 32, {HEADLINE['num_samples']} samples, {HEADLINE['epochs']} epochs, "
    "one process, one thread. Each ratio comes from a pair of runs on one CPU: both train their "
    f"first epoch, then take turns, {SLICE_S} s each, through the rest. A slice's time per step "
    "(the median interval between its steps) is divided by the mean of the other run's slices just "
    "before and after it; a repeat's ratio is the median over its slices, and the table gives "
    "the median over repeats. µs/step, for scale only: "
    "the median slice, then the median over repeats of each run's own slices, unpaired, so it "
    "swings with the machine (a full runner can read faster than its minimal loop); the ratios "
    "are what compare. "
    "Minimal: the framework's loop in minimal/, nothing but the task. Full: the runner with its "
    "metrics, checkpoints (every epoch), resume and fault points, as a user runs it."
)


# ---------------------------------------------------------------------------------------------
# Figures and verdicts
# ---------------------------------------------------------------------------------------------
def fmt(stat: dict[str, float] | None, digits: int = 0, bounds: bool = True) -> str:
    """A median, with its min-max over repeats when they differ and `bounds`."""
    if stat is None:
        return "–"
    text = f"{stat['median']:.{digits}f}"
    if bounds and stat["min"] != stat["max"]:
        text += f" ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"
    return text


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    return report.markdown_table([dict(zip(header, r, strict=True)) for r in rows], header)


def ci(stat: dict[str, float] | None, digits: int = 2) -> str:
    """A ratio and its order-statistic interval (its coverage is stated beside the table)."""
    if stat is None:
        return "–"
    return f"{stat['median']:.{digits}f} [{stat['low']:.{digits}f}–{stat['high']:.{digits}f}]"


def method_line(stats: Sequence[dict[str, float]]) -> str:
    """The sentence beside a table: the interval's method, n and coverage (the smallest n)."""
    if not stats:
        return ""
    text = intervals.method(min(stats, key=lambda st: st["n"]))
    return f"Each ratio: the median over repeats; {text}."


def too_wide(ratio: dict[str, float] | None, quick: bool) -> bool:
    limit = INTERVAL_LIMIT[quick]
    return ratio is None or not (
        ratio["low"] >= ratio["median"] * (1 - limit)
        and ratio["high"] <= ratio["median"] * (1 + limit)
    )


def target_line(what: str, ratio: dict[str, float] | None, limit: float) -> str:
    """Met when the whole interval is at or under the target; missed when it is all above; and
    neither when the interval covers less than a verdict needs (too few repeats)."""
    if ratio is None:
        return f"{what}: not measured"
    if not intervals.decides(ratio):
        verdict = (
            f"undecided: {ratio['n']} repeats give a {ratio['coverage']:.1%} interval, a verdict "
            f"needs {intervals.LEVEL:.0%} ({intervals.repeats_needed()} repeats or more)"
        )
    elif ratio["high"] <= limit:
        verdict = "met"
    elif ratio["low"] > limit:
        verdict = "MISSED"
    else:
        verdict = "undecided: the interval spans the target"
    return f"{what}: {ci(ratio)} (target ≤ {limit}): {verdict}"


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def headline_section(res: Results, quick: bool) -> tuple[str, list[str]]:
    """Each runner's cost split in two: its framework's minimal loop against minimal plain
    PyTorch (what the framework adds), and the full runner against that minimal loop (what this
    project adds: metrics, checkpoints, resume, fault points, run records)."""
    base = Point("headline", "torch", **HEADLINE)
    plain_min = base.config(runner=MINIMAL_OF["torch"])
    rows, verdicts, wide = [], [], []
    for runner, minimal in MINIMAL_OF.items():
        full, mini = base.config(runner=runner), base.config(runner=minimal)
        framework, project = res.paired(minimal, plain_min.runner), res.paired(runner, minimal)
        rows.append(
            [
                NAMES[runner],
                fmt(res.stat(mini, "step_us"), bounds=False),
                fmt(res.stat(full, "step_us"), bounds=False),
                "1 (the baseline)" if runner == "torch" else ci(framework),
                ci(project),
                fmt(res.stat(full, "peak_rss_mib"), 0, bounds=False),
            ]
        )
        verdicts.append(target_line(f"{NAMES[runner]}: full runner ÷ its minimal loop", project,
                                    PROJECT_TARGET))  # fmt: skip
        checked = [project] + ([framework] if runner != "torch" else [])
        wide += [r for r in checked if too_wide(r, quick)]
    raw = res.paired(plain_min.runner, "raw")
    verdicts.insert(0, target_line("minimal plain PyTorch ÷ raw-tensor loop", raw,
                                   PLAIN_VS_RAW_TARGET))  # fmt: skip
    left_out = {pair_name(*p): r["left_out"] for p in HEADLINE_PAIRS if (r := res.paired(*p))}
    if short := [f"{n} of {name}" for name, n in left_out.items() if n]:
        verdicts.append(f"repeats left out, under {MIN_CYCLES} slices paired: " + ", ".join(short))
    wide += [raw] if too_wide(raw, quick) else []
    limit = INTERVAL_LIMIT[quick]
    verdicts.append(
        f"{len(wide)} of the {2 * len(MINIMAL_OF)} headline ratios have an interval wider than "
        f"±{limit:.0%} of the ratio" + ("; rerun with more --repeats" if wide else "")
    )
    header = ("runner", "minimal µs/step", "full µs/step", "framework: minimal ÷ minimal plain",
              "project: full ÷ minimal", "full peak RSS MiB")  # fmt: skip
    raw_us = fmt(res.stat(base.config(runner="raw"), "step_us"), bounds=False)
    rows.append(["raw-tensor loop", raw_us, "–", "–", "–", "–"])
    ratios = [r for p in HEADLINE_PAIRS if (r := res.paired(*p))]
    return table(header, rows) + "\n\n" + method_line(ratios), verdicts


def width_section(res: Results) -> tuple[str, list[str]]:
    """Time per step against the model's width, and each framework's ratio at the widest."""
    widths = sorted({p.hidden_dim for p in res.by_point if p.section == "width"})
    header = ["width", "parameters"] + [f"{r} µs" for r in RUNNERS]
    header += [f"{r} ×" for r in RUNNERS if r != "torch"]
    rows, verdicts, stats = [], [], []
    for w in widths:
        base = Point("width", "torch", hidden_dim=w, epochs=3)
        row = [str(w), f"{(DEFAULTS.num_features + 1) * w + (w + 1) * DEFAULTS.num_classes:,}"]
        row += [fmt(res.stat(base.config(runner=r), "step_us"), bounds=False) for r in RUNNERS]
        ratios = {r: res.ratio(base.config(runner=r), base) for r in RUNNERS if r != "torch"}
        row += [fmt(x, 2, bounds=False) for x in ratios.values()]
        rows.append(row)
        stats += [x for x in ratios.values() if x]
    if widths:
        w = widths[-1]
        base = Point("width", "torch", hidden_dim=w, epochs=3)
        for r in FRAMEWORKS:
            if ratio := res.ratio(base.config(runner=r), base):
                verdicts.append(target_line(f"width {w}: {r} vs plain PyTorch", ratio, WIDE_TARGET))
    verdicts.append(method_line(stats).replace("Each ratio", "Each verdict's ratio"))
    return table(header, rows), verdicts


def samples_section(res: Results) -> str:
    """The whole command's time, start-up included, against the data set's size."""
    sizes = sorted({p.num_samples for p in res.by_point if p.section == "samples"})
    header = ["samples"] + [f"{r} s" for r in RUNNERS] + [f"{r} ×" for r in FRAMEWORKS]
    rows = []
    for n in sizes:
        base = Point("samples", "torch", num_samples=n, epochs=2)
        row = [f"{n:,}"]
        row += [fmt(res.stat(base.config(runner=r), "total_s"), 1, False) for r in RUNNERS]
        row += [
            fmt(res.ratio(base.config(runner=r), base, "total_s"), 2, False) for r in FRAMEWORKS
        ]
        rows.append(row)
    return table(header, rows)


def ddp_section(res: Results) -> tuple[str, str]:
    """Plain PyTorch in 1 process, 1 process x 2 threads and 2 processes, per width; and every
    runner with 2 processes (an empty table where that was not run)."""
    widths = sorted(
        {p.hidden_dim for p in res.by_point if p.section == "ddp" and p.runner == "torch"}
    )
    header = [
        "width",
        "1 process µs",
        "1 process × 2 threads µs",
        "2 processes µs",
        "2 processes: speed-up",
        "2 threads: speed-up",
    ]
    rows = []
    for w in widths:
        one = Point("ddp", "torch", hidden_dim=w, epochs=3)
        threads, two = one.config(threads=2), one.config(processes=2)
        speed_two, speed_threads = res.ratio(one, two), res.ratio(one, threads)
        times = [fmt(res.stat(p, "step_us"), bounds=False) for p in (one, threads, two)]
        rows.append([str(w), *times, fmt(speed_two, 2, False), fmt(speed_threads, 2, False)])
    header2 = ("runner", "2 processes µs/step", "× plain PyTorch", "start-up s", "total s")
    rows2 = []
    base = Point("ddp", "torch", epochs=3, processes=2)
    for runner in ("torch", *FRAMEWORKS):
        p = base.config(runner=runner)
        if p in res.by_point:
            rows2.append(
                [
                    runner,
                    fmt(res.stat(p, "step_us"), bounds=False),
                    fmt(res.ratio(p, base), 2, False),
                    fmt(res.stat(p, "startup_s"), 1, False),
                    fmt(res.stat(p, "total_s"), 1, False),
                ]
            )
    return table(header, rows), table(header2, rows2) if len(rows2) > 1 else ""


def profile_section(res: Results) -> str:
    """µs per step by area for each runner, then each framework's costliest functions."""
    profiles = {
        r["runner"]: r["profile"]
        for r in res.records
        if r["section"] == "profile" and "profile" in r
    }
    if not profiles:
        return ""
    runners = [r for r in RUNNERS if r in profiles]
    header = ["µs per step", *runners]
    rows = []
    for a in AREA_ORDER:
        if any(profiles[r]["areas_us"].get(a, 0) >= 0.5 for r in runners):
            rows.append([a] + [f"{profiles[r]['areas_us'].get(a, 0):.0f}" for r in runners])
    rows.append(["**total (mean step)**"] + [f"{profiles[r]['step_us']:.0f}" for r in runners])
    text = table(header, rows)
    for r in (x for x in runners if x in FRAMEWORKS):
        top = profiles[r]["framework_functions_us"]
        text += f"\n\n{r}: where its framework time goes (innermost framework function)\n\n"
        text += table(("function", "µs"), [[f"`{f}`", f"{us:.0f}"] for f, us in top.items()])
    return text
