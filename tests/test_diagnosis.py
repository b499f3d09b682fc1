"""compare.diagnosis for a user's model: the causes found by the probes, WHERE two traces part,
and the generic replay (driving.replay) whose float64 runs tell rounding from another training.

The small modules below are named by dotted path (`test_diagnosis.Clean`), as a user names theirs.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from fourways import parity
from fourways.compare import diagnosis
from fourways.driving import classes, replay
from fourways.driving.trace import Trace, WeightTrace

HERE = __name__


class Clean(L.LightningModule):
    """A linear classifier with a mean loss: nothing depends on how a batch is split."""

    def __init__(self, width: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.net = self.make(width)
        self.lr = lr

    def make(self, width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 2))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self.net(x), y)
        self.log("train_loss", loss)  # needs a Trainer: the replay and probes must not crash
        self.log_dict({"also": loss})
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class WithBatchNorm(Clean):
    def make(self, width: int) -> nn.Module:
        norm = nn.BatchNorm1d(width)
        return nn.Sequential(nn.Linear(4, width), norm, nn.Tanh(), nn.Linear(width, 2))


class WithDropout(Clean):
    def make(self, width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Dropout(0.5), nn.Linear(width, 2))


class Noise(Clean):
    """Draws one random number a training_step, and keeps it."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[float] = []

    def training_step(self, batch, batch_idx):
        self.draws.append(torch.rand(()).item())
        return super().training_step(batch, batch_idx)


class SummedLoss(Clean):
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="sum")


class StepScheduled(Clean):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        ramp = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / 10)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}


class EveryOtherBatch(Clean):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        halve = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
        config = {"scheduler": halve, "interval": "step", "frequency": 2}
        return {"optimizer": optimizer, "lr_scheduler": config}


class EpochScheduled(Clean):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)]


class Data(L.LightningDataModule):
    """`samples` rows of 4 features; `batch_size` per process (Lightning's convention)."""

    def __init__(self, samples: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.samples, self.batch_size = samples, batch_size

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.samples, 4, generator=g)
        self.train_set = TensorDataset(x, (x[:, 0] > 0).long())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size)


class ShuffledData(Data):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


class Reversed(Sampler):
    def __init__(self, data) -> None:
        self.n = len(data)

    def __iter__(self):
        return iter(range(self.n - 1, -1, -1))

    def __len__(self) -> int:
        return self.n


class CustomSamplerData(Data):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=Reversed(self.train_set)
        )


