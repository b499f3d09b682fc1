"""LightningCLI as the Lightning Trainer runner (lightning_module.py) needs it for the run contract.

What a plain LightningCLI does not do: one-line refusals of bad input (exit status 2), the
contract's run directory and outputs (model.pt, metrics.json), a resume that takes the run's
recorded configuration and refuses a contradicting option, a console like the other runners'
(epoch lines; a bar on a terminal only), any LightningModule and LightningDataModule by dotted
path (fourways/trainer_classes.py) held to the module contract the four runners share
(fourways.driving.requirements), the run's bookkeeping as a callback
(fourways/trainer_bookkeeping.py). Everything through LightningCLI's public hooks.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from jsonargparse import ActionConfigFile
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import StrategyRegistry

from fourways import settings, sharded, trainer_classes
from fourways.contract import arguments, console, errors, records, resume, run_dirs
from fourways.driving import requirements
from fourways.trainer_bookkeeping import RunBookkeeping
from fourways.trainer_checkpoints import (
    Checkpoint,
    checkpoint_file,
    hand_over_checked,
    plain_values,
    read_checked,
    read_weights_only,
)
from fourways.workarounds import torch_runtime

# Framework noise that says nothing about this run (see FRAMEWORK_NOTES); metrics.json holds the
# seed and the device. Bad input then leaves one line on stderr, as the contract asks.
# On resume the runner says where it restarted (resume.resume_line): Lightning's own restore lines
# repeat it.
NOISE = ("💡 Tip", "GPU available:", "TPU available:", "HPU available:", "Restoring states from",
         "Restored all states from")  # fmt: skip
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith(NOISE)
)
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
# `validate` restores ModelCheckpoint's state under another log folder; nothing is saved there.
warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
# The CSV loggers warn about a run directory that already holds files: here, our checkpoints; on
# a resume the logged history is replayed (Fabric) and metrics.json stays complete.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
# ModelCheckpoint says the same of the checkpoints folder: a run directory holding checkpoints is
# a resume, or refused (run_dirs.check_run_dir).
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

# The subcommands offered, each reading the task's data: fit trains, validate reports.
READS = ("fit", "validate")
OWN_CLASSES = ("data.", "model.")  # the Trainer's options that belong to the data and the model
# The run's settings that are the Trainer's own options (settings.Settings spells each), and the
# precision, which is the runner's; every init argument of the data and the model is recorded
# too (cli_options), under its key in the configuration (RENAMED where the two differ).
TRAINER_OPTIONS = {
    o.key: o.trainer for o in settings.OPTIONS if not o.trainer.startswith(OWN_CLASSES)
} | {"precision": "trainer.precision"}
RENAMED = {
    o.trainer.split(".", 1)[1]: o.key
    for o in settings.OPTIONS
    if o.trainer.startswith(OWN_CLASSES) and o.trainer.split(".", 1)[1] != o.key
}
TASK_CLASSES = trainer_classes.TASK
TASK_ROLES = ("model", "data")
ACCELERATORS = ("auto", *AcceleratorRegistry.available_accelerators())
STRATEGIES = ("auto", *StrategyRegistry.available_strategies())


def cli_options(fit: Any) -> dict[str, str]:
    """The run's settings as LightningCLI options, `{key: option}`: the Trainer's, then every
    init argument of the task's data and model as parsed (their signatures, none listed here;
    a user's class has its own, recorded apart: trainer_classes). The data's come first: a
    linked model argument (num_features) is set through it."""
    options = dict(TRAINER_OPTIONS)
    for group in ("data", "model"):
        if trainer_classes.is_task(fit, group):
            for name in vars(fit[group].init_args):
                options.setdefault(RENAMED.get(name, name), f"{group}.init_args.{name}")
    return options


def flag(option: str) -> str:
    """An option as a user types it: --model.hidden_dim (LightningCLI's short form)."""
    return "--" + option.replace(".init_args.", ".")


def settings_of(fit: Any) -> dict[str, Any]:
    """The run's settings and classes, keyed as checkpoints and metrics.json record them."""
    config = plain_values({key: fit[option] for key, option in cli_options(fit).items()})
    for role in ("model", "data"):
        config[role] = fit[role].class_path
        config[f"{role}_init_args"] = trainer_classes.given_init_args(fit, role)
    return config


def recorded_defaults(subcommand: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's configuration as LightningCLI defaults: the Trainer's options, and each
    class with its recorded init arguments."""
    defaults = {
        f"{subcommand}.{option}": recorded[key]
        for key, option in TRAINER_OPTIONS.items()
        if key in recorded
    }
    for role in TASK_ROLES:
        names = trainer_classes.signature_defaults(trainer_classes.TASK[role])
        task_values = {name: recorded[RENAMED.get(name, name)] for name in names
                       if RENAMED.get(name, name) in recorded}  # fmt: skip
        entry = trainer_classes.recorded_init_args(role, recorded, task_values)
        defaults[f"{subcommand}.{role}"] = entry
    return defaults


def check_against_recorded(fit: Any, recorded: dict[str, Any]) -> None:
    """Refuse, in one line, a class, an option or an init argument that contradicts the
    checkpoint (resume.settle_config); the epochs and the checkpoint cadence may change."""

    def entry(key: str, option: str, value: Any, kept: Any) -> resume.Given:
        return resume.Given(key, option, None if value == kept else value, None)

    now, options = settings_of(fit), cli_options(fit)
    classes = [entry(role, f"--{role}", now[role], recorded.get(role)) for role in TASK_ROLES]
    resume.settle_config(classes, recorded)
    given = [entry(key, flag(options[key]), now[key], recorded.get(key)) for key in options]
    resume.settle_config(given, recorded)
    user = trainer_classes.user_init_entries(fit, recorded)
    resume.settle_config(
        [entry(key, option, value, kept) for key, option, value, kept in user],
        {key: kept for key, _, _, kept in user},
    )


def refuse_what_the_runners_cannot_train(module: L.LightningModule) -> None:
    """The module contract the four runners share (fourways.driving.requirements), before the
    Trainer starts: manual optimization, loop hooks only the Trainer calls, several optimizers,
    a monitored scheduler: one line each. `configure_optimizers` is called once for the check
    (the optimizer is dropped); one that needs what only fit provides (`self.trainer`, or
    parameters made in `configure_model`) raises here, and is left to the Trainer's own checks."""
    name = type(module).__name__
    requirements.check_module(module, name)
    try:
        returned = module.configure_optimizers()
    except Exception:  # not ours to judge before fit: the Trainer calls it again
        return
    requirements.optimization_of(returned, name)


class OneLineErrorParser(LightningArgumentParser):
    """A bad option or config file is reported as the contract's one line, exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        message = trainer_classes.name_init_arg(" ".join(message.split()), sys.argv[1:])
        errors.fail(message + " (see --help)")


class EpochBar(TQDMProgressBar):
    """The Trainer's bar, on a terminal only, with epochs counted from 1 as the epoch lines are."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}")


class TaskCLI(LightningCLI):
    """LightningCLI with the contract's run directory, outputs and refusals."""

    # On resume (or validate) from --ckpt_path: the configuration the checkpoint records, and the
    # checkpoint as read and checked on parsing (handed to the Trainer: the file checked is the
    # file loaded).
    recorded: dict[str, Any] | None = None
    checked: tuple[Path, dict[str, Any]] | None = None

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
        # The task's classes unless --model / --data name others. One seed for everything (the
        # task's data takes --seed_everything) and the task's model as wide as its data: those
        # links are applied by hand, only to the task's classes (trainer_classes).
        parser.set_defaults(
            {role: {"class_path": trainer_classes.TASK[role]} for role in TASK_ROLES}
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """`fit` and `validate`: the task has no test or prediction data to give the others."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in READS}

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parsed twice. First without the classes' init arguments: which classes, and which
        checkpoint. Then in full, the classes' defaults being their own (no init argument
        carried over from the task's class) or, with --ckpt_path, the checkpoint's configuration,
        so that options left out continue (or validate) the run as configured and a
        contradicting one is refused."""
        argv = list(sys.argv[1:] if args is None else args)
        trainer_classes.check_class_paths(argv)
        self.config = parser.parse_args(trainer_classes.without_init_args(argv))
        subcommand = self.config.get("subcommand")
        if subcommand not in READS:
            return
        config, recorded = self.config[subcommand], None
        if config.ckpt_path is not None:
            path = checkpoint_file(config, subcommand)
            checkpoint = read_checked(path)
            recorded = checkpoint.get("run_config", {})
            parser.set_defaults(recorded_defaults(subcommand, recorded))
        else:
            parser.set_defaults({
                f"{subcommand}.{role}": {"class_path": config[role].class_path}
                for role in TASK_ROLES
            })  # fmt: skip
        self.config = parser.parse_args(argv)
        config = self.config[subcommand]
        trainer_classes.link_task_arguments(config)
        if recorded is None:
            return
        config.ckpt_path = str(path)  # exactly the file checked ("last" would take last-v1.ckpt)
        self.recorded, self.checked = recorded, (path, checkpoint)
        check_against_recorded(config, recorded)
        if subcommand == "fit":
            if "position" not in checkpoint:
                raise errors.UsageError(
                    "the checkpoint does not record its position (written by an older version); "
                    "start a new run directory"
                )
            reached = resume.epochs_reached(checkpoint["position"])
            resume.check_epochs_left(config.trainer.max_epochs, reached, "--trainer.max_epochs")

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
        fit = self.config[self.subcommand]
        if str(trainer.devices).isdigit() and trainer_classes.is_task(fit, "data"):
            # the task's data splits its global batch: refuse an uneven split now, not in N
            # processes
            data = fit.data.init_args
            arguments.micro_batch_size(
                data.batch_size,
                int(trainer.devices) * trainer.num_nodes,
                trainer.accumulate_grad_batches,
                *arguments.split_sizes(data.num_samples, data.val_fraction),
            )
        on_cuda = arguments.cuda_requested(str(trainer.accelerator))
        # Lightning would warn and train fp16 in bf16 on a CPU: the contract refuses that swap.
        arguments.check_precision(str(trainer.precision), on_cuda)
        arguments.check_strategy(str(trainer.strategy), on_cuda)
        arguments.check_devices(str(trainer.accelerator), trainer.devices)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The contract's console: a progress bar on a terminal only (the other runners' rule),
        counting epochs from 1; elsewhere the epoch lines alone, nothing redrawn."""
        trainer = self.config_init[self.subcommand].trainer
        show_bar = trainer.enable_progress_bar
        if show_bar is None:
            show_bar = kwargs["enable_progress_bar"] = console.on_terminal()
        callbacks = trainer.callbacks or []
        callbacks = [*callbacks] if isinstance(callbacks, list) else [callbacks]
        if show_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(EpochBar())
        if self.subcommand == "fit":  # the run's epoch metrics, history and resume sums
            self.bookkeeping = RunBookkeeping()
            callbacks.append(self.bookkeeping)
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        fit, trainer = self.config_init.fit, self.trainer
        refuse_what_the_runners_cannot_train(self.model)
        run_dirs.check_run_dir(Path(trainer.log_dir), resume=fit.ckpt_path is not None)
        read_weights_only(fit)
        self.run_config = self.trainer_run_config()
        if fit.ckpt_path is not None:
            processes = "--trainer.devices x --trainer.num_nodes"
            resume.settle_config(
                [resume.Given("world_size", processes, trainer.world_size, None)],
                self.recorded,
            )
        hand_over_checked(trainer.strategy, self.checked)
        self.checkpoint = fit.checkpoint
        self.checkpoint.record_run(self.run_config, self.bookkeeping)

    def before_validate(self) -> None:
        log_dir = Path(self.trainer.log_dir)
        if log_dir.is_dir() and any(log_dir.iterdir()):  # the CSV logger would replace its files
            raise errors.UsageError(
                f"{log_dir} holds files already (a training run's?); validate logs into a new "
                "folder: leave --trainer.logger.init_args.version out"
            )
        read_weights_only(self.config_init.validate)
        hand_over_checked(self.trainer.strategy, self.checked)

    def trainer_run_config(self) -> dict[str, Any]:
        """The run's configuration, keyed as the other runners key it (resume.settle_config)."""
        trainer = self.trainer
        config = settings_of(self.config.fit)
        return config | {"precision": str(trainer.precision), "world_size": trainer.world_size}

    def after_fit(self) -> None:
        trainer, checkpoint = self.trainer, self.checkpoint
        if checkpoint.resumed_position is not None and not checkpoint.resume_reported:
            # Resumed from the run's last checkpoint: the Trainer trained nothing, and its CSV
            # logger has emptied metrics.csv. Say so, and write the logged epochs back.
            checkpoint.report_resume(trainer, self.model)
            for logger in trainer.loggers:
                logger.save()
        run_dir = Path(trainer.log_dir)  # a collective under DDP: every rank must ask
        # The LightningModule's own state_dict (its keys, no framework prefix), gathered whole
        # under FSDP2: a collective, every rank takes part.
        model_state = sharded.full_state_dict(self.model)
        if trainer.is_global_zero:
            self.save_run(run_dir, model_state)
        trainer.strategy.barrier()  # every rank waits for rank 0's files
        # The Trainer leaves a gloo group to the interpreter's exit: one more barrier keeps
        # gloo's workers from freeing tensors as it ends (see torch_runtime).
        torch_runtime.settle_gloo_workers()

    def save_run(self, run_dir: Path, model_state: dict[str, torch.Tensor]) -> None:
        trainer, module = self.trainer, self.model
        per_device, global_batch = self.batch_sizes()
        record = records.RunRecord(
            runner="lightning",
            world_size=trainer.world_size,
            device=module.device.type,
            precision=str(trainer.precision),
            seed=self.config.fit.seed_everything,
            global_batch_size=global_batch,
            per_device_batch_size=per_device,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            optimizer_steps=trainer.global_step,
            wall_clock_s=time.perf_counter() - self.checkpoint.train_start,
            config=self.run_config,
            epochs=self.bookkeeping.history,
            state_bytes_per_process=records.state_bytes(module.parameters(), trainer.optimizers[0]),
        )
        records.save_run(run_dir, record, model_state)

    def batch_sizes(self) -> tuple[int, int]:
        """(per device, global) batch: the task's data splits its global batch; a user's data
        module gives the per-device batch its training loader has."""
        data, trainer = self.datamodule, self.trainer
        if trainer_classes.is_task(self.config.fit, "data"):
            return data.micro_batch_size, data.hparams.batch_size
        per_device = getattr(trainer.train_dataloader, "batch_size", None) or 0
        return per_device, per_device * trainer.world_size * trainer.accumulate_grad_batches
