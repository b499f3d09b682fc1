"""The task's LightningModule, and the Lightning Trainer runner through LightningCLI.

python lightning_module.py fit                                   # defaults: 1 device
python lightning_module.py fit --config configs/lightning/ddp.yaml
python lightning_module.py fit --print_config                    # every option, as YAML
python lightning_module.py validate --ckpt_path runs/lightning/version_0/checkpoints/last.ckpt

The task has a training and a validation split and nothing else, so `fit` and `validate` are the
subcommands offered (`test` and `predict` would have no data to run on).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse import ActionConfigFile
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from datamodule import TaskDataModule
from fourways import sharded, task
from fourways.contract import (
    arguments,
    checkpoint_io,
    console,
    entry,
    errors,
    faults,
    records,
    resume,
    run_dirs,
)

# Framework noise that says nothing about this run (see FRAMEWORK_NOTES); metrics.json holds the
# seed and the device. Bad input then leaves one line on stderr, as the contract asks.
_NOISE = ("💡 Tip", "GPU available:", "TPU available:", "HPU available:")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith(_NOISE)
)
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
# `validate` restores ModelCheckpoint's state under another log folder; nothing is saved there.
warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
# The CSV loggers warn about a run directory that already holds files: here, our checkpoints; on
# a resume the logged history is replayed (Fabric) and metrics.json stays complete.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


# The labels are 0 and 1: fewer than two logits cannot classify them (torchmetrics refuses 1).
AtLeastTwo = restricted_number_type("AtLeastTwo", int, (">=", 2))


class MLPClassifier(L.LightningModule):
    """The MLP with its loss, metrics and optimizer. Fabric and Accelerate drive it too."""

    def __init__(
        self,
        num_features: PositiveInt = task.NUM_FEATURES,
        hidden_dim: PositiveInt = task.HIDDEN_DIM,
        num_classes: AtLeastTwo = task.NUM_CLASSES,
        lr: PositiveFloat = task.LEARNING_RATE,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = task.MLP(num_features, hidden_dim, num_classes)
        # torchmetrics sum over every process when computed: the loss is a mean over every
        # sample (weighted by batch size), the accuracy micro-averaged (not per-class).
        self.train_loss = MeanMetric()
        # Each step's loss is listed and handed to the metric once per epoch (or checkpoint): a
        # metric update per step cost more than the MLP's own step, and even one tensor op (or
        # an nn.Module attribute set) a step is a few % of it (profiled).
        self.step_losses: list[tuple[torch.Tensor, int]] = []
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.history: list[dict[str, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)  # not self(x): one module call fewer a step
        self.record_train_loss(loss, y.numel())
        return loss

    def record_train_loss(self, loss: torch.Tensor, count: int) -> None:
        """Lists one micro-batch's mean loss and its samples, for the epoch's mean."""
        self.step_losses.append((loss.detach(), count))

    def fold_train_loss(self) -> None:
        """Moves the listed losses into the metric (which syncs processes): one update, each
        loss weighted by its samples."""
        if self.step_losses:
            losses, counts = zip(*self.step_losses, strict=True)
            device = self.train_loss.device
            self.train_loss.update(
                torch.stack(losses).float().to(device),
                torch.tensor(counts, dtype=torch.float32, device=device),
            )
            self.step_losses.clear()

    def on_validation_epoch_start(self) -> None:
        # Forget the Trainer's sanity-check batches: each epoch validates all 200 samples once.
        self.val_loss.reset()
        self.val_acc.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.val_loss.update(F.cross_entropy(logits, y), weight=y.numel())
        self.val_acc.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        # `validate` alone reports here, through the Trainer's logger and results table; in `fit`
        # the validation metrics join the epoch's line in on_train_epoch_end instead.
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            self.log_dict({"val_loss": self.val_loss.compute(), "val_acc": self.val_acc.compute()})

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's metrics, synced over all processes; resets them for the next epoch."""
        self.fold_train_loss()
        metrics = {
            "train_loss": self.train_loss.compute().item(),
            "val_loss": self.val_loss.compute().item(),
            "val_acc": self.val_acc.compute().item(),
        }
        for metric in (self.train_loss, self.val_loss, self.val_acc):
            metric.reset()
        return metrics

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if faults.FAULT:  # the resume tests' fault points: the step count is a chain of calls
            faults.inject_fault("step", self.trainer.global_step)

    def on_train_start(self) -> None:
        self._epoch_start = time.perf_counter()  # a run resumed mid-epoch starts its clock here

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        metrics = self.epoch_metrics()
        metrics["epoch_s"] = time.perf_counter() - self._epoch_start  # training + validation
        if self.trainer.global_rank == 0:  # under Fabric, `self.trainer` forwards to Fabric
            tqdm.write(console.epoch_line(len(self.history) + 1, metrics))
        self.history.append(metrics)
        self.log_dict(metrics, sync_dist=True)  # equal on every rank already; this is a no-op

    def configure_model(self) -> None:
        """Under ModelParallelStrategy (configs/lightning/fsdp2.yaml): the MLP sharded with FSDP2
        over the data-parallel processes, where Lightning documents it (before the optimizer)."""
        if self.device_mesh is not None and not isinstance(self.model, FSDPModule):
            fully_shard(self.model, mesh=self.device_mesh["data_parallel"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def progress_state(self) -> dict[str, Any]:
        """Finished epochs and this epoch's running train-loss sums over every process.

        For checkpoints. A collective under DDP: every rank must call it.
        """
        self.fold_train_loss()
        with self.train_loss.sync_context():
            sums = [self.train_loss.mean_value.item(), self.train_loss.weight.item()]
        return {"history": self.history, "train_loss_sums": sums}

    def load_progress_state(self, state: dict[str, Any], rank: int) -> None:
        self.history = state["history"]
        self.train_loss.reset()
        self.step_losses.clear()
        if rank == 0:  # the sums cover every rank: one rank carries them, the others start at 0
            self.train_loss.mean_value += state["train_loss_sums"][0]
            self.train_loss.weight += state["train_loss_sums"][1]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["progress"] = self.progress_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_progress_state(checkpoint["progress"], self.trainer.global_rank)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O (the Trainer's and Fabric's): complete-or-absent writes, and
    reads of tensors and plain values only, whatever the caller asks.

    Lightning's own save goes through an fsspec transaction that writes to the system's temp
    folder with mode 0600, then moves the file: a copy, not a rename, where that folder is on
    another file system. Here the file is written beside its final name, then renamed.

    `checked`: a checkpoint the runner has read already (to settle its configuration), handed to
    the framework as read, so that the file checked is the file loaded (a file swapped between
    two reads is never read).
    """

    def __init__(self, checked: tuple[Path, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._checked = checked

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if self._checked is not None and Path(path).resolve() == self._checked[0].resolve():
            checkpoint, self._checked = self._checked[1], None  # handed over once
            return checkpoint
        # Any other read: tensors and plain values only, explicitly (Lightning 2.6.6 passes
        # weights_only=None, torch's default, unless told).
        return checkpoint_io.load_checkpoint(Path(path))

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        checkpoint_io.atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


class EpochBar(TQDMProgressBar):
    """The Trainer's bar, on a terminal only, with epochs counted from 1 as the epoch lines are."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}")


# The subcommands offered, each reading the task's data: fit trains, validate reports.
READS = ("fit", "validate")
# The run's configuration keys (resume.settle_config's) that the Trainer's own options hold;
# every init argument of the data and the model is recorded too (cli_options).
TRAINER_OPTIONS = {
    "seed": "seed_everything",
    "epochs": "trainer.max_epochs",
    "accumulate": "trainer.accumulate_grad_batches",
    "precision": "trainer.precision",
    "checkpoint_every": "checkpoint.every_n_train_steps",
}
RENAMED = {"batch_size": "global_batch_size"}  # init argument: its key in the configuration


def cli_options(fit: Any) -> dict[str, str]:
    """The run's configuration as LightningCLI options, `{key: option}`: the Trainer's, then
    every init argument of the data and the model as parsed (their signatures, none listed
    here). The data's come first: a linked model argument (num_features) is set through it."""
    options = dict(TRAINER_OPTIONS)
    for group in ("data", "model"):
        for name in vars(fit[group]):
            options.setdefault(RENAMED.get(name, name), f"{group}.{name}")
    return options


ACCELERATORS = ("auto", *AcceleratorRegistry.available_accelerators())
STRATEGIES = ("auto", *StrategyRegistry.available_strategies())


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint that also records the run's configuration in every checkpoint and, on
    resume, says where the run stands and writes the epochs before it back into metrics.csv (the
    CSV logger starts its file anew).

    The step path skips it: the Trainer calls a callback's hook only where it is callable
    (lightning/pytorch/trainer/call.py), each call wrapped in its profiler and named by the
    callback's `state_key`; a ModelCheckpoint with these hooks cost ~7 % of this MLP's step
    (measured), for nothing when it saves at epoch ends. So the per-batch hooks it does not use
    are None, `on_train_batch_end` too unless it saves every N steps, and `state_key` is built
    once (ModelCheckpoint formats it anew on every call from settings that do not change). And
    one callback does both jobs, not two.
    """

    on_train_batch_start = on_before_backward = on_after_backward = None
    on_before_optimizer_step = on_before_zero_grad = None
    on_validation_batch_start = on_validation_batch_end = None

    run_config: dict[str, Any]
    train_start: float
    resume_reported = False  # said where the run resumed (say_where_resumed)

    def record_run(self, run_config: dict[str, Any]) -> None:
        """Called before fit: the configuration to record, and the training clock's start (reset
        when training starts, which a resumed run that had already finished never does)."""
        self.run_config = run_config
        self.train_start = time.perf_counter()

    @property
    def state_key(self) -> str:
        if not hasattr(self, "_state_key"):
            self._state_key = super().state_key
        return self._state_key

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not self._every_n_train_steps and self._train_time_interval is None:
            self.on_train_batch_end = None  # it checks there whether to save after this step

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Every N steps, except an epoch's last batch: that step is saved after validation.

        Lightning (2.6.6, loops/fit_loop.py `reset`) resumes a checkpoint taken after an epoch's
        last batch as if that epoch were over: its validation never runs (the epoch's val_loss
        is NaN) and the next epoch starts from an exhausted loader state (another run). So the
        save after each epoch's validation (on_train_epoch_end) holds that step instead; a kill
        between the two resumes from the step before and trains the last batch again.
        test_resume_positions.py fails if this is removed or Lightning changes.
        """
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Saving every N steps, also save last.ckpt at each epoch's end, after validation (as
        the other runners do; Lightning 2.6.6 saves it there only if it saved at that step)."""
        super().on_train_epoch_end(trainer, pl_module)
        if self.on_train_batch_end is not None and self.save_last:  # step-triggered saves
            # After the module's on_train_epoch_end: Lightning calls checkpoint callbacks last.
            trainer.save_checkpoint(self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # After the processes are launched and joined, as in the others (where it is set just
        # before the epoch loop): the launch and the sanity check are start-up, not training.
        self.train_start = time.perf_counter()
        self.report_resume(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["run_config"] = self.run_config
        # jsonargparse hands over its own subclasses (PositiveFloat, ...) for the options given:
        # stored as they are, they would make the checkpoint unreadable with weights_only=True.
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain_values(checkpoint[key])

    def report_resume(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        self.say_where_resumed(trainer)
        steps_per_epoch = -(-trainer.num_training_batches // trainer.accumulate_grad_batches)
        for epoch, metrics in enumerate(pl_module.history):  # as the Trainer logged them
            for logger in trainer.loggers:
                logger.log_metrics({**metrics, "epoch": epoch}, (epoch + 1) * steps_per_epoch - 1)

    def say_where_resumed(self, trainer: L.Trainer) -> None:
        """The resume line, as the other runners print it. Also called after a resume from the
        run's last checkpoint, where the Trainer has no epoch left and starts no training."""
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if batch >= trainer.num_training_batches:  # an epoch-end checkpoint: the next one starts
            batch = 0
        position = {"epoch": trainer.current_epoch, "batch": batch, "steps": trainer.global_step}
        if trainer.is_global_zero:
            tqdm.write(resume.resume_line(Path(trainer.ckpt_path), position))
        self.resume_reported = True


