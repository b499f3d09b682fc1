"""Lightning Fabric: the plain loop, with Fabric placing, wrapping and launching.

    python fabric_train.py                                   # one device
    python fabric_train.py --devices 2                       # DDP: 2 x 16 = the same batch of 32
    python fabric_train.py --devices 2 --strategy fsdp2      # FSDP2 (ModelParallelStrategy)
    fabric run --devices 2 fabric_train.py                   # the same, started by Fabric's CLI

It drives the LightningModule (`training_step`, `validation_step`, its epoch-end hook) and the
LightningDataModule that the Trainer runner uses, in a loop written by hand.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers import CSVLogger
from lightning.fabric.strategies import STRATEGY_REGISTRY, ModelParallelStrategy, Strategy
from torch.utils.data import DataLoader

from fourways import settings, sharded
from fourways.contract import arguments, console, errors, faults, records, resume, run_dirs
from fourways.driving import bookkeeping, classes, requirements, trace
from fourways.driving.logs import EpochLogs
from fourways.trainer_checkpoints import AtomicCheckpointIO
from fourways.workarounds import torch_runtime
from fourways.workarounds.module_logging import capture_logs

# fsdp2 is this runner's name for Lightning's ModelParallelStrategy with data parallelism only
# (it has no registry name: it takes a parallelize_fn); Lightning's `fsdp` is FSDP1.
STRATEGIES = ("auto", *STRATEGY_REGISTRY.available_strategies(), arguments.FSDP2)


def parse_args() -> argparse.Namespace:
    parser = arguments.task_parser("Train the task with Lightning Fabric.")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda", "gpu"), default="auto")
    # Fabric's own defaults: under `fabric run`, a value set here that differs from the CLI's
    # is an error, and these leave the choice to the CLI.
    parser.add_argument("--devices", type=devices, default="auto", help="a count, or auto")
    parser.add_argument("--num-nodes", type=settings.positive_int, default=1)
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,  # left out: auto, or the checkpoint's on --resume
        metavar="STRATEGY",
        help="auto, ddp, fsdp2 (FSDP2, CPU too), deepspeed_stage_2, fsdp (FSDP1, GPUs), ... "
        "(Lightning's registry, and fsdp2)",
    )
    parser.add_argument("--precision", choices=arguments.PRECISIONS, default=None, help="32-true")
    return classes.parse(parser)


def fabric_strategy(args: argparse.Namespace) -> str | Strategy:
    """The strategy Fabric is given: a registry name, or FSDP2 over every process."""
    if args.strategy != arguments.FSDP2:
        return args.strategy
    if args.devices == "auto":
        raise errors.UsageError("--strategy fsdp2 shards over processes: give --devices N")
    return ModelParallelStrategy(
        parallelize_fn=sharded.shard_model,
        data_parallel_size=args.devices * args.num_nodes,  # every process holds a shard
        tensor_parallel_size=1,
    )


def devices(text: str) -> int | str:
    return text if text == "auto" else settings.positive_int(text)


def main() -> None:
    args = parse_args()
    # --- Run directory, resume, refusals: the checkpoint first (options left out of a resume
    # are the checkpoint's), every refusal before Fabric starts a process.
    checked, config = settle_run(args)  # checked: (the checkpoint's path, its contents)
    recorded = None if checked is None else checked[1].get("config", {})
    model_choice, data_choice = classes.chosen(config, args)
    name = classes.name(model_choice)
    # --- Strategies, precision, checkpoint I/O, run directory: Fabric's own arguments.
    fabric = L.Fabric(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=fabric_strategy(args),
        # Under `fabric run` the CLI's precision (already settled above) is the one.
        precision=None if "LT_PRECISION" in os.environ else config["precision"],
        # Complete checkpoints or none, with the usual file mode; and fabric.load below takes
        # the checkpoint read above, not the file again: the file checked is the file loaded.
        # (ModelParallelStrategy writes its folders with torch.distributed.checkpoint, through
        # no CheckpointIO; fourways/sharded.py reads them safely and swaps them in whole.)
        plugins=None if args.strategy == arguments.FSDP2 else AtomicCheckpointIO(checked),
        # --run-dir, else Lightning's own scheme: runs/fabric/version_N
        loggers=CSVLogger(args.run_dir, name="", version="")
        if args.run_dir
        else CSVLogger("runs", name="fabric"),
    )
    # --- Resume: the process count is the run's too (a resume on another count is refused).
    processes = "--devices x --num-nodes"
    config |= resume.settle_config(
        [resume.Given("world_size", processes, fabric.world_size, fabric.world_size)], recorded
    )
    # --- The LightningModule and LightningDataModule, built as every runner builds them: seed,
    # model, data; the module and the batch split checked before Fabric starts a process (each
    # process it starts runs this script again: the local rank 0 prepares the data first).
    fabric.seed_everything(args.seed, verbose=False)  # metrics.json records it
    module = classes.build(model_choice, args)
    data = classes.build(data_choice, args)
    requirements.check_module(module, name)
    if fabric.local_rank == 0:
        data.prepare_data()
    data.setup("fit")
    classes.split_global_batch(data, fabric.world_size, args.accumulate)
    if os.environ.get("LT_CLI_USED") != "1":  # `fabric run` has started the processes already
        fabric.launch()  # starts the other processes when --devices > 1
    # --- Run directory: the logger's, as rank 0 picks it (runs/fabric/version_N or --run-dir).
    run_dir = Path(fabric.broadcast(fabric.logger.log_dir))
    run_dirs.check_run_dir(run_dir, args.resume)
    checkpoint_path = run_dir / "checkpoints" / "last.ckpt"
    # --- The minimal loop's model, optimizer and loaders, each set up by Fabric: it redirects
    # the step methods through the strategy's wrapper (gradients sync under DDP) and registers
    # the module, so that fabric.call reaches its hooks.
    if args.strategy == arguments.FSDP2:  # the optimizer over the sharded parameters, made after
        model = fabric.setup_module(module)
        optimization = requirements.configure(module, name)
        optimizer = fabric.setup_optimizers(optimization.optimizer)
    else:
        optimization = requirements.configure(module, name)
        model, optimizer = fabric.setup(module, optimization.optimizer)
    # Under DDP, Fabric swaps a shuffling sampler for a DistributedSampler seeded with args.seed.
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    micro_batch = train_loader.batch_size  # per process: the global batch split, for the task
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)
    logs, book = capture_logs(module), bookkeeping.RunBook()

    # --- Checkpoint and resume: where training stands, restored exactly, mid-epoch included.
    state = {"model": model, "optimizer": optimizer, "epoch": 0, "batch": 0, "steps": 0}
    if optimization.scheduler is not None:
        state["scheduler"] = optimization.scheduler
    state["config"] = config  # recorded in every checkpoint: a resume continues this run
    if args.resume:
        # Fabric places the state (under DDP and sharded strategies too); its checkpoint I/O
        # hands it the checkpoint read and checked above (AtomicCheckpointIO).
        remainder = fabric.load(checkpoint_path, state, weights_only=True)
        state["config"] = config
        book.load_state(remainder["progress"], fabric.global_rank)
        for metrics in book.history:  # Fabric's CSV logger starts its file anew: replay it
            fabric.log_dict(metrics)
        fabric.print(resume.resume_line(checkpoint_path, state))
    # Fabric's loader sets the sampler's epoch to the number of times it was iterated.
    torch_runtime.start_fabric_loader_at_epoch(train_loader, state["epoch"])

    def save() -> None:
        save_checkpoint(fabric, checkpoint_path, {**state, "progress": book.state()})

    # compare.py's diagnosis (FOURWAYS_TRACE): the weights after every optimizer step.
    tracer = trace.recorder(fabric.global_rank)
    if tracer and not args.resume:
        tracer.record(0, module, optimizer)

    # --- The loop: minimal/fabric_train.py's, plus hooks, accumulation, precision, checkpoints.
    start = time.perf_counter()
    fabric.call("on_fit_start")
    fabric.call("on_train_start")
    for epoch in range(state["epoch"], args.epochs):
        epoch_start = time.perf_counter()
        model.train()
        logs.at("on_train_epoch_start")
        fabric.call("on_train_epoch_start")
        batches = itertools.islice(train_loader, state["batch"], None)  # skip what was trained
        batches = console.progress(batches, fabric.is_global_zero, f"epoch {epoch + 1}")
        for i, batch in enumerate(batches, start=state["batch"]):
            # The optimizer steps after every `accumulate` micro-batches, and after the epoch's
            # last one (as the Trainer does when they do not divide the epoch).
            last_micro_batch = (i + 1) % args.accumulate == 0 or i + 1 == len(train_loader)
            # DDP all-reduces gradients in every backward: skip that until the last micro-batch.
            with fabric.no_backward_sync(model, enabled=not last_micro_batch):
                logs.at("on_train_batch_start", batch)
                fabric.call("on_train_batch_start", batch, i)
                logs.at("training_step", batch)
                # On one device Fabric calls training_step outside its precision context (only
                # a strategy's wrapper routes it through forward): autocast here, for bf16/fp16.
                with fabric.autocast():
                    output = model.training_step(batch, i)
                loss = bookkeeping.step_loss(output, name)
                # At 1 the division is exact and skipped: autograd pays ~5 % of a step for it.
                fabric.backward(loss / args.accumulate if args.accumulate > 1 else loss)
            book.record_loss(loss, batch)
            if last_micro_batch:
                optimizer.step()
                optimizer.zero_grad()
                optimization.after_optimizer_step(i, epoch, epoch_ends=i + 1 == len(train_loader))
                state["steps"] += 1
                if tracer:
                    tracer.record(state["steps"], module, optimizer)
                if args.checkpoint_every and state["steps"] % args.checkpoint_every == 0:
                    state.update(epoch=epoch, batch=i + 1)
                    save()
                faults.inject_fault("step", state["steps"])
            logs.at("on_train_batch_end", batch)
            fabric.call("on_train_batch_end", output, batch, i)
        validate(fabric, model, val_loader, logs)
        metrics = book.end_epoch(logs.epoch_values(), time.perf_counter() - epoch_start)
        fabric.print(console.epoch_line(epoch + 1, metrics))
        fabric.log_dict(metrics)
        logs.at("on_train_epoch_end")
        fabric.call("on_train_epoch_end")
        state.update(epoch=epoch + 1, batch=0)
        save()
    fabric.call("on_train_end")
    fabric.call("on_fit_end")
    if tracer:
        tracer.save()

    # --- Run directory: model.pt and metrics.json, the same record for every runner.
    fabric.logger.finalize("success")  # the CSV logger keeps its last rows until then
    model_state = sharded.full_state_dict(module)  # a gather under FSDP2: every rank
    if fabric.is_global_zero:
        record = records.RunRecord(
            runner="fabric",
            world_size=fabric.world_size,
            device=fabric.device.type,
            precision=fabric.strategy.precision.precision,
            seed=args.seed,
            global_batch_size=micro_batch * fabric.world_size * args.accumulate,
            per_device_batch_size=micro_batch,
            accumulate_grad_batches=args.accumulate,
            optimizer_steps=state["steps"],
            wall_clock_s=time.perf_counter() - start,
            config=config,
            epochs=book.history,
            state_bytes_per_process=records.state_bytes(module.parameters(), optimizer),
        )
        records.save_run(run_dir, record, model_state)
    fabric.barrier()  # every rank waits for rank 0's files
    # --- Teardown: Fabric's own, at the interpreter's exit (it destroys NCCL groups there),
    # after one more barrier that keeps gloo's workers from freeing tensors as it ends.
    torch_runtime.settle_gloo_workers()


def settle_run(args: argparse.Namespace) -> tuple[tuple[Path, dict] | None, dict]:
    """The checkpoint to resume, with its path (None for a new run), and the run's configuration
    settled against it; `args.strategy` becomes the run's. Refusals are errors.UsageError."""
    checkpoint, checked = None, None
    if args.resume:  # the run directory to continue (a new one is the logger's, later)
        run_dir = run_dirs.resolve_run_dir(args.run_dir, "fabric", resume=True)
        path = run_dir / "checkpoints" / "last.ckpt"
        if errors.rank() == 0:
            sharded.recover(path)
        # A file, or a folder under fsdp2: every file read as tensors and plain values only.
        checkpoint = sharded.read_lightning_checkpoint(path)
        checked = (path, checkpoint)
    precision = os.environ.get("LT_PRECISION", args.precision)  # `fabric run` sets these
    strategy = os.environ.get("LT_STRATEGY", args.strategy)
    class_config = classes.settle(args, checkpoint)  # the classes first: which options apply
    config = class_config | resume.settle_args(
        args,
        checkpoint,
        resume.Given("precision", "--precision", precision, "32-true"),
        resume.Given("strategy", "--strategy", strategy, "auto"),
        keys=classes.task_keys(class_config),
    )
    args.strategy = strategy = config["strategy"]
    if strategy == arguments.FSDP2 and "LT_STRATEGY" in os.environ:  # Fabric's CLI knows no fsdp2
        raise errors.UsageError(
            "fsdp2 is this script's strategy, not fabric run's: python fabric_train.py "
            "--devices N --strategy fsdp2"
        )
    if strategy == arguments.FSDP2 and config["model"] != classes.TASK_MODEL:
        raise errors.UsageError(
            "--strategy fsdp2 shards the task's MLP; shard your model in its configure_model "
            "and train it with the Trainer (configs/lightning/fsdp2.yaml)"
        )
    if strategy not in STRATEGIES:  # `fabric run --strategy` is free text
        raise errors.UsageError(
            f"unknown strategy {strategy}; choose one of {', '.join(STRATEGIES)}"
        )
    on_cuda = arguments.cuda_requested(os.environ.get("LT_ACCELERATOR", args.accelerator))
    arguments.check_precision(config["precision"], on_cuda)
    arguments.check_strategy(strategy, on_cuda)
    arguments.check_devices(args.accelerator, args.devices)
    return checked, config


