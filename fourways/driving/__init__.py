"""Driving any LightningModule and LightningDataModule outside the Trainer, as the Trainer would.

The Fabric, Accelerate and plain PyTorch runners train a user's classes (`--model`, `--data`)
through these modules; the Trainer runner uses the same checks and bookkeeping through its
callback (fourways/trainer_bookkeeping.py). Split by job:

- classes: the classes by dotted path, with their init arguments (refused in one line if unfit);
- requirements: what a module must offer (automatic optimization, one optimizer, at most one
  scheduler), checked before anything trains, and the optimizer and scheduler it configures;
- logs: `self.log` / `self.log_dict` with the Trainer's meaning (epoch means, sync_dist);
- bookkeeping: the run's epoch metrics, history and position for resume;
- dispatch: a step method called through a DDP (or Accelerate) wrapper, so gradients sync;
- trace: the weights after each optimizer step, for compare.py's diagnosis;
- replay: a module trained in this process as N processes x K micro-batches would train it
  (float32 or float64), the bound for compare.py's verdict;
- probes: what in a model or its data makes N processes train otherwise than one device.
"""
