"""The shared code behind the four runners: the task, the run contract, the equivalence rule,
the comparison and the benchmark. Nothing is imported here, so that `fourways.task` (what
`minimal/` and `simple_train.py` use) needs torch alone; docs/package.md maps each module.
"""
