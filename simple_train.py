"""Plain PyTorch: the reference loop that the three framework runners are measured against.

    python simple_train.py                                   # one device
    torchrun --nproc_per_node 2 simple_train.py              # DDP: 2 x 16 = the same batch of 32
    torchrun --nproc_per_node 2 simple_train.py --strategy fsdp2   # FSDP2 (fully_shard), CPU too
    python simple_train.py --model examples.warmup_mlp.WarmupMLP --model.depth 6   # your model

It trains a LightningModule (the task's by default) with torch alone: its hooks called by hand
at the Trainer's points, its `self.log` values read as the Trainer reads them (fourways.driving).
The loop without any of that, for learners: minimal/simple_train.py.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities import move_data_to_device
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from fourways import sharded
from fourways.contract import (
    arguments,
    checkpoint_io,
    console,
    errors,
    faults,
    records,
    resume,
    run_dirs,
)
from fourways.driving import bookkeeping, classes, requirements, trace
from fourways.driving.dispatch import StepsThroughForward
from fourways.driving.logs import EpochLogs
from fourways.workarounds import torch_runtime
from fourways.workarounds.module_logging import capture_logs

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # unsharded, on the CPU


def parse_args() -> argparse.Namespace:
    parser = arguments.task_parser(
        "Train a LightningModule with plain PyTorch (torchrun for several processes)."
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=arguments.PRECISIONS, help="default: 32-true")
    parser.add_argument(
        "--strategy",
        choices=("ddp", arguments.FSDP2),
        help="default: ddp; under torchrun; fsdp2: torch's fully_shard (FSDP2), the task's model",
    )
    return classes.parse(parser)


def main() -> None:
    args = parse_args()
    # torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain `python` start is one process.
    ddp = "RANK" in os.environ
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    master = rank == 0

    # --- Run directory, resume, refusals: settled before any process group or training starts,
    # so that a bad option is one line on stderr, and a resume continues the run it names.
    run_dir, checkpoint, config = settle_run(args, device, ddp, world_size)
    model_choice, data_choice = classes.chosen(config, args)
    name = classes.name(model_choice)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"

    # --- The LightningModule and LightningDataModule, built as every runner builds them: seed,
    # model, data. The module is checked before anything trains.
    L.seed_everything(args.seed, verbose=False)
    module = classes.build(model_choice, args)
    data = classes.build(data_choice, args)
    requirements.check_module(module, name)
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    prepare_data(data, args.accumulate, world_size, master)
    module.configure_model()
    module.to(device)
    # --- Strategies: FSDP2 shards parameters, gradients and optimizer state (the optimizer is
    # made after, over the shards); DDP replicates. Either way the step methods run inside the
    # wrapper's forward, so that gradients sync.
    model = StepsThroughForward(module)
    if args.strategy == arguments.FSDP2:
        mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("data_parallel",))
        sharded.shard_model(module, mesh)
    elif ddp:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    optimization = requirements.configure(module, name)
    optimizer = optimization.optimizer
    # --- Precision: bf16 needs no loss scaling; fp16 does. A disabled scaler is a no-op, so one
    # path serves all. In 32-true no autocast at all: even disabled, entering it costs ~3 % of
    # the task's step.
    dtype = AUTOCAST_DTYPES.get(args.precision)
    autocast = torch.autocast(device.type, dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    train_loader = loader_for(data.train_dataloader(), rank, world_size, args.seed)
    micro_batch = train_loader.batch_size
    val_loader = loader_for(data.val_dataloader(), rank, world_size, args.seed)
    logs, book = capture_logs(module), bookkeeping.RunBook()

    # --- Checkpoint and resume: where training stands, restored exactly, mid-epoch included.
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "steps": 0, "config": config}
    if checkpoint is not None:
        # Every rank read the full state: each takes its own shard of it (all of it under DDP).
        set_state_dict(module, optimizer, model_state_dict=checkpoint.pop("model"),
                       optim_state_dict=checkpoint.pop("optimizer"),
                       options=StateDictOptions(full_state_dict=True))  # fmt: skip
        scaler.load_state_dict(checkpoint.pop("scaler"))
        if optimization.scheduler is not None:
            optimization.scheduler.load_state_dict(checkpoint.pop("scheduler"))
        book.load_state(checkpoint.pop("progress"), rank)
        state = {**checkpoint, "config": config}
        if master:
            print(resume.resume_line(checkpoint_path, state), flush=True)

    def save() -> None:
        progress = book.state()  # a collective: every rank takes part
        save_checkpoint(checkpoint_path, {**state, "progress": progress}, module, optimization,
                        scaler, master)  # fmt: skip

    # compare.py's diagnosis (FOURWAYS_TRACE): the weights after every optimizer step.
    tracer = trace.recorder(rank)
    if tracer and checkpoint is None:
        tracer.record(0, module, optimizer)

    # --- The loop: minimal/simple_train.py's, plus hooks, accumulation, precision, checkpoints.
    start = time.perf_counter()
    module.on_fit_start()
    module.on_train_start()
    for epoch in range(state["epoch"], args.epochs):
        epoch_start = time.perf_counter()
        set_epoch(train_loader, epoch)
        module.train()
        logs.at("on_train_epoch_start")
        module.on_train_epoch_start()
        batches = itertools.islice(train_loader, state["batch"], None)  # skip what was trained
        for i, batch in enumerate(
            console.progress(batches, master, f"epoch {epoch + 1}"), state["batch"]
        ):
            if device.type != "cpu":  # the loaders yield CPU tensors
                batch = move_data_to_device(batch, device)
            # The optimizer steps after every `accumulate` micro-batches, and after the epoch's
            # last one (as the Trainer does when they do not divide the epoch).
            last_micro_batch = (i + 1) % args.accumulate == 0 or i + 1 == len(train_loader)
            # DDP all-reduces gradients in every backward: skip that until the last micro-batch.
            no_sync = isinstance(model, DistributedDataParallel) and not last_micro_batch
            with model.no_sync() if no_sync else nullcontext():
                logs.at("on_train_batch_start", batch)
                module.on_train_batch_start(batch, i)
                logs.at("training_step", batch)
                with autocast:
                    output = model("training_step", batch, i)
                loss = bookkeeping.step_loss(output, name)
                # At 1 the division is exact and skipped: autograd pays ~5 % of a step for it.
                scaler.scale(loss / args.accumulate if args.accumulate > 1 else loss).backward()
            book.record_loss(loss, batch)
            if last_micro_batch:
                scaler.step(optimizer)
                scaler.update()
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
            module.on_train_batch_end(output, batch, i)
        validate(module, val_loader, logs, autocast, device)
        metrics = book.end_epoch(logs.epoch_values(), time.perf_counter() - epoch_start)
        if master:
            print(console.epoch_line(epoch + 1, metrics), flush=True)
        logs.at("on_train_epoch_end")
        module.on_train_epoch_end()
        state.update(epoch=epoch + 1, batch=0)
        save()
    module.on_train_end()
    module.on_fit_end()
    if tracer:
        tracer.save()

    # --- Run directory: model.pt and metrics.json, the same record for every runner. A full
    # (unsharded) copy of the weights: a gather under FSDP, so every rank takes part.
    model_state = get_model_state_dict(module, options=FULL)
    if master:
        record = records.RunRecord(
            runner="torch",
            world_size=world_size,
            device=device.type,
            precision=args.precision,
            seed=args.seed,
            global_batch_size=micro_batch * world_size * args.accumulate,
            per_device_batch_size=micro_batch,
            accumulate_grad_batches=args.accumulate,
            optimizer_steps=state["steps"],
            wall_clock_s=time.perf_counter() - start,
            config=config,
            epochs=book.history,
            state_bytes_per_process=records.state_bytes(module.parameters(), optimizer),
        )
        records.save_run(run_dir, record, model_state)
    if ddp:
        dist.barrier()  # every rank waits for rank 0's files
    # --- Teardown: torch's own, but a gloo group is left to the interpreter's exit, after one
    # more barrier that keeps gloo's workers from freeing tensors as it ends (see torch_runtime).
    torch_runtime.settle_gloo_workers()
    if ddp and not torch_runtime.process_group_left_to_exit():
        dist.destroy_process_group()


def settle_run(
    args: argparse.Namespace, device: torch.device, ddp: bool, world_size: int
) -> tuple[Path, dict | None, dict]:
    """The run directory, the checkpoint to resume (None for a new run) and the run's
    configuration: options left out of a resume are the checkpoint's. Everything refused here
    is refused before training, in one line (errors.UsageError)."""
    run_dir = run_dirs.resolve_run_dir(args.run_dir, "torch", args.resume)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    checkpoint = checkpoint_io.load_checkpoint(checkpoint_path) if args.resume else None
    class_config = classes.settle(args, checkpoint)  # the classes first: which options apply
    config = class_config | resume.settle_args(
        args,
        checkpoint,
        resume.Given("precision", "--precision", args.precision, "32-true"),
        resume.Given("strategy", "--strategy", args.strategy, "ddp"),
        resume.Given("world_size", "processes", world_size, world_size),
        keys=classes.task_keys(class_config),
    )
    args.strategy = config["strategy"]
    args.precision = config["precision"]
    arguments.check_precision(args.precision, device.type == "cuda")
    arguments.check_strategy(args.strategy, device.type == "cuda")
    if args.strategy == arguments.FSDP2 and not ddp:  # fully_shard needs torchrun's processes
        raise errors.UsageError(
            "--strategy fsdp2 shards over processes: start it with torchrun --nproc_per_node N"
        )
    if args.strategy == arguments.FSDP2 and config["model"] != classes.TASK_MODEL:
        raise errors.UsageError(
            "--strategy fsdp2 shards the task's MLP; shard your model in its configure_model "
            "and train it with the Trainer (configs/lightning/fsdp2.yaml)"
        )
    return run_dir, checkpoint, config


def prepare_data(
    data: L.LightningDataModule, accumulate: int, world_size: int, master: bool
) -> None:
    """The DataModule's prepare_data (once: the processes share this disk) and setup, and the
    global batch split for a DataModule that takes one (the task's)."""
    if master:
        data.prepare_data()
    if dist.is_initialized():
        dist.barrier()
    data.setup("fit")
    classes.split_global_batch(data, world_size, accumulate)


def loader_for(loader: DataLoader, rank: int, world_size: int, seed: int) -> DataLoader:
    """The DataModule's loader; under DDP rebuilt with a DistributedSampler, as the Trainer and
    Fabric rebuild it: shuffled (seeded with the run's seed) if the loader shuffled."""
    if world_size == 1:
        return loader
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(loader.dataset, world_size, rank, shuffle=shuffle, seed=seed)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """The sampler's epoch, where it has one (a DistributedSampler, the task's shuffler)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def save_checkpoint(
    path: Path,
    state: dict,
    module: torch.nn.Module,
    optimization: requirements.Optimization,
    scaler: torch.amp.GradScaler,
    master: bool,
) -> None:
    """Model, optimizer, scheduler, scaler and position: tensors and plain values, atomically."""
    # A full (unsharded) copy: a no-op for a plain or DDP model, a gather under FSDP.
    model_state, optimizer_state = get_state_dict(module, optimization.optimizer, options=FULL)
    if master:
        full = {**state, "model": model_state, "optimizer": optimizer_state,
                "scaler": scaler.state_dict()}  # fmt: skip
        if optimization.scheduler is not None:
            full["scheduler"] = optimization.scheduler.state_dict()
        checkpoint_io.save_checkpoint(path, full)


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise errors.UsageError(
            "--device cuda was asked for, but no CUDA GPU is visible; use --device cpu"
        )
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


@torch.no_grad()
def validate(
    module: L.LightningModule,
    loader: DataLoader,
    logs: EpochLogs,
    autocast: Any,
    device: torch.device,
) -> None:
    """The validation loop, with the Trainer's hooks around it; the module logs its metrics."""
    module.eval()
    module.on_validation_start()
    module.on_validation_epoch_start()
    for i, batch in enumerate(loader):
        if device.type != "cpu":
            batch = move_data_to_device(batch, device)
        logs.at("validation_step", batch)
        module.on_validation_batch_start(batch, i)
        with autocast:
            output = module.validation_step(batch, i)
        module.on_validation_batch_end(output, batch, i)
    logs.at("on_validation_epoch_end")
    module.on_validation_epoch_end()
    module.on_validation_end()
    sharded.reshard(module)  # FSDP2: back to shards, as a checkpoint expects
    module.train()


if __name__ == "__main__":
    errors.run_main(main)
