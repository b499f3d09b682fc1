"""The full runners' shared contract (RUNNER_CONTRACT.md), one module a job:

- `arguments`: the hand-written runners' options and the checks made before training;
- `run_dirs`: where a run writes, never over an earlier run;
- `records`: metrics.json and model.pt;
- `checkpoint_io`: atomic writes, explicit safe reads;
- `resume`: a run's configuration settled against its checkpoint;
- `faults`: the kill points of the resume tests;
- `console`: epoch lines and progress bars;
- `errors`: bad input as one line and exit status 2, and the guard around a runner's main.

The task itself (data, model, data order) is `fourways.task`; the minimal loops in `minimal/` do
without this package. It needs torch and the standard library only, so that `simple_train.py`
runs where nothing but torch is installed (tqdm, if present, draws its bar).
"""
