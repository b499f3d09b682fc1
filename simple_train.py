"""Plain PyTorch: the reference loop that the three framework runners are measured against.

    python simple_train.py                                   # one device
    torchrun --nproc_per_node 2 simple_train.py              # DDP: 2 x 16 = the same batch of 32

Needs torch alone (tqdm, if installed, draws the progress bar).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import task


def parse_args() -> object:
    parser = task.task_parser("Train the task with plain PyTorch (torchrun for several processes).")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=task.PRECISIONS, default="32-true")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="under torchrun")
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
    task.check_precision(args.precision, device.type == "cuda")
    task.check_strategy(args.strategy, device.type == "cuda")
    dataset = task.make_dataset(args.num_samples, seed=args.seed)
    train_set, val_set = task.split_dataset(dataset, seed=args.seed)
    micro_batch = task.micro_batch_size(
        args.batch_size, world_size, args.accumulate, len(train_set)
    )
    task.check_val_split(len(val_set), world_size)
    run_dir = args.run_dir or task.next_run_dir("runs", "torch")
    task.check_run_dir(run_dir, resume=False)
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    master = rank == 0

    torch.manual_seed(args.seed)
    model = task.MLP(hidden_dim=args.hidden_dim).to(device)
    raw_model = model
    if ddp:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # bf16 needs no loss scaling; fp16 does. A disabled scaler is a no-op, so one path serves all.
    autocast = torch.autocast(
        device.type,
        dtype=AUTOCAST_DTYPES.get(args.precision),
        enabled=args.precision != "32-true",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")

    # Each rank takes every world_size-th sample of a permutation seeded with seed + epoch.
    train_sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=args.seed)
    val_sampler = DistributedSampler(val_set, world_size, rank, shuffle=False)
    train_loader = DataLoader(train_set, batch_size=micro_batch, sampler=train_sampler)
    val_loader = DataLoader(val_set, batch_size=micro_batch, sampler=val_sampler)

    history, steps, start = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        epoch_start = time.perf_counter()
        train_sampler.set_epoch(epoch)
        model.train()
        train_loss_sum, train_count = torch.zeros((), device=device), 0
        for i, (x, y) in enumerate(task.progress(train_loader, master, f"epoch {epoch + 1}")):
            x, y = x.to(device), y.to(device)
            last_micro_batch = (i + 1) % args.accumulate == 0
            # DDP all-reduces gradients in every backward: skip that until the last micro-batch.
            with model.no_sync() if ddp and not last_micro_batch else nullcontext():
                with autocast:
                    loss = F.cross_entropy(model(x), y)
                scaler.scale(loss / args.accumulate).backward()
            if last_micro_batch:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                steps += 1
            train_loss_sum += loss.detach() * y.numel()
            train_count += y.numel()
        metrics = evaluate(model, val_loader, autocast, train_loss_sum, train_count, ddp)
        history.append({**metrics, "epoch_s": time.perf_counter() - epoch_start})
        if master:
            print(task.epoch_line(epoch + 1, metrics), flush=True)

    if master:
        record = task.RunRecord(
            runner="torch",
            world_size=world_size,
            device=device.type,
            precision=args.precision,
            seed=args.seed,
            global_batch_size=args.batch_size,
            per_device_batch_size=micro_batch,
            accumulate_grad_batches=args.accumulate,
            optimizer_steps=steps,
            wall_clock_s=time.perf_counter() - start,
            epochs=history,
        )
        task.save_run(run_dir, record, raw_model)
    if ddp:
        # Every rank waits for rank 0's files; this also lets gloo's worker threads finish the
        # last collective before teardown, which otherwise can deadlock at exit.
        dist.barrier()
        dist.destroy_process_group()


AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise task.UsageError(
            "--device cuda was asked for, but no CUDA GPU is visible; use --device cpu"
        )
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    autocast: torch.autocast,
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
    task.run_main(main)