class SaveConfigOnce(SaveConfigCallback):
    """LightningCLI's writer of config.yaml, which leaves the Trainer's callbacks once it has
    written it (at setup): otherwise the Trainer would call it on every hook of every step."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # A new list, not a removal: the Trainer is iterating over the old one right now.
        trainer.callbacks = [callback for callback in trainer.callbacks if callback is not self]


def plain_values(mapping: dict[str, Any]) -> dict[str, Any]:
    """The values' builtin types: a `PositiveFloat` becomes the float it is."""
    builtins = (bool, int, float, str)
    return {
        k: next(t(v) for t in builtins if isinstance(v, t)) if isinstance(v, builtins) else v
        for k, v in mapping.items()
    }


class TaskCLI(LightningCLI):
    """LightningCLI with the contract's run directory, outputs and refusals."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI.init_parser, with the contract's one-line errors.
        parser = OneLineErrorParser(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML config file")
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Checkpoints at each epoch's end, or every N steps (--checkpoint.every_n_train_steps N),
        # and always last.ckpt: resume with --ckpt_path last and the same logger version.
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        # One seed for everything: the data, the initial weights and the data order.
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("data.num_features", "model.num_features")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """`fit` and `validate`: the task has no test or prediction data to give the others."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in READS}

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """With --ckpt_path, the checkpoint's configuration becomes the defaults, so that options
        left out continue (or validate) the run as configured and a contradicting one is refused."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand not in READS or self.config[subcommand].ckpt_path is None:
            return
        path = checkpoint_file(self.config[subcommand], subcommand)
        if errors.rank() == 0:  # a kill between a sharded folder's renames: the previous one
            sharded.recover(path)
        # A file, or a folder under ModelParallelStrategy: tensors and plain values, explicitly.
        checkpoint = sharded.read_lightning_checkpoint(path)
        recorded = checkpoint.get("run_config", {})
        options = cli_options(self.config[subcommand])
        self._subcommand_parsers[subcommand].set_defaults(
            {option: recorded[key] for key, option in options.items() if key in recorded}
        )
        super().parse_arguments(parser, args)
        config = self.config[subcommand]
        config.ckpt_path = str(path)  # exactly the file checked ("last" would take last-v1.ckpt)
        self._recorded, self._checked = recorded, (path, checkpoint)
        given = {key: config[option] for key, option in options.items()}
        resume.settle_config(
            [
                resume.Given(
                    key,
                    f"--{options[key]}",
                    None if value == recorded.get(key) else value,
                    None,
                )
                for key, value in given.items()
            ],
            recorded,
        )
        if subcommand == "fit":
            started = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
            reached = checkpoint["epoch"] + (started["processed"] > 0)
            resume.check_epochs_left(config.trainer.max_epochs, reached, "--trainer.max_epochs")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The contract's console: a progress bar on a terminal only (the other runners' rule),
        counting epochs from 1; elsewhere the epoch lines alone, nothing redrawn."""
        trainer = self._get(self.config_init, "trainer", default={})
        show_bar = trainer.get("enable_progress_bar")
        if show_bar is None:
            show_bar = kwargs["enable_progress_bar"] = console.on_terminal()
        callbacks = trainer.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if show_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, EpochBar()]
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        for option, value, known in (
            ("accelerator", trainer.accelerator, ACCELERATORS),
            ("strategy", trainer.strategy, STRATEGIES),
        ):
            if isinstance(value, str) and value not in known:
                raise errors.UsageError(
                    f"--trainer.{option} {value} is unknown; choose one of {', '.join(known)}"
                )
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise errors.UsageError(f"--trainer.max_epochs {trainer.max_epochs} must be 1 or more")
        if str(trainer.devices).isdigit():  # refuse an uneven split now, not in N processes
            data = self.config[self.subcommand].data
            num_val = round(data.val_fraction * data.num_samples)
            arguments.micro_batch_size(
                data.batch_size,
                int(trainer.devices) * trainer.num_nodes,
                trainer.accumulate_grad_batches,
                data.num_samples - num_val,
                num_val,
            )
        on_cuda = arguments.cuda_requested(str(trainer.accelerator))
        # Lightning would warn and train fp16 in bf16 on a CPU: the contract refuses that swap.
        arguments.check_precision(str(trainer.precision), on_cuda)
        arguments.check_strategy(str(trainer.strategy), on_cuda)
        arguments.check_devices(str(trainer.accelerator), trainer.devices)

    def before_fit(self) -> None:
        fit, trainer = self.config_init.fit, self.trainer
        run_dirs.check_run_dir(Path(trainer.log_dir), resume=fit.ckpt_path is not None)
        read_weights_only(fit)
        self.run_config = self.trainer_run_config()
        if fit.ckpt_path is not None:
            processes = "--trainer.devices x --trainer.num_nodes"
            resume.settle_config(
                [resume.Given("world_size", processes, trainer.world_size, None)],
                self._recorded,
            )
        hand_over_checked(trainer.strategy, getattr(self, "_checked", None))
        self.checkpoint = self._get(self.config_init, "checkpoint")
        self.checkpoint.record_run(self.run_config)

    def before_validate(self) -> None:
        log_dir = Path(self.trainer.log_dir)
        if log_dir.is_dir() and any(log_dir.iterdir()):  # the CSV logger would replace its files
            raise errors.UsageError(
                f"{log_dir} holds files already (a training run's?); validate logs into a new "
                "folder: leave --trainer.logger.init_args.version out"
            )
        read_weights_only(self.config_init.validate)
        hand_over_checked(self.trainer.strategy, getattr(self, "_checked", None))

    def trainer_run_config(self) -> dict[str, Any]:
        """The run's configuration, keyed as the other runners key it (resume.settle_config)."""
        fit, trainer = self.config.fit, self.trainer
        config = plain_values({key: fit[option] for key, option in cli_options(fit).items()})
        return config | {"precision": str(trainer.precision), "world_size": trainer.world_size}

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.ckpt_path is not None and not self.checkpoint.resume_reported:
            # Resumed from the run's last checkpoint: the Trainer trained nothing, and its CSV
            # logger has emptied metrics.csv. Say so, and write the logged epochs back.
            self.checkpoint.report_resume(trainer, self.model)
            for logger in trainer.loggers:
                logger.save()
        run_dir = Path(trainer.log_dir)  # a collective under DDP: every rank must ask
        model_state = sharded.full_state_dict(self.model.model)  # a gather under FSDP2: all ranks
        if trainer.is_global_zero:
            self._save_run(run_dir, model_state)
        trainer.strategy.barrier()  # every rank waits for rank 0's files
        entry.end_distributed_run(trainer.world_size > 1)

    def _save_run(self, run_dir: Path, model_state: dict[str, torch.Tensor]) -> None:
        trainer, module, data = self.trainer, self.model, self.datamodule
        record = records.RunRecord(
            runner="lightning",
            world_size=trainer.world_size,
            device=module.device.type,
            precision=str(trainer.precision),
            seed=data.hparams.seed,
            global_batch_size=data.hparams.batch_size,
            per_device_batch_size=data.micro_batch_size,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            optimizer_steps=trainer.global_step,
            wall_clock_s=time.perf_counter() - self.checkpoint.train_start,
            config=self.run_config,
            epochs=module.history,
            state_bytes_per_process=records.state_bytes(module.parameters(), trainer.optimizers[0]),
        )
        records.save_run(run_dir, record, model_state)


