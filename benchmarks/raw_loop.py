"""The raw-tensor loop: the task's training with no DataLoader, the limit for this model in eager
PyTorch. The benchmark measures plain PyTorch against it.

    python benchmarks/raw_loop.py --run-dir DIR [--epochs E --num-samples N --hidden-dim H ...]

Same data, split, initial weights, sample order (`DistributedSampler`'s permutation, seed + epoch)
and optimizer as `simple_train.py` on one process, so its `model.pt` equals that runner's bit for
bit; only the batching differs: one index into the whole tensor instead of a per-sample fetch and
collate. One process, fp32, no accumulation, no progress bar, no checkpoint.

Given a user's classes (--model or --data), it hands them to benchmarks/bare_loop.py, the
leanest loop over any LightningModule: the comparison's machinery starts this script as its
"raw" reference, and the benchmark's pairs for a user's model take the bare loop there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# The checkout's fourways package, as the runners at its top import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fourways import parity, task
from fourways.contract import arguments, console, errors, records, resume, run_dirs
from fourways.settings import init_arguments


def main() -> None:
    if names_classes(sys.argv[1:]):
        import bare_loop  # beside this script, on sys.path as its folder

        return bare_loop.main()
    args = arguments.task_parser("Train the task with a raw-tensor loop (benchmark reference).")
    args = args.parse_args()
    config = resume.settle_args(args, None)  # no resume: what was given, else the defaults
    if args.resume or args.checkpoint_every:
        raise errors.UsageError(
            "the raw-tensor loop keeps no checkpoints; drop --resume and --checkpoint-every"
        )
    if args.accumulate != 1:
        raise errors.UsageError("the raw-tensor loop does not accumulate; leave --accumulate at 1")
    dataset = task.make_dataset(**init_arguments(task.make_dataset, args))
    train_set, val_set = task.split_dataset(dataset, **init_arguments(task.split_dataset, args))
    run_dir = args.run_dir or run_dirs.next_run_dir("runs", "raw")
    run_dirs.check_run_dir(run_dir, resume=False)
    (x, y), (val_x, val_y) = train_set.tensors, val_set.tensors
    batch = args.batch_size

    torch.manual_seed(args.seed)
    model = task.MLP(**init_arguments(task.MLP, args))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    history, steps, start = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + epoch))
        model.train()
        loss_sum = torch.zeros(())
        for i in range(0, len(x), batch):
            index = order[i : i + batch]
            loss = F.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            loss_sum += loss.detach() * len(index)
        history.append(
            {**evaluate(model, val_x, val_y, batch, loss_sum.item() / len(x))}
            | {"epoch_s": time.perf_counter() - epoch_start}
        )
        print(console.epoch_line(epoch + 1, history[-1]), flush=True)

    record = records.RunRecord(
        runner="raw",
        world_size=1,
        device="cpu",
        precision="32-true",
        seed=args.seed,
        global_batch_size=batch,
        per_device_batch_size=batch,
        accumulate_grad_batches=1,
        optimizer_steps=steps,
        wall_clock_s=time.perf_counter() - start,
        config=config,
        epochs=history,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    records.save_run(run_dir, record, parity.as_module_keys(model.state_dict()))


def names_classes(argv: list[str]) -> bool:
    """Whether the command line names a user's LightningModule or DataModule."""
    return any(item.partition("=")[0] in ("--model", "--data") for item in argv)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, train_loss: float
) -> dict[str, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        loss_sum += F.cross_entropy(logits, y[i : i + batch]).item() * len(logits)
        correct += (logits.argmax(dim=1) == y[i : i + batch]).sum().item()
    return {"train_loss": train_loss, "val_loss": loss_sum / len(x), "val_acc": correct / len(x)}


if __name__ == "__main__":
    errors.run_main(main)
