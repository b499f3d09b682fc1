"""Hugging Face Accelerate: the plain loop, with Accelerate placing, wrapping and launching.

    python accelerate_train.py                                             # one device
    accelerate launch --config_file configs/accelerate/config.json accelerate_train.py
    accelerate launch --config_file configs/accelerate/config_multi_gpu.json accelerate_train.py
    accelerate launch --multi_gpu --num_processes 2 accelerate_train.py --cpu   # 2 CPU processes

It trains a LightningModule (the task's by default; `--model PATH --model.NAME VALUE` for yours)
on a LightningDataModule's loaders: its hooks called by hand at the Trainer's points, its step
methods through the prepared model, its `self.log` values read as the Trainer reads them
(fourways.driving).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, broadcast_object_list, load, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import DataLoader

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

PROGRESS = "progress.json"
# What save_state writes (safetensors, or torch.save files that load_state reads with
# weights_only=True), and our JSON. Anything else in a checkpoint folder is refused.
CHECKPOINT_FILES = re.compile(
    r"model(_\d+)?\.safetensors|(optimizer|scheduler|sampler|dl_state_dict)(_\d+)?\.bin"
    r"|scaler\.pt|random_states_\d+\.pkl|" + re.escape(PROGRESS)
)


def parse_args() -> argparse.Namespace:
    parser = arguments.task_parser("Train the task with Hugging Face Accelerate.")
    parser.add_argument(
        "--mixed-precision",
        choices=tuple(arguments.ACCELERATE_PRECISIONS),
        default=None,
        help="default: what `accelerate launch` or its config file says, else no",
    )
    parser.add_argument("--cpu", action="store_true", help="train on CPU processes (gloo)")
    return classes.parse(parser)


def main() -> None:
    args = parse_args()
    # --- Run directory, resume, refusals: the checkpoint first (options left out of a resume
    # are the checkpoint's), every refusal before training.
    run_dir, checkpoint, config = settle_run(args)
    recorded = None if checkpoint is None else checkpoint["config"]
    model_choice, data_choice = classes.chosen(config, args)
    name = classes.name(model_choice)
    # --- Precision and accumulation: Accelerate's own arguments (the minimal loop's `cpu`).
    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=arguments.TO_ACCELERATE[config["precision"]],
        gradient_accumulation_steps=args.accumulate,
        # No duplicated samples to even out the last batches: the metrics see each sample once.
        dataloader_config=DataLoaderConfiguration(even_batches=False),
        # A prepared scheduler would step once per process at each optimizer step (Accelerate's
        # rule for a batch that grows with the processes); here the global batch is fixed, so
        # it steps once, when the Trainer would (requirements.Optimization).
        step_scheduler_with_optimizer=False,
    )
    # --- Strategies and processes: refused where Accelerate would silently train otherwise;
    # on resume the process count is the run's too.
    check_launch(accelerator)
    check_fsdp(accelerator)
    processes = "accelerate launch --num_processes"
    config |= resume.settle_config(
        [resume.Given("world_size", processes, accelerator.num_processes, None)], recorded
    )
    precision = arguments.ACCELERATE_PRECISIONS[accelerator.mixed_precision]
    if precision == "16-mixed" and accelerator.device.type != "cuda":
        # Accelerate would train in fp32 and still report fp16: refuse instead.
        raise errors.UsageError("mixed precision fp16 needs a CUDA GPU; on a CPU use bf16 or no")
    run_dir = Path(broadcast_object_list([run_dir])[0])  # rank 0 picks the version

    # --- The LightningModule and LightningDataModule, built as every runner builds them: seed,
    # model, data; the module checked before anything trains.
    set_seed(args.seed)
    module = classes.build(model_choice, args)
    data = classes.build(data_choice, args)
    requirements.check_module(module, name)
    with accelerator.main_process_first():  # downloads once, the others then read them
        data.prepare_data()
    data.setup("fit")
    classes.split_global_batch(data, accelerator.num_processes, args.accumulate)
    optimization = requirements.configure(module, name)
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    micro_batch = train_loader.batch_size  # per process: the global batch split, for the task
    # The step methods run inside the prepared model's forward, so that DDP syncs gradients.
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        StepsThroughForward(module), optimization.optimizer, train_loader, val_loader
    )
    if optimization.scheduler is not None:  # prepared: save_state and load_state include it
        optimization.scheduler = accelerator.prepare(optimization.scheduler)
    logs, book = capture_logs(module), bookkeeping.RunBook()

    # --- Checkpoint and resume: where training stands, as JSON beside save_state's files.
    state = {"epoch": 0, "batch": 0, "steps": 0, "config": config}
    checkpoints = run_dir / "checkpoints"
    if checkpoint is not None:
        newest = newest_checkpoint(run_dir)
        # Every file of this folder was read above as tensors and plain values only; Accelerate
        # reads its own files with weights_only=True (and we register no pickled objects).
        accelerator.load_state(newest)
        state |= {key: checkpoint[key] for key in ("epoch", "batch", "steps")}
        book.load_state(checkpoint["progress"], accelerator.process_index)
        accelerator.print(resume.resume_line(newest, state))

    def save() -> None:
        save_checkpoint(accelerator, checkpoints, {**state, "progress": book.state()})

    # compare.py's diagnosis (FOURWAYS_TRACE): the weights after every optimizer step.
    tracer = trace.recorder(accelerator.process_index)
    if tracer and checkpoint is None:
        tracer.record(0, module, optimizer)

    # --- The loop: minimal/accelerate_train.py's, plus hooks, accumulation and checkpoints.
    start = time.perf_counter()
    module.on_fit_start()
    module.on_train_start()
    for epoch in range(state["epoch"], args.epochs):
        epoch_start = time.perf_counter()
        train_loader.set_epoch(epoch)
        batches = train_loader
        if state["batch"]:  # resumed mid-epoch: a loader that skips the batches trained already
            batches = accelerator.skip_first_batches(train_loader, state["batch"])
            batches.set_epoch(epoch)
        model.train()
        logs.at("on_train_epoch_start")
        module.on_train_epoch_start()
        batches = console.progress(batches, accelerator.is_main_process, f"epoch {epoch + 1}")
        for i, batch in enumerate(batches, start=state["batch"]):
            # Inside accumulate(), backward divides the loss by the steps and skips the gradient
            # all-reduce, and the prepared optimizer steps, until the last micro-batch (or the
            # epoch's last).
            with accelerator.accumulate(model):
                logs.at("on_train_batch_start", batch)
                module.on_train_batch_start(batch, i)
                logs.at("training_step", batch)
                output = model("training_step", batch, i)
                loss = bookkeeping.step_loss(output, name)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            book.record_loss(loss, batch)
            state["batch"] = i + 1
            if accelerator.sync_gradients:
                optimization.after_optimizer_step(i, epoch, epoch_ends=i + 1 == len(train_loader))
                state["steps"] += 1
                if tracer:
                    tracer.record(state["steps"], module, optimizer)
                if args.checkpoint_every and state["steps"] % args.checkpoint_every == 0:
                    save()
                faults.inject_fault("step", state["steps"])
            logs.at("on_train_batch_end", batch)
            module.on_train_batch_end(output, batch, i)
        validate(model, module, val_loader, logs)
        metrics = book.end_epoch(logs.epoch_values(), time.perf_counter() - epoch_start)
        accelerator.print(console.epoch_line(epoch + 1, metrics))
        logs.at("on_train_epoch_end")
        module.on_train_epoch_end()
        state.update(epoch=epoch + 1, batch=0)
        save()
    module.on_train_end()
    module.on_fit_end()
    if tracer:
        tracer.save()

    # --- Run directory: model.pt and metrics.json, the same record for every runner. The full
    # weights, gathered under DeepSpeed ZeRO-3 or FSDP: every rank takes part.
    model_state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        record = records.RunRecord(
            runner="accelerate",
            world_size=accelerator.num_processes,
            device=accelerator.device.type,
            precision=precision,
            seed=args.seed,
            global_batch_size=micro_batch * accelerator.num_processes * args.accumulate,
            per_device_batch_size=micro_batch,
            accumulate_grad_batches=args.accumulate,
            optimizer_steps=state["steps"],
            wall_clock_s=time.perf_counter() - start,
            config=config,
            epochs=book.history,
            state_bytes_per_process=records.state_bytes(module.parameters(), optimizer.optimizer),
        )
        # The LightningModule's own keys: without StepsThroughForward's `module.`
        module_state = {k.removeprefix("module."): v for k, v in model_state.items()}
        records.save_run(run_dir, record, module_state)
    accelerator.wait_for_everyone()  # every rank waits for rank 0's files
    # --- Teardown: Accelerate's own, but a gloo group is left to the interpreter's exit, after
    # one more barrier that keeps gloo's workers from freeing tensors as it ends (torch_runtime).
    torch_runtime.settle_gloo_workers()
    if not torch_runtime.process_group_left_to_exit():
        accelerator.end_training()


def settle_run(args: argparse.Namespace) -> tuple[Path, dict[str, Any] | None, dict[str, Any]]:
    """The run directory, the checkpoint's progress to resume (None for a new run) and the run's
    configuration settled against it. Refusals are errors.UsageError."""
    run_dir = run_dirs.resolve_run_dir(args.run_dir, "accelerate", args.resume)
    checkpoint = checkpoint_progress(newest_checkpoint(run_dir)) if args.resume else None
    given = args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION")  # launch's
    precisions = arguments.ACCELERATE_PRECISIONS
    if given is not None and given not in precisions:
        raise errors.UsageError(
            f"mixed precision {given} (from accelerate launch or its config) is not one of "
            f"{', '.join(precisions)}"
        )
    class_config = classes.settle(args, checkpoint)  # the classes first: which options apply
    config = class_config | resume.settle_args(
        args,
        checkpoint,
        resume.Given(
            "precision",
            "--mixed-precision",
            given and precisions[given],
            "32-true",
        ),
        keys=classes.task_keys(class_config),
    )
    on_cuda = torch.cuda.is_available() and not args.cpu
    if launched_with("deepspeed"):  # set by `accelerate launch` from its config
        arguments.check_strategy("deepspeed", on_cuda)
    return run_dir, checkpoint, config


def save_checkpoint(accelerator: Accelerator, checkpoints: Path, progress: dict[str, Any]) -> None:
    """save_state into a hidden folder, renamed when every rank has written: complete or absent.

    The position, the run's configuration and the running sums go beside save_state's files as
    JSON (plain values by construction), not as a pickled object registered with Accelerate:
    `load_state` reads those with weights_only=False.
    """
    final = checkpoints / f"step_{progress['steps']:06d}"
    partial = checkpoints / f".partial_{final.name}"
    accelerator.save_state(partial)
    if accelerator.is_main_process:
        (partial / PROGRESS).write_text(json.dumps(progress, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        faults.inject_fault("write-checkpoint", progress["steps"])  # a kill before the rename
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(checkpoints.glob("step_*"))[:-1]:  # the newest is whole: drop the rest
            shutil.rmtree(old)


def newest_checkpoint(run_dir: Path) -> Path:
    complete = sorted((run_dir / "checkpoints").glob("step_*"))
    return complete[-1] if complete else run_dir / "checkpoints" / "step_*"


def checkpoint_progress(folder: Path) -> dict[str, Any]:
    """Read every file of a checkpoint folder as tensors and plain values, before load_state.

    Refuses a file it does not know, and any file that holds more than tensors and plain values
    (load_state would skip an unreadable random state with only a log line: here it is refused).
    """
    if not folder.is_dir():
        raise errors.UsageError(f"no checkpoint to resume from at {folder}")
    for path in sorted(folder.iterdir()):
        if not CHECKPOINT_FILES.fullmatch(path.name) or not path.is_file():
            raise errors.UsageError(
                f"{path} is not a file this project's checkpoints hold; resume from an intact "
                "checkpoint, or start a new run directory"
            )
        if path.suffix == ".safetensors":
            checkpoint_io.read_checkpoint_file(path, load_file, (SafetensorError,))
        elif path.name != PROGRESS:
            # Accelerate's own loader: weights_only, plus the numpy types of its random states.
            checkpoint_io.read_checkpoint_file(path, lambda p: load(p, weights_only=True))
    return checkpoint_io.read_checkpoint_file(folder / PROGRESS, checkpoint_io.read_json)


@torch.no_grad()
def validate(model: Any, module: L.LightningModule, loader: DataLoader, logs: EpochLogs) -> None:
    """The validation loop, with the Trainer's hooks around it; the module logs its metrics.
    The step runs through the prepared model, under its precision's autocast."""
    model.eval()
    module.on_validation_start()
    module.on_validation_epoch_start()
    for i, batch in enumerate(loader):
        logs.at("validation_step", batch)
        module.on_validation_batch_start(batch, i)
        output = model("validation_step", batch, i)
        module.on_validation_batch_end(output, batch, i)
    logs.at("on_validation_epoch_end")
    module.on_validation_epoch_end()
    module.on_validation_end()


