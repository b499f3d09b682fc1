"""fourways.driving in-process: configure_optimizers read in each form Lightning documents, the
scheduler stepped by the Trainer's rule, `self.log` read as the Trainer's callback_metrics hold it,
and the classes' command line. The runners' end-to-end behaviour: test_your_model.py.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fourways.contract.errors import UsageError
from fourways.driving import classes, requirements
from fourways.driving.logs import EpochLogs
from fourways.trainer_bookkeeping import epoch_values


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)


def forms() -> dict[str, Any]:
    """Each documented return form of configure_optimizers, built fresh: (returned, interval)."""
    opt = optimizer()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    opt2 = optimizer()
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 1)
    return {
        "optimizer": (opt, None),
        "[optimizer]": ([optimizer()], None),
        "([optimizers], [schedulers])": (([opt], [sched]), "epoch"),
        "dict": ({"optimizer": opt, "lr_scheduler": sched}, "epoch"),
        "dict with config": (
            {"optimizer": opt2, "lr_scheduler": {"scheduler": sched2, "interval": "step"}},
            "step",
        ),
    }


@pytest.mark.parametrize("form", list(forms()))
def test_each_documented_form_gives_one_optimizer_and_its_scheduler(form: str) -> None:
    returned, interval = forms()[form]
    optimization = requirements.optimization_of(returned, "M")
    assert isinstance(optimization.optimizer, torch.optim.SGD)
    assert (optimization.scheduler is None) == (interval is None)
    if interval:
        assert optimization.interval == interval


@pytest.mark.parametrize(
    ("returned", "words"),
    [
        (None, "returned NoneType"),
        ([optimizer(), optimizer()], "2 optimizers"),
        ({"lr_scheduler": None}, "without 'optimizer'"),
        ({"optimizer": (o := optimizer()), "lr_scheduler": {"scheduler":
          torch.optim.lr_scheduler.StepLR(o, 1), "interval": "batch"}}, "interval"),
        ({"optimizer": optimizer(), "lr_scheduler": torch.optim.lr_scheduler.StepLR(
            optimizer(), 1)}, "another optimizer"),
    ],
)  # fmt: skip
def test_what_is_not_one_optimizer_is_refused(returned: Any, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        requirements.optimization_of(returned, "M")


def test_a_step_scheduler_steps_by_the_trainers_rule() -> None:
    """Frequency 3, counted in batches: steps after batches 3 and 6 of an epoch of 8 (and the
    epoch scheduler after the epoch's last batch only)."""
    opt = optimizer()
    steps = requirements.Optimization(opt, torch.optim.lr_scheduler.StepLR(opt, 1), "step", 3)
    stepped = []
    for i in range(8):
        before = opt.param_groups[0]["lr"]
        steps.after_optimizer_step(i, 0, epoch_ends=i == 7)
        stepped.append(opt.param_groups[0]["lr"] != before)
    assert [i + 1 for i, s in enumerate(stepped) if s] == [3, 6]


class Logged(L.LightningModule):
    """Logs with several options in training and validation; one process."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("last", float(batch_idx))
        self.log("both", float(batch_idx) * 2, on_epoch=True)
        self.log("epoch_sum", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("weighted", batch[0][:, 0].mean())  # a mean weighted by the batch's size
        self.log("highest", batch[0][:, 0].max(), reduce_fx="max")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    return DataLoader(TensorDataset(x), batch_size=4)  # 4, 4, 2: uneven


def test_epoch_logs_hold_what_the_trainers_callback_metrics_hold() -> None:
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(Logged(), loader(), loader())
    expected = epoch_values(trainer.callback_metrics)

    module, logs = Logged(), EpochLogs()
    module.log, module.log_dict = logs.log, logs.log_dict
    for i, batch in enumerate(loader()):
        logs.at("training_step", batch)
        module.training_step(batch, i)
    for i, batch in enumerate(loader()):
        logs.at("validation_step", batch)
        module.validation_step(batch, i)
    assert logs.epoch_values() == pytest.approx(expected)
    assert set(expected) == {"last", "both", "epoch_sum", "weighted", "highest"}


def test_init_arguments_are_split_from_the_command_line() -> None:
    argv = ["--epochs", "2", "--model.depth", "3", "--model.init_args.width=8", "--data.x", "1"]
    rest, init = classes.split_argv(argv)
    assert rest == ["--epochs", "2"]
    assert init == {"model": ["--depth=3", "--width=8"], "data": ["--x=1"]}
    with pytest.raises(UsageError, match="needs a value"):
        classes.split_argv(["--model.depth", "--epochs", "2"])
