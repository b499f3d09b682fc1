"""Where no public API of a framework does the job: every such place in the project, and nowhere
else. Each entry names the framework version it was checked with, why it is needed, and the test
that fails when the framework changes that behaviour (then the entry can go).

- `torch_runtime`: torch, Fabric and Accelerate (torch alone at import, since `fourways.task`
  uses it): the collate registration, Fabric's loader epoch, Accelerate's launch options and
  process count, torch's weights-only refusal, gloo's teardown at exit.
  Tests: tests/test_workarounds_torch_runtime.py.
- `lightning_trainer`: the Lightning Trainer's resume (a checkpoint after an epoch's last batch,
  the sampler's epoch on resume). Tests: tests/test_workarounds_lightning_trainer.py.
"""
