"""The task's training loop, minimal, run by the Lightning Trainer. On two processes:

    python minimal/lightning_train.py --accelerator cpu --devices 2   # Lightning Trainer

The loop is the Trainer's own; the LightningModule says what each of its steps does.
"""

import argparse
import logging
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fourways import task

# Lightning's start-up lines (devices found, a "Tip") and a deprecation warning raised inside
# Lightning 2.6 by torch 2.13: noise for this run, as the full Trainer runner keeps it away.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accelerator", default="auto", help="cpu, cuda, ... (auto: the best)")
    parser.add_argument("--devices", type=int, default=1, help="processes, one per device")
    parser.add_argument("--epochs", type=int, default=task.EPOCHS)
    parser.add_argument("--num-samples", type=int, default=task.NUM_SAMPLES)
    parser.add_argument("--hidden-dim", type=int, default=task.HIDDEN_DIM)
    parser.add_argument("--save", metavar="PATH", help="write the trained MLP's state_dict here")
    args = parser.parse_args()

    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,  # several: DDP, one process each, started by fit()
        max_epochs=args.epochs,
        # The bare loop: no logger, checkpoints, progress bar or model summary.
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    world_size = trainer.world_size
    assert task.GLOBAL_BATCH_SIZE % world_size == 0, "the processes must split the batch evenly"
    batch_size = task.GLOBAL_BATCH_SIZE // world_size  # per process: 2 processes take 16 each

    L.seed_everything(task.SEED)  # torch.manual_seed, and the seed of the DistributedSampler
    model = Classifier(args.hidden_dim)

    train_set, val_set = task.split_dataset(task.make_dataset(args.num_samples))
    # Each epoch one permutation, seeded SEED + epoch, the same in every process; each step the
    # N processes share its next 32 samples, the very samples one device takes in one step.
    sampler = task.EpochShuffleSampler(train_set)  # under DDP, becomes a DistributedSampler
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
    val_loader = DataLoader(val_set, batch_size=batch_size)
    # Starts the other processes, moves the model and batches, calls set_epoch, loops, validates.
    trainer.fit(model, train_loader, val_loader)

    if args.save and trainer.is_global_zero:  # the MLP's own keys, not the module's "mlp."
        torch.save(model.mlp.state_dict(), args.save)


class Classifier(L.LightningModule):
    """The task's MLP and what the Trainer's loop asks of it: a loss, metrics, an optimizer."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = task.MLP(hidden_dim=hidden_dim)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # the Trainer has put the batch on the device
        return F.cross_entropy(self.mlp(x), y)  # the Trainer calls backward() and steps

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.mlp(x)
        # Means over the epoch's batches, then over the processes (sync_dist): all 200 samples.
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), sync_dist=True)

    def on_train_epoch_end(self) -> None:  # the Trainer calls it after the epoch's validation
        loss, acc = (self.trainer.callback_metrics[k] for k in ("val_loss", "val_acc"))
        # self.print prints on rank 0 only: one line per epoch, not one per process.
        self.print(f"epoch {self.current_epoch + 1}  val_loss {loss:.4f}  val_acc {acc:.4f}")

    def configure_optimizers(self) -> torch.optim.Optimizer:  # the Trainer calls step() on it
        return torch.optim.Adam(self.parameters(), lr=task.LEARNING_RATE)


if __name__ == "__main__":
    main()