def launched_with(strategy: str) -> bool:
    """Whether `accelerate launch` was asked for DeepSpeed or FSDP (flag or config file)."""
    return os.environ.get(f"ACCELERATE_USE_{strategy.upper()}", "false").lower() == "true"


def check_fsdp(accelerator: Accelerator) -> None:
    """FSDP asked for, judged by what Accelerate set up, not by what was asked: on CPUs (use_cpu,
    --cpu) Accelerate 1.15 sets up MULTI_CPU, plain data parallel, and says nothing
    (FRAMEWORK_NOTES, checked 2026-12-01). Checked after construction so that any other silent
    fallback, now or in a later version, is refused the same way."""
    if launched_with("fsdp") and accelerator.distributed_type != DistributedType.FSDP:
        raise errors.UsageError(
            f"FSDP was asked for, but Accelerate set up {accelerator.distributed_type.value} "
            "(no sharding: it has no FSDP without CUDA GPUs); launch on CUDA GPUs, or shard on "
            "CPUs with simple_train.py / fabric_train.py --strategy fsdp2 or the Trainer's "
            "configs/lightning/fsdp2.yaml"
        )


def check_launch(accelerator: Accelerator) -> None:
    """Refuse the launches where Accelerate would silently train something other than asked."""
    started = int(os.environ.get("WORLD_SIZE", 1))
    requested = torch_runtime.accelerate_requested_processes()
    if started > accelerator.num_processes:
        raise errors.UsageError(
            f"{started} processes were started but did not join one process group (a multi-GPU "
            "launch without a CUDA GPU), so each would train alone; add --cpu to train on CPU "
            "processes, or launch on GPUs"
        )
    if requested > accelerator.num_processes:
        raise errors.UsageError(
            f"accelerate launch was asked for {requested} processes but started "
            f"{accelerator.num_processes} (a --cpu / use_cpu or MULTI_CPU launch without an MPI "
            f"hostfile runs one); for {requested} CPU processes use: accelerate launch "
            f"--multi_gpu --num_processes {requested} accelerate_train.py --cpu"
        )


if __name__ == "__main__":
    errors.run_main(main)
