"""The comparison behind compare.py: run the runners on the same task, check them, report.

One module per job, in the order a comparison goes through them:
    plans      the runners, the modes, one Run per runner and mode
    commands   each run's command line and environment (the runner's real entry point)
    progress   what the console shows while the runs go
    processes  starting the runs, a timeout, collecting their exit status and peak memory
    steplogs   what the runs said: metrics.json and the step timer's records
    checks     each run against the replay of its own arithmetic; the verdict
    plots      curves.png and step_time.png
    report     report.md, report.json and the console's table
    cli        the command line, and the comparison from start to end

The runners are not installed with this package: the entry point (compare.py) passes the
checkout they live in, and every path to them derives from it.
"""
