"""Hugging Face Accelerate: the plain loop, with Accelerate placing, wrapping and launching.

    python accelerate_train.py                                             # one device
    accelerate launch --config_file configs/accelerate/config.json accelerate_train.py
    accelerate launch --config_file configs/accelerate/config_multi_gpu.json accelerate_train.py
    accelerate launch --multi_gpu --num_processes 2 accelerate_train.py --cpu   # 2 CPU processes

It trains the LightningModule as the plain `nn.Module` it is (forward, optimizer, metrics) on the
LightningDataModule's loaders.
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

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, broadcast_object_list, load, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file

from datamodule import TaskDataModule
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
from fourways.settings import init_arguments
from fourways.workarounds import torch_runtime
from lightning_module import MLPClassifier

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
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # --- Run directory, resume, refusals: the checkpoint first (options left out of a resume
    # are the checkpoint's), every refusal before training.
    run_dir, checkpoint, config = settle_run(args)
    recorded = None if checkpoint is None else checkpoint["config"]
    # --- Precision and accumulation: Accelerate's own arguments (the minimal loop's `cpu`).
    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=arguments.TO_ACCELERATE[config["precision"]],
        gradient_accumulation_steps=args.accumulate,
        # No duplicated samples to even out the last batches: the metrics see each sample once.
        dataloader_config=DataLoaderConfiguration(even_batches=False),
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

    # --- The minimal loop's setup (minimal/accelerate_train.py), through the Trainer runner's
    # LightningDataModule and LightningModule, with the task's every argument as given or recorded.
    data = TaskDataModule(**init_arguments(TaskDataModule, args))
    data.setup("fit")
    micro_batch = data.set_micro_batch_size(accelerator.num_processes, args.accumulate)
    set_seed(args.seed)
    module = MLPClassifier(**init_arguments(MLPClassifier, args))
    optimizer = module.configure_optimizers()
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        module, optimizer, data.train_dataloader(), data.val_dataloader()
    )

    # --- Checkpoint and resume: where training stands, as JSON beside save_state's files.
    state = {"epoch": 0, "batch": 0, "steps": 0, "config": config}
    checkpoints = run_dir / "checkpoints"
    if checkpoint is not None:
        newest = newest_checkpoint(run_dir)
        # Every file of this folder was read above as tensors and plain values only; Accelerate
        # reads its own files with weights_only=True (and we register no pickled objects).
        accelerator.load_state(newest)
        state |= {key: checkpoint[key] for key in ("epoch", "batch", "steps")}
        module.load_progress_state(checkpoint, accelerator.process_index)
        accelerator.print(resume.resume_line(newest, state))

    # --- The loop: minimal/accelerate_train.py's, plus accumulation and checkpoints.
    start = time.perf_counter()
    for epoch in range(state["epoch"], args.epochs):
        epoch_start = time.perf_counter()
        train_loader.set_epoch(epoch)
        batches = train_loader
        if state["batch"]:  # resumed mid-epoch: a loader that skips the batches trained already
            batches = accelerator.skip_first_batches(train_loader, state["batch"])
            batches.set_epoch(epoch)
        model.train()
        for x, y in console.progress(batches, accelerator.is_main_process, f"epoch {epoch + 1}"):
            # Inside accumulate(), backward divides the loss by the steps and skips the gradient
            # all-reduce, and the prepared optimizer steps, until the last micro-batch.
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            module.record_train_loss(loss, y.numel())
            state["batch"] += 1
            if accelerator.sync_gradients:
                state["steps"] += 1
                if args.checkpoint_every and state["steps"] % args.checkpoint_every == 0:
                    save_checkpoint(accelerator, checkpoints, state, module)
                faults.inject_fault("step", state["steps"])
        validate(model, module, val_loader)
        metrics = {**module.epoch_metrics(), "epoch_s": time.perf_counter() - epoch_start}
        module.history.append(metrics)
        accelerator.print(console.epoch_line(epoch + 1, metrics))
        state.update(epoch=epoch + 1, batch=0)
        save_checkpoint(accelerator, checkpoints, state, module)

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
            global_batch_size=args.batch_size,
            per_device_batch_size=micro_batch,
            accumulate_grad_batches=args.accumulate,
            optimizer_steps=state["steps"],
            wall_clock_s=time.perf_counter() - start,
            config=config,
            epochs=module.history,
            state_bytes_per_process=records.state_bytes(model.parameters(), optimizer.optimizer),
        )
        mlp_state = {k.removeprefix("model."): v for k, v in model_state.items()}
        records.save_run(run_dir, record, mlp_state)
    accelerator.wait_for_everyone()  # every rank waits for rank 0's files
    # --- Teardown: Accelerate's own, but a gloo group is left to the interpreter's exit (its
    # destroy_process_group can deadlock there: see torch_runtime).
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
    config = resume.settle_args(
        args,
        checkpoint,
        resume.Given(
            "precision",
            "--mixed-precision",
            given and precisions[given],
            "32-true",
        ),
    )
    on_cuda = torch.cuda.is_available() and not args.cpu
    if launched_with("deepspeed"):  # set by `accelerate launch` from its config
        arguments.check_strategy("deepspeed", on_cuda)
    return run_dir, checkpoint, config


def save_checkpoint(
    accelerator: Accelerator, checkpoints: Path, state: dict[str, Any], module: MLPClassifier
) -> None:
    """save_state into a hidden folder, renamed when every rank has written: complete or absent.

    The position, the run's configuration and the running sums go beside save_state's files as
    JSON (plain values by construction), not as a pickled object registered with Accelerate:
    `load_state` reads those with weights_only=False.
    """
    progress = {**state, **module.progress_state()}  # a collective: every rank takes part
    final = checkpoints / f"step_{state['steps']:06d}"
    partial = checkpoints / f".partial_{final.name}"
    accelerator.save_state(partial)
    if accelerator.is_main_process:
        (partial / PROGRESS).write_text(json.dumps(progress, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        faults.inject_fault("write-checkpoint", state["steps"])  # a kill before the rename
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
def validate(
    model: torch.nn.Module, module: MLPClassifier, loader: torch.utils.data.DataLoader
) -> None:
    model.eval()
    module.on_validation_epoch_start()
    for i, batch in enumerate(loader):
        module.validation_step(batch, i)  # no backward, so no need to pass through DDP


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
