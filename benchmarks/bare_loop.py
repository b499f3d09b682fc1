"""The bare loop: the leanest loop over ANY LightningModule and LightningDataModule, the benchmark's
reference for a user's model (as the raw-tensor loop is for the task's MLP).

    python benchmarks/bare_loop.py --model examples.warmup_mlp.WarmupMLP --model.width 700 \
        [--data PATH --data.NAME VALUE] [--epochs E --seed S] --run-dir DIR

It takes the runners' flags and builds the classes as simple_train.py does (seed, model, data),
then trains with torch and the module alone: `training_step`, backward, optimizer step, zero_grad,
the scheduler as the Trainer steps it. No hooks, no validation, no checkpoints, no progress bar,
one process, fp32. `module.log` and `module.log_dict` are no-ops on the instance: outside a
Trainer, Lightning's `log` looks for a Trainer, warns and does bookkeeping of its own; the runners
capture it (fourways.driving.logs), and that capture is part of what the benchmark measures them
paying for. Its `model.pt` equals simple_train.py's bit for bit on one process (validation draws
no weights), so the two train the same steps and only the driving around them differs.
benchmarks/overhead.py --model starts it through benchmarks/raw_loop.py, the command the
comparison's machinery knows as its "raw" reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

# The checkout's fourways package, as the runners at its top import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fourways.contract import arguments, errors, records, resume, run_dirs
from fourways.driving import bookkeeping, classes, requirements


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arguments.task_parser("Train any LightningModule with the bare loop (benchmark).")
    return classes.parse(parser, argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = resume.settle_args(args, None, *classes.given(args))
    if args.resume or args.checkpoint_every or args.accumulate != 1:
        raise errors.UsageError(
            "the bare loop keeps no checkpoints and does not accumulate; drop --resume, "
            "--checkpoint-every and --accumulate"
        )
    run_dir = args.run_dir or run_dirs.next_run_dir("runs", "bare")
    run_dirs.check_run_dir(run_dir, resume=False)
    model_choice, data_choice = classes.chosen(config, args)
    name = classes.name(model_choice)

    L.seed_everything(args.seed, verbose=False)
    module = classes.build(model_choice, args)
    data = classes.build(data_choice, args)
    requirements.check_module(module, name)
    data.setup("fit")
    classes.split_global_batch(data, 1, 1)
    module.configure_model()  # builds the layers of a module that defers them; a no-op else
    silence_logging(module)
    optimization = requirements.configure(module, name)
    loader = data.train_dataloader()

    start = time.perf_counter()
    history, steps = train(module, loader, optimization, args.epochs, name)
    record = records.RunRecord(
        runner="bare",
        world_size=1,
        device="cpu",
        precision="32-true",
        seed=args.seed,
        global_batch_size=loader.batch_size,
        per_device_batch_size=loader.batch_size,
        accumulate_grad_batches=1,
        optimizer_steps=steps,
        wall_clock_s=time.perf_counter() - start,
        config=config,
        epochs=history,
        state_bytes_per_process=records.state_bytes(module.parameters(), optimization.optimizer),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    records.save_run(run_dir, record, module.state_dict())


def silence_logging(module: L.LightningModule) -> None:
    """`self.log` / `self.log_dict` as no-ops on this instance only (the class is untouched)."""

    def ignore(*args: Any, **kwargs: Any) -> None:
        return None

    module.log = ignore  # type: ignore[method-assign]
    module.log_dict = ignore  # type: ignore[method-assign]


def train(
    module: L.LightningModule,
    loader: torch.utils.data.DataLoader,
    optimization: requirements.Optimization,
    epochs: int,
    name: str,
) -> tuple[list[dict[str, float]], int]:
    """The loop; each epoch's mean train loss (over batches) and time, and the steps taken."""
    optimizer, history, steps = optimization.optimizer, [], 0
    module.train()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        if hasattr(loader.sampler, "set_epoch"):  # the task's shuffler: seed + epoch
            loader.sampler.set_epoch(epoch)
        losses = []
        for i, batch in enumerate(loader):
            loss = bookkeeping.step_loss(module.training_step(batch, i), name)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            optimization.step_scheduler("step", i)
            losses.append(loss.detach())
            steps += 1
        optimization.step_scheduler("epoch", epoch)
        mean = torch.stack(losses).mean().item() if losses else float("nan")
        history.append({"train_loss": mean, "epoch_s": time.perf_counter() - epoch_start})
        print(f"epoch {epoch + 1} train_loss {mean:.4f}", flush=True)
    return history, steps


if __name__ == "__main__":
    errors.run_main(main)