def save_checkpoint(fabric: L.Fabric, path: Path, state: dict) -> None:
    """fabric.save, complete or absent: one file through AtomicCheckpointIO, or under fsdp2 a
    folder (torch.distributed.checkpoint, one file per rank) written beside, then swapped in."""
    if not isinstance(fabric.strategy, ModelParallelStrategy):
        fabric.save(path, state)
        return
    partial = sharded.partial_path(path)
    if fabric.is_global_zero:
        shutil.rmtree(partial, ignore_errors=True)  # a write cut short by a kill
    fabric.barrier()
    fabric.save(partial, state)
    fabric.barrier()  # every rank's shard is written
    if fabric.is_global_zero:
        sharded.swap_in(path)


@torch.no_grad()
def validate(fabric: L.Fabric, model: Any, loader: DataLoader, logs: EpochLogs) -> None:
    """The validation loop, with the Trainer's hooks around it; the module logs its metrics."""
    model.eval()
    fabric.call("on_validation_start")
    fabric.call("on_validation_epoch_start")
    for i, batch in enumerate(loader):
        logs.at("validation_step", batch)
        fabric.call("on_validation_batch_start", batch, i)
        with fabric.autocast():  # as in training
            output = model.validation_step(batch, i)
        fabric.call("on_validation_batch_end", output, batch, i)
    logs.at("on_validation_epoch_end")
    fabric.call("on_validation_epoch_end")
    fabric.call("on_validation_end")
    sharded.reshard(model)  # FSDP2: back to shards, as a checkpoint expects


if __name__ == "__main__":
    errors.run_main(main)
