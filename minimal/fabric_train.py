"""The task's training loop, minimal. On two processes (16 samples each, 32 in all):

    python minimal/fabric_train.py --accelerator cpu --devices 2   # Lightning Fabric

simple_, fabric_ and accelerate_train.py are one loop, line for line: diff them to see what changes.
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fourways import task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accelerator", default="auto", help="cpu, cuda, ... (auto: the best)")
    parser.add_argument("--devices", type=int, default=1, help="processes, one per device")
    parser.add_argument("--epochs", type=int, default=task.EPOCHS)
    parser.add_argument("--num-samples", type=int, default=task.NUM_SAMPLES)
    parser.add_argument("--hidden-dim", type=int, default=task.HIDDEN_DIM)
    parser.add_argument("--save", metavar="PATH", help="write the trained MLP's state_dict here")
    args = parser.parse_args()

    fabric = L.Fabric(accelerator=args.accelerator, devices=args.devices)  # DDP if several
    fabric.launch()  # starts the other processes, each running this script from the top
    world_size, device = fabric.world_size, fabric.device
    assert task.GLOBAL_BATCH_SIZE % world_size == 0, "the processes must split the batch evenly"
    batch_size = task.GLOBAL_BATCH_SIZE // world_size  # per process: 2 processes take 16 each

    fabric.seed_everything(task.SEED)  # torch.manual_seed, and the seed of DistributedSampler
    model = task.MLP(hidden_dim=args.hidden_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=task.LEARNING_RATE)
    model, optimizer = fabric.setup(model, optimizer)  # to the device; in DDP if several

    train_set, val_set = task.split_dataset(task.make_dataset(args.num_samples))
    # Each epoch one permutation, seeded SEED + epoch, the same in every process; each step the
    # N processes share its next 32 samples, the very samples one device takes in one step.
    sampler = task.EpochShuffleSampler(train_set)  # under DDP, becomes a DistributedSampler
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
    val_loader = DataLoader(val_set, batch_size=batch_size)
    # DistributedSamplers under DDP (a share per process), set_epoch each epoch, batches on device
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)

    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)  # instead of loss.backward(): precision and strategy hooks
            optimizer.step()

        model.eval()
        totals = torch.zeros(3, device=device)  # loss sum, hits, samples
        with torch.no_grad():
            for x, y in val_loader:
                logits = model(x)
                totals[0] += F.cross_entropy(logits, y, reduction="sum")
                totals[1] += (logits.argmax(dim=1) == y).sum()
                totals[2] += len(y)
        totals = fabric.all_reduce(totals, reduce_op="sum")  # over the processes' shares
        val_loss, val_acc = (totals[:2] / totals[2]).tolist()
        fabric.print(f"epoch {epoch + 1}  val_loss {val_loss:.4f}  val_acc {val_acc:.4f}")

    if args.save:  # every process calls it, rank 0 writes; the MLP's own keys, no wrapper's
        fabric.save(args.save, model.state_dict())


if __name__ == "__main__":
    main()
