"""The task's data as a LightningDataModule: used by the Trainer, Fabric and Accelerate runners."""

from __future__ import annotations

import warnings

import lightning as L
from jsonargparse.typing import ClosedUnitInterval, OpenUnitInterval, PositiveInt
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from fourways import task
from fourways.contract import arguments
from fourways.workarounds import lightning_trainer

# torchdata 0.11 calls an API that torch 2.13 deprecated; it changes nothing here.
warnings.filterwarnings("ignore", message=".*'set_vital' is deprecated")


class TaskDataModule(L.LightningDataModule):
    """Synthetic binary classification, split 800/200; `batch_size` is the GLOBAL batch.

    Under the Trainer, `setup` reads the world size and accumulation steps from it; the Fabric
    and Accelerate runners call `set_micro_batch_size` themselves.
    """

    def __init__(
        self,
        num_samples: PositiveInt = task.NUM_SAMPLES,
        num_features: PositiveInt = task.NUM_FEATURES,
        label_noise: ClosedUnitInterval = task.LABEL_NOISE,
        val_fraction: OpenUnitInterval = task.VAL_FRACTION,
        batch_size: PositiveInt = task.GLOBAL_BATCH_SIZE,
        seed: int = task.SEED,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.micro_batch_size = batch_size
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str) -> None:
        hp = self.hparams
        dataset = task.make_dataset(hp.num_samples, hp.num_features, hp.label_noise, hp.seed)
        self.train_set, self.val_set = task.split_dataset(dataset, hp.val_fraction, hp.seed)
        if self.trainer is not None:
            self.set_micro_batch_size(self.trainer.world_size, self.trainer.accumulate_grad_batches)

    def set_micro_batch_size(self, world_size: int, accumulate: int) -> int:
        """Split the global batch over processes and accumulation steps; refuse uneven splits."""
        assert self.train_set is not None and self.val_set is not None, "call setup() first"
        self.micro_batch_size = arguments.micro_batch_size(
            self.hparams.batch_size, world_size, accumulate, len(self.train_set), len(self.val_set)
        )
        return self.micro_batch_size

    def train_dataloader(self) -> DataLoader:
        sampler = task.EpochShuffleSampler(self.train_set, seed=self.hparams.seed)
        if self.trainer is not None:
            # A resumed Trainer draws this loader's first order before it sets the sampler's
            # epoch: so the sampler starts at the epoch about to train (fourways.workarounds), and
            # under DDP it is built here rather than swapped in by the Trainer.
            if self.trainer.world_size > 1:
                sampler = DistributedSampler(
                    self.train_set, self.trainer.world_size, self.trainer.global_rank,
                    seed=self.hparams.seed,
                )  # fmt: skip
            sampler.set_epoch(lightning_trainer.epoch_about_to_train(self.trainer))
        # A StatefulDataLoader records how far into the epoch it is, so that the Trainer can
        # resume a mid-epoch checkpoint at the exact batch; elsewhere it acts as a DataLoader.
        return StatefulDataLoader(self.train_set, batch_size=self.micro_batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.micro_batch_size)
