"""The task's training loop, minimal. On two processes (16 samples each, 32 in all):

    torchrun --nproc_per_node 2 minimal/simple_train.py --device cpu   # plain PyTorch

simple_, fabric_ and accelerate_train.py are one loop, line for line: diff them to see what changes.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fourways import task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=task.EPOCHS)
    parser.add_argument("--num-samples", type=int, default=task.NUM_SAMPLES)
    parser.add_argument("--hidden-dim", type=int, default=task.HIDDEN_DIM)
    parser.add_argument("--save", metavar="PATH", help="write the trained MLP's state_dict here")
    args = parser.parse_args()

    ddp = "RANK" in os.environ  # torchrun starts one process per device and gives each a RANK
    if ddp:  # join the others: gloo between CPU processes, NCCL between GPUs
        torch.distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    assert task.GLOBAL_BATCH_SIZE % world_size == 0, "the processes must split the batch evenly"
    batch_size = task.GLOBAL_BATCH_SIZE // world_size  # per process: 2 processes take 16 each

    torch.manual_seed(task.SEED)  # before the model: its initial weights come from this seed
    model = task.MLP(hidden_dim=args.hidden_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=task.LEARNING_RATE)
    model = torch.nn.parallel.DistributedDataParallel(model) if ddp else model  # averages gradients

    train_set, val_set = task.split_dataset(task.make_dataset(args.num_samples))
    # Each epoch one permutation, seeded SEED + epoch, the same in every process; each step the
    # N processes share its next 32 samples, the very samples one device takes in one step.
    sampler = torch.utils.data.DistributedSampler(train_set, world_size, rank, seed=task.SEED)
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
    val_loader = DataLoader(val_set, batch_size=batch_size)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # this epoch's permutation
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        model.eval()
        totals = torch.zeros(3, device=device)  # loss sum, hits, samples
        with torch.no_grad():
            for x, y in val_loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                totals[0] += F.cross_entropy(logits, y, reduction="sum")
                totals[1] += (logits.argmax(dim=1) == y).sum()
                totals[2] += len(y)
        val_loss, val_acc = (totals[:2] / totals[2]).tolist()
        if rank == 0:  # one line per epoch (every process validated all 200 samples)
            print(f"epoch {epoch + 1}  val_loss {val_loss:.4f}  val_acc {val_acc:.4f}")

    if args.save and rank == 0:  # the MLP's own keys: unwrap DDP's "module." prefix
        torch.save((model.module if ddp else model).state_dict(), args.save)


if __name__ == "__main__":
    main()
