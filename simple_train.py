"""Plain PyTorch: the reference loop that the three framework runners are measured against.

    python simple_train.py                                   # one device
    torchrun --nproc_per_node 2 simple_train.py              # DDP: 2 x 16 = the same batch of 32
    torchrun --nproc_per_node 2 simple_train.py --strategy fsdp2   # FSDP2 (fully_shard), CPU too

Needs torch alone (tqdm, if installed, draws the progress bar).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from fourways import task
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

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = arguments.task_parser(
        "Train the task with plain PyTorch (torchrun for several processes)."
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=arguments.PRECISIONS, help="default: 32-true")
    parser.add_argument(
        "--strategy",
        choices=("ddp", arguments.FSDP2),
        help="default: ddp; under torchrun; fsdp2: torch's fully_shard (FSDP2), CPUs or GPUs",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain `python` start is one process.
    ddp = "RANK" in os.environ
    rank, world_size = (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    master = rank == 0

    # --- Run directory, resume, refusals: settled before any process group or training starts,
    # so that a bad option is one line on stderr, and a resume continues the run it names.
    run_dir, checkpoint, config = settle_run(args, device, ddp, world_size)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"

    # --- The minimal loop's setup (minimal/simple_train.py), with the task's every argument as
    # given or recorded (settings.Settings) and the batch split checked.
    dataset = task.make_dataset(**init_arguments(task.make_dataset, args))
    train_set, val_set = task.split_dataset(dataset, **init_arguments(task.split_dataset, args))
    micro_batch = arguments.micro_batch_size(
        args.batch_size, world_size, args.accumulate, len(train_set), len(val_set)
    )
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(args.seed)
    model = task.MLP(**init_arguments(task.MLP, args)).to(device)
    raw_model = model
    # --- Strategies: FSDP2 shards parameters, gradients and optimizer state; DDP replicates.
    if args.strategy == arguments.FSDP2:
        fully_shard(model, mesh=init_device_mesh(device.type, (world_size,)))
    elif ddp:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # --- Precision: bf16 needs no loss scaling; fp16 does. A disabled scaler is a no-op, so one
    # path serves all. In 32-true no autocast at all: even disabled, entering it costs ~3 % of
    # this MLP's step.
    dtype = AUTOCAST_DTYPES.get(args.precision)
    autocast = torch.autocast(device.type, dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")

    # Each rank takes every world_size-th sample of a permutation seeded with seed + epoch.
    train_sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=args.seed)
    val_sampler = DistributedSampler(val_set, world_size, rank, shuffle=False)
    loader = functools.partial(DataLoader, batch_size=micro_batch)
    train_loader, val_loader = (
        loader(train_set, sampler=train_sampler),
        loader(val_set, sampler=val_sampler),
    )

    # --- Checkpoint and resume: where training stands, restored exactly, mid-epoch included.
    state = {"epoch": 0, "batch": 0, "steps": 0, "history": [], "loss_sum": 0.0, "count": 0}
    state["config"] = config  # recorded in every checkpoint: a resume continues this run
    if checkpoint is not None:
        # Every rank read the full state: each takes its own shard of it (all of it under DDP).
        set_state_dict(raw_model, optimizer, model_state_dict=checkpoint.pop("model"),
                       optim_state_dict=checkpoint.pop("optimizer"),
                       options=StateDictOptions(full_state_dict=True))  # fmt: skip
        scaler.load_state_dict(checkpoint.pop("scaler"))
        state = {**checkpoint, "config": config}
        if master:
            print(resume.resume_line(checkpoint_path, state), flush=True)

    # --- The loop: minimal/simple_train.py's, plus accumulation, precision and checkpoints.
    start = time.perf_counter()
    for epoch in range(state["epoch"], args.epochs):
        epoch_start = time.perf_counter()
        train_sampler.set_epoch(epoch)
        model.train()
        # The loss sums of a resumed epoch are all-ranks totals, so rank 0 alone carries them.
        train_loss_sum = torch.tensor(state["loss_sum"] if master else 0.0, device=device)
        train_count = state["count"] if master else 0
        step_losses: list[tuple[torch.Tensor, int]] = []  # summed when needed (fold_losses)
        batches = itertools.islice(train_loader, state["batch"], None)  # skip what was trained
        for i, (x, y) in enumerate(
            console.progress(batches, master, f"epoch {epoch + 1}"), state["batch"]
        ):
            x, y = x.to(device), y.to(device)
            last_micro_batch = (i + 1) % args.accumulate == 0
            # DDP all-reduces gradients in every backward: skip that until the last micro-batch.
            no_sync = isinstance(model, DistributedDataParallel) and not last_micro_batch
            with model.no_sync() if no_sync else nullcontext():
                with autocast:
                    loss = F.cross_entropy(model(x), y)
                # At 1 the division is exact and skipped: autograd pays ~5 % of a step for it.
                scaler.scale(loss / args.accumulate if args.accumulate > 1 else loss).backward()
            step_losses.append((loss.detach(), y.numel()))  # no tensor op on the step path
            if last_micro_batch:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                state["steps"] += 1
                if args.checkpoint_every and state["steps"] % args.checkpoint_every == 0:
                    sums = fold_losses(train_loss_sum, train_count, step_losses)
                    train_loss_sum, train_count = sums
                    loss_sum, count = all_ranks_sum(*sums, ddp)
                    state.update(epoch=epoch, batch=i + 1, loss_sum=loss_sum, count=count)
                    save_checkpoint(checkpoint_path, state, raw_model, optimizer, scaler, master)
                faults.inject_fault("step", state["steps"])
        train_loss_sum, train_count = fold_losses(train_loss_sum, train_count, step_losses)
        metrics = evaluate(model, val_loader, autocast, train_loss_sum, train_count, ddp)
        state["history"].append({**metrics, "epoch_s": time.perf_counter() - epoch_start})
        if master:
            print(console.epoch_line(epoch + 1, metrics), flush=True)
        state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, count=0)
        save_checkpoint(checkpoint_path, state, raw_model, optimizer, scaler, master)

    # --- Run directory: model.pt and metrics.json, the same record for every runner. A full
    # (unsharded) copy of the weights: a gather under FSDP, so every rank takes part.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(raw_model, options=options)
    if master:
        record = records.RunRecord(
            runner="torch",
            world_size=world_size,
            device=device.type,
            precision=args.precision,
            seed=args.seed,
            global_batch_size=args.batch_size,
            per_device_batch_size=micro_batch,
            accumulate_grad_batches=args.accumulate,
            optimizer_steps=state["steps"],
            wall_clock_s=time.perf_counter() - start,
            config=config,
            epochs=state["history"],
            state_bytes_per_process=records.state_bytes(raw_model.parameters(), optimizer),
        )
        records.save_run(run_dir, record, model_state)
    if ddp:
        dist.barrier()  # every rank waits for rank 0's files
    # --- Teardown: torch's own, but a gloo group is left to the interpreter's exit (its
    # destroy_process_group can deadlock there: see torch_runtime).
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
    config = resume.settle_args(
        args,
        checkpoint,
        resume.Given("precision", "--precision", args.precision, "32-true"),
        resume.Given("strategy", "--strategy", args.strategy, "ddp"),
        resume.Given("world_size", "processes", world_size, world_size),
    )
    args.strategy = config["strategy"]
    args.precision = config["precision"]
    arguments.check_precision(args.precision, device.type == "cuda")
    arguments.check_strategy(args.strategy, device.type == "cuda")
    if args.strategy == arguments.FSDP2 and not ddp:  # fully_shard needs torchrun's processes
        raise errors.UsageError(
            "--strategy fsdp2 shards over processes: start it with torchrun --nproc_per_node N"
        )
    return run_dir, checkpoint, config


def fold_losses(
    loss_sum: torch.Tensor, count: int, step_losses: list[tuple[torch.Tensor, int]]
) -> tuple[torch.Tensor, int]:
    """Adds the listed micro-batch mean losses, each weighted by its samples, to the sums; empties
    the list. A tensor op per step instead cost ~4 % of this MLP's step (measured)."""
    if step_losses:
        losses, counts = zip(*step_losses, strict=True)
        weights = torch.tensor(counts, dtype=loss_sum.dtype, device=loss_sum.device)
        loss_sum = loss_sum + torch.stack(losses).to(loss_sum.dtype) @ weights
        count += sum(counts)
        step_losses.clear()
    return loss_sum, count


