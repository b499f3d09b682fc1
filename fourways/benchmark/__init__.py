"""The benchmark behind benchmarks/overhead.py: what each framework, and this project, add per
optimizer step. Each job in its own module:

    plans.py      the sections' configurations, the headline's pairs, the runs in order
    slicing.py    the headline's pairs timed by turns on one CPU, and their paired ratio
    progress.py   the sweeps' runs: a quiet machine before each, one progress bar
    profiling.py  a sampled profile read as µs per step, by area and by framework function
    intervals.py  the order-statistic interval of a median over a few repeats
    results.py    one record per run, and the statistics over repeats
    sections.py   the report's tables, text and verdicts against the targets
    plots.py      one plot per section
    yours.py      a user's model (--model): its options, its pairs' section
    cli.py        the options, the run, results.json and results.md
"""
