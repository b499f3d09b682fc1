"""fourways/workarounds/module_logging.py: Lightning behaves as the entry says, and the capture
takes every call.

If LightningModule.log gains or renames a parameter, EpochLogs.log would miss or misread it; if a
log call outside the Trainer starts doing more than dropping the value, the workaround may go.
"""

from __future__ import annotations

import inspect
import warnings

import lightning as L
import pytest
import torch

from fourways.driving.logs import EpochLogs
from fourways.workarounds import module_logging


class Logs(L.LightningModule):
    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", batch.float().mean(), sync_dist=True)
        self.log_dict({"a": 1.0, "b": 2.0})


def test_the_capture_has_lightning_log_signature() -> None:
    ours = inspect.signature(EpochLogs.log).parameters
    theirs = inspect.signature(L.LightningModule.log).parameters
    assert list(ours) == list(theirs)
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name


def test_outside_the_trainer_lightning_drops_a_logged_value() -> None:
    """What the workaround exists for: no Trainer, no record of the value (only a warning)."""
    module = Logs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.validation_step(torch.ones(4), 0)
    assert any("self.trainer" in str(w.message) for w in caught)


def test_the_capture_takes_log_and_log_dict_with_their_options() -> None:
    module = Logs()
    logs = module_logging.capture_logs(module)
    for i in range(3):
        logs.at("validation_step", torch.ones(4) * i)
        module.validation_step(torch.ones(4) * i, i)
    assert logs.logged["val_loss"].sync_dist
    assert logs.epoch_values() == {"a": 1.0, "b": 2.0, "val_loss": pytest.approx(1.0)}
    assert type(module).log is L.LightningModule.log  # the class is left alone