def all_ranks_sum(loss_sum: torch.Tensor, count: int, ddp: bool) -> tuple[float, int]:
    totals = torch.stack([loss_sum.float(), torch.tensor(float(count), device=loss_sum.device)])
    if ddp:
        dist.all_reduce(totals)
    return totals[0].item(), int(totals[1].item())


def save_checkpoint(
    path: Path,
    state: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    master: bool,
) -> None:
    """Model, optimizer, scaler and position: tensors and plain values, written atomically."""
    # A full (unsharded) copy: a no-op for a plain or DDP model, a gather under FSDP.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    if master:
        full = {**state, "model": model_state, "optimizer": optimizer_state,
                "scaler": scaler.state_dict()}  # fmt: skip
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
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    autocast: AbstractContextManager,
    train_loss_sum: torch.Tensor,
    train_count: int,
    ddp: bool,
) -> dict[str, float]:
    """The epoch's metrics over every sample of every rank: sums all-reduced, then divided."""
    model.eval()
    val_loss_sum, correct, val_count = torch.zeros_like(train_loss_sum), 0, 0
    for x, y in loader:
        x, y = x.to(train_loss_sum.device), y.to(train_loss_sum.device)
        with autocast:
            logits = model(x)
            val_loss_sum += F.cross_entropy(logits, y) * y.numel()
        correct += (logits.argmax(dim=1) == y).sum()
        val_count += y.numel()
    totals = torch.stack(
        [
            train_loss_sum,
            val_loss_sum.float(),
            torch.as_tensor(correct).to(train_loss_sum),
        ]
    )
    counts = torch.tensor([train_count, val_count], device=train_loss_sum.device)
    if ddp:
        dist.all_reduce(totals)
        dist.all_reduce(counts)
    (train_loss, val_loss, correct), (train_count, val_count) = (
        totals.tolist(),
        counts.tolist(),
    )
    return {
        "train_loss": train_loss / train_count,
        "val_loss": val_loss / val_count,
        "val_acc": correct / val_count,
    }


if __name__ == "__main__":
    errors.run_main(main)