def training(model: str, data: str = "Data", processes: int = 2, **data_args) -> replay.Training:
    choice = classes.Choice("data", f"{HERE}.{data}", init_args=data_args)
    return replay.Training(
        classes.Choice("model", f"{HERE}.{model}"),
        replay.with_batch_size(choice, 16 // processes),
        seed=3,
        epochs=2,
        processes=processes,
    )


def keys(t: replay.Training) -> list[str]:
    return [c.key for c in diagnosis.causes(t)]


def test_a_clean_model_has_no_cause():
    assert keys(training("Clean")) == []


@pytest.mark.parametrize(
    ("model", "data", "expected"),
    [
        ("WithBatchNorm", "Data", ["batchnorm"]),
        ("WithDropout", "Data", ["rng"]),
        ("SummedLoss", "Data", ["loss"]),
        ("Clean", "CustomSamplerData", ["sampler"]),
        ("Clean", "ShuffledData", ["shuffle"]),
    ],
)
def test_each_cause_is_found(model, data, expected):
    assert keys(training(model, data)) == expected


def test_the_cause_names_what_it_saw():
    (bn,) = diagnosis.causes(training("WithBatchNorm"))
    assert bn.detail == "net.1" and not bn.fix_runs_here and "GPU" in bn.remains
    assert "--trainer.sync_batchnorm true" in bn.fixes["lightning"]
    (loss,) = diagnosis.causes(training("SummedLoss"))
    assert loss.detail == "a sum over the batch"


def test_an_uneven_last_batch_is_found():
    t = training("Clean", samples=60)  # 60 = 3 x 16 + 12
    assert keys(t) == ["uneven"]
    assert "3 x 16 + 12" in diagnosis.causes(t)[0].detail


def test_one_process_without_accumulation_has_no_cause():
    for model in ("WithBatchNorm", "WithDropout", "SummedLoss"):
        assert keys(training(model, processes=1)) == []


def synthetic(steps: int, lr: float = 0.1) -> WeightTrace:
    recorded = WeightTrace(None)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        with torch.no_grad():
            model[0].weight.add_(0.01)
        recorded.record(step, model, optimizer)
    return recorded


def nudge(recorded: WeightTrace, step: int, key: str, by: float) -> None:
    for state in recorded.states[step:]:
        state[key] = state[key] + by


def test_where_bitwise_finds_the_first_step_and_the_layer():
    a, b = synthetic(6), synthetic(6)
    assert diagnosis.first_divergence(Trace.of(a), Trace.of(b)) is None
    nudge(b, 3, "1.running_mean", 1e-7)
    nudge(b, 4, "0.bias", 1.0)
    found = diagnosis.first_divergence(Trace.of(a), Trace.of(b), parameters={"0.weight", "0.bias"})
    assert (found.step, found.key, found.layer, found.kind) == (3, "1.running_mean", "1", "buffer")


def test_where_with_a_bound_ignores_rounding():
    a, b = synthetic(6), synthetic(6)
    nudge(b, 2, "0.weight", 1e-12)  # below the float64 bound: rounding
    assert diagnosis.first_divergence(Trace.of(a), Trace.of(b), bound=1e-9) is None
    nudge(b, 4, "0.bias", 1e-6)
    found = diagnosis.first_divergence(Trace.of(a), Trace.of(b), bound=1e-9)
    assert (found.step, found.key) == (4, "0.bias")


def test_the_scheduler_cause_names_the_step_where_the_rates_part():
    a, b = synthetic(5), synthetic(5)
    assert diagnosis.scheduler_cause(Trace.of(a), Trace.of(b), ("torch", "fabric")) is None
    for lrs in b.lrs[2:]:
        lrs[0] = 0.05
    found = diagnosis.scheduler_cause(Trace.of(a), Trace.of(b), ("torch", "fabric"))
    assert found.key == "scheduler" and found.detail.startswith("after step 2:")


def test_float64_replays_of_a_clean_model_agree_across_groupings():
    one = training("Clean", processes=1)
    for grouping in (parity.INTERLEAVED, parity.SHARDED):
        t = replay.Training(**{**vars(training("Clean")), "grouping": grouping})
        assert diagnosis.replay_divergence(t, one) is None


def test_float64_replays_of_a_batchnorm_model_part_at_the_first_step():
    one = training("WithBatchNorm", processes=1)
    found = diagnosis.replay_divergence(training("WithBatchNorm"), one)
    assert found is not None and found.step == 1 and found.layer == "net.1"


@pytest.mark.parametrize("model", ["SummedLoss", "WithDropout"])
def test_a_summed_loss_and_per_process_masks_part_too(model):
    found = diagnosis.replay_divergence(training(model), training(model, processes=1))
    assert found is not None and found.step == 1 and found.kind == "parameter"


def test_each_replayed_process_draws_from_the_same_seed():
    """As N processes seeded alike: rank 1 draws rank 0's numbers, not the ones after them."""
    replayer = replay.Replayer(training("Noise"), torch.float32, None)
    with replay.silenced(replayer.module):
        replayer.epoch(0, None)
    draws = replayer.module.draws  # rank 0's, rank 1's, for each of the epoch's 4 steps
    assert len(draws) == 8 and draws[0::2] == draws[1::2] and len(set(draws)) == 4


def test_a_global_rng_shuffle_parts_from_one_device():
    t, one = training("Clean", "ShuffledData"), training("Clean", "ShuffledData", processes=1)
    assert diagnosis.replay_divergence(t, one).step == 1


def test_the_replay_is_parity_replay_for_the_task():
    """The generic replay of the task's classes equals the task's own replay, bit for bit."""
    t = replay.Training(
        classes.Choice("model", classes.TASK_MODEL),
        classes.Choice("data", classes.TASK_DATA),
        epochs=1,
        processes=2,
        accumulate=2,
        grouping=parity.SHARDED,
    )
    setup = parity.Setup(epochs=1, processes=2, accumulate=2, grouping=parity.SHARDED)
    got = replay.replay(t)  # both under the task LightningModule's keys (model.hidden.weight, ...)
    assert parity.bitwise_equal(got, parity.replay(setup))


@pytest.mark.parametrize(("model", "expected"), [("StepScheduled", 0.2), ("EpochScheduled", 0.05)])
def test_the_replay_steps_the_scheduler_as_the_trainer_does(model, expected):
    recorded = WeightTrace(None)
    replay.replay(training(model, processes=1), trace=recorded)
    trace = Trace.of(recorded)
    assert trace.steps == list(range(9))  # 64 samples / 16 = 4 steps an epoch, 2 epochs
    lrs = [lr for (lr,) in trace.lrs]
    if model == "StepScheduled":  # after step s the ramp's factor is (s + 1) / 10
        assert lrs[1] == pytest.approx(0.05 * 0.2) and lrs[8] == pytest.approx(0.05 * 0.9)
    else:  # halved after each epoch's last step only
        assert lrs[:4] == [0.05] * 4 and lrs[4] == pytest.approx(0.025) and lrs[8] == 0.0125
    assert expected


@pytest.mark.parametrize(("accumulate", "halvings"), [(1, [0, 0, 1, 1, 2]), (2, [0, 1, 2, 3, 4])])
def test_the_scheduler_frequency_counts_micro_batches_as_the_trainer_does(accumulate, halvings):
    """Lightning: step when (batch_idx + 1) % frequency == 0, batch_idx the micro-batch's index in
    its epoch; with 2 micro-batches a step, frequency 2 steps it after every optimizer step."""
    recorded = WeightTrace(None)
    t = replay.Training(
        **{**vars(training("EveryOtherBatch", processes=1)), "accumulate": accumulate}
    )
    replay.replay(t, trace=recorded)
    lrs = [lr for (lr,) in Trace.of(recorded).lrs][:5]
    assert lrs == [0.05 * 0.5**h for h in halvings]


TRAINER_SCRIPT = """
import sys, warnings
import lightning as L, torch
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from datamodule import TaskDataModule
from examples.batchnorm_dropout import BatchNormDropoutMLP
L.seed_everything(42, verbose=False)
model, data = BatchNormDropoutMLP(), TaskDataModule(num_samples=320)
trainer = L.Trainer(accelerator="cpu", devices=int(sys.argv[1]), max_epochs=2, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(model, data)
if trainer.global_rank == 0:
    torch.save(model.state_dict(), sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.deep
@pytest.mark.parametrize("processes", [1, 2])
def test_the_replay_is_the_trainers_training_bit_for_bit(tmp_path, processes):
    """BatchNorm and Dropout, 1 device and DDP on 2 processes: the replay's per-process batches,
    RNG streams (the Trainer re-seeds under DDP) and buffers are the Trainer's own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script, out = tmp_path / "fit.py", tmp_path / "model.pt"
    script.write_text(TRAINER_SCRIPT)
    port = {"MASTER_PORT": str(29500 + os.getpid() % 1000)}
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)} | port
    cmd = [sys.executable, str(script), str(processes), str(out)]
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, timeout=300)
    t = replay.Training(
        classes.Choice("model", "examples.batchnorm_dropout.BatchNormDropoutMLP"),
        classes.Choice("data", classes.TASK_DATA),
        seed=42,
        epochs=2,
        processes=processes,
    )
    replayed = replay.replay(t, args=replay.task_args(parity.Setup(num_samples=320)))
    assert parity.bitwise_equal(torch.load(out, weights_only=True), replayed)
