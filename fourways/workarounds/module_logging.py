"""A LightningModule's `self.log` / `self.log_dict` calls, taken by the hand-written runners.

Checked with lightning 2.6.6. Outside the Trainer, `LightningModule.log` warns and drops the value
(no Trainer), or under Fabric (`fabric.setup` sets the module's Fabric) hands it to
`Fabric.log_dict` raw, without on_epoch, reduce_fx, sync_dist or batch_size; `log_dict` goes to
Fabric directly, not through `log`. No public hook receives the calls with their options
(FRAMEWORK_NOTES, 2026-12-01), so the runners set both methods on the module INSTANCE (the class
is left alone) to fourways.driving.logs.EpochLogs, whose `log` has LightningModule.log's signature.

Test: tests/test_workarounds_module_logging.py fails when LightningModule.log's parameters change
(the capture would then miss or misread an option) or when a log call outside the Trainer starts
doing more than dropping the value.
"""

from __future__ import annotations

import lightning as L

from fourways.driving.logs import EpochLogs

CHECKED_WITH = "lightning 2.6.6"


def capture_logs(module: L.LightningModule) -> EpochLogs:
    """The module's log calls, from now on, go to the returned EpochLogs."""
    logs = EpochLogs()
    module.log = logs.log  # type: ignore[method-assign]
    module.log_dict = logs.log_dict  # type: ignore[method-assign]
    return logs
