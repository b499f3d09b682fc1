"""The task's training loop, minimal. On two processes (16 samples each, 32 in all):

    accelerate launch --multi_gpu --num_processes 2 minimal/accelerate_train.py --cpu  # Accelerate

simple_, fabric_ and accelerate_train.py are one loop, line for line: diff them to see what changes.
"""

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from fourways import task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", action="store_true", help="CPU processes even where GPUs are")
    parser.add_argument("--epochs", type=int, default=task.EPOCHS)
    parser.add_argument("--num-samples", type=int, default=task.NUM_SAMPLES)
    parser.add_argument("--hidden-dim", type=int, default=task.HIDDEN_DIM)
    parser.add_argument("--save", metavar="PATH", help="write the trained MLP's state_dict here")
    args = parser.parse_args()

    # Joins the processes that `accelerate launch` started; cpu=True: gloo, even under --multi_gpu
    accelerator = Accelerator(cpu=args.cpu)
    world_size, device = accelerator.num_processes, accelerator.device
    assert task.GLOBAL_BATCH_SIZE % world_size == 0, "the processes must split the batch evenly"
    batch_size = task.GLOBAL_BATCH_SIZE // world_size  # per process: 2 processes take 16 each

    set_seed(task.SEED)  # torch.manual_seed, and Python's, NumPy's and CUDA's
    model = task.MLP(hidden_dim=args.hidden_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=task.LEARNING_RATE)

    train_set, val_set = task.split_dataset(task.make_dataset(args.num_samples))
    # Each epoch one permutation, seeded SEED + epoch, the same in every process; each step the
    # N processes share its next 32 samples, the very samples one device takes in one step.
    sampler = task.EpochShuffleSampler(train_set)  # kept; prepare deals its batches out in turn
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
    val_loader = DataLoader(val_set, batch_size=batch_size)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )  # the model on the device (in DDP if several), batches too; set_epoch at each epoch

    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            accelerator.backward(loss)  # instead of loss.backward(): precision, strategy hooks
            optimizer.step()

        model.eval()
        totals = torch.zeros(3, device=device)  # loss sum, hits, samples
        with torch.no_grad():
            for x, y in val_loader:
                logits, y = accelerator.gather_for_metrics((model(x), y))  # every sample, just once
                totals[0] += F.cross_entropy(logits, y, reduction="sum")
                totals[1] += (logits.argmax(dim=1) == y).sum()
                totals[2] += len(y)
        val_loss, val_acc = (totals[:2] / totals[2]).tolist()
        accelerator.print(f"epoch {epoch + 1}  val_loss {val_loss:.4f}  val_acc {val_acc:.4f}")

    if args.save:  # the main process writes; get_state_dict unwraps: the MLP's own keys
        accelerator.save(accelerator.get_state_dict(model), args.save)


if __name__ == "__main__":
    main()