class OneLineErrorParser(LightningArgumentParser):
    """A bad option or config file is reported as the contract's one line, exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        errors.fail(" ".join(message.split()) + " (see --help)")


def hand_over_checked(strategy: Any, checked: tuple[Path, dict[str, Any]] | None) -> None:
    """The Trainer's read of a checkpoint file is the one made on parsing: the file checked is the
    file loaded. ModelParallelStrategy takes no CheckpointIO: its folders were read whole, safely,
    by sharded.read_lightning_checkpoint first."""
    if not isinstance(strategy, ModelParallelStrategy):
        strategy.checkpoint_io = AtomicCheckpointIO(checked)


def read_weights_only(config: Any) -> None:
    """The Trainer's own read of the checkpoint (checked on parsing), explicitly weights-only."""
    if config.weights_only is False:
        raise errors.UsageError(
            "--weights_only false is not offered: checkpoints are read as tensors and plain "
            "values only"
        )
    config.weights_only = True


def checkpoint_file(fit: Any, subcommand: str = "fit") -> Path:
    """The one file that --ckpt_path names: `last` is this run's checkpoints/last.ckpt exactly."""
    if fit.ckpt_path == "last" and subcommand != "fit":
        raise errors.UsageError(
            f"{subcommand} reads a checkpoint by its path: --ckpt_path "
            "runs/lightning/version_N/checkpoints/last.ckpt"
        )
    if fit.ckpt_path != "last":
        if fit.ckpt_path in ("best", "hpc") or str(fit.ckpt_path).startswith("registry"):
            raise errors.UsageError(
                f"--ckpt_path {fit.ckpt_path}: resume with --ckpt_path last, or a checkpoint's path"
            )
        return Path(fit.ckpt_path)
    logger = fit.trainer.logger
    init = getattr(logger, "init_args", None)
    if init is None or getattr(init, "version", None) is None:
        raise errors.UsageError(
            "--ckpt_path last continues a named run: give its --trainer.logger.init_args.version "
            "(and save_dir, name), or the checkpoint's path"
        )
    version = init.version if isinstance(init.version, str) else f"version_{init.version}"
    return Path(init.save_dir, init.name or "", version, "checkpoints", "last.ckpt")


def main() -> None:
    TaskCLI(
        MLPClassifier,
        TaskDataModule,
        seed_everything_default=task.SEED,
        save_config_callback=SaveConfigOnce,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its config.yaml
        trainer_defaults={
            "max_epochs": task.EPOCHS,
            # The console the other runners have: epoch lines, no parameter table (and one
            # callback fewer to call on every step); --trainer.enable_model_summary true shows it.
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "lightning"},
            },
        },
    )


if __name__ == "__main__":
    entry.run_main(main)
