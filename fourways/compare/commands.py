"""Each run's command line and environment: the runner's real entry point, as its users start it.

The same task in each runner's own flag names, its own launcher for several processes (torchrun,
`accelerate launch`, Fabric's and the Trainer's own), FSDP2 as each runner asks for it, and an
environment with the same thread count for all and the step timer on PYTHONPATH.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from fourways import interrupts, settings
from fourways.compare import yours
from fourways.compare.plans import MINIMAL, Mode, Run
from fourways.contract import arguments

# benchmarks/steptimer/sitecustomize.py, in the run's checkout: it records every optimizer step
STEP_TIMER = Path("benchmarks", "steptimer")
# The settings a minimal loop (minimal/) takes: the task's size; the rest are the task's defaults.
MINIMAL_SIZE = ("epochs", "num_samples", "hidden_dim")


def free_port() -> int:
    """A TCP port free on this machine now: a multi-process run's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_flags(runner: str, mode: Mode, s: settings.Settings) -> list[str]:
    """The same task, in each runner's own flag names (settings.Settings spells them)."""
    if runner == "lightning":
        return [*settings.trainer_flags(s), "--trainer.precision", mode.precision]
    flags = settings.hand_written_flags(s)
    if runner in ("torch", "fabric"):
        flags += ["--precision", mode.precision]
    elif runner == "accelerate":
        flags += ["--mixed-precision", arguments.TO_ACCELERATE[mode.precision]]
    return flags


def run_flags(run: Run) -> list[str]:
    """The run's task flags; with a user's classes, --model/--data and their init arguments in
    their place (yours.py)."""
    if not run.yours:
        return task_flags(run.runner, run.mode, run.settings)
    assert run.model is not None and run.data is not None
    told = yours.without_task_options(run.settings, run.model, run.data)
    n, k = run.mode.processes, run.mode.accumulate
    extra = yours.flags(run.model, run.data, run.settings.global_batch_size, n, k)
    return [*task_flags(run.runner, run.mode, told), *extra]


def command(run: Run) -> tuple[list[str], dict[str, str]]:
    """The runner's real entry point for this mode, and the environment it needs on top."""
    py, n, env = sys.executable, run.mode.processes, {}
    port = str(free_port()) if n > 1 else None
    if run.runner in MINIMAL:
        argv = minimal_command(run, port)
    elif run.runner in ("torch", "raw"):
        flags = run_flags(run)
        script = "simple_train.py" if run.runner == "torch" else "benchmarks/raw_loop.py"
        start = [py, script] if n == 1 else [py, "-m", "torch.distributed.run"]
        if n > 1:
            start += ["--nproc_per_node", str(n), "--master_port", port, script]
        argv = [*start, *flags, "--run-dir", str(run.run_dir)]
        if run.runner == "torch":
            argv[len(start) : len(start)] = ["--device", "cpu"]
    elif run.runner == "fabric":
        flags = run_flags(run)
        argv = [py, "fabric_train.py", "--accelerator", "cpu", "--devices", str(n), *flags]
        argv += ["--run-dir", str(run.run_dir)]
    elif run.runner == "lightning":
        flags = run_flags(run)
        argv = [py, "lightning_module.py", "fit", "--trainer.accelerator", "cpu"]
        argv += ["--trainer.devices", str(n), *(["--trainer.strategy", "ddp"] if n > 1 else [])]
        argv += flags
        root, name, version = run.run_dir.parent.parent, run.run_dir.parent.name, run.run_dir.name
        argv += ["--trainer.logger.init_args.save_dir", str(root)]
        argv += ["--trainer.logger.init_args.name", name]
        argv += ["--trainer.logger.init_args.version", version]
    elif run.runner == "accelerate":
        flags = run_flags(run)
        argv = [py, "accelerate_train.py"]
        if n > 1:
            argv = [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
            argv += [str(n), "--num_machines", "1", "--dynamo_backend", "no"]
            argv += ["--mixed_precision", arguments.TO_ACCELERATE[run.mode.precision]]
            argv += ["--main_process_port", port, "accelerate_train.py"]
        argv += ["--cpu", *flags, "--run-dir", str(run.run_dir)]
    else:
        raise ValueError(run.runner)
    if run.mode.strategy == arguments.FSDP2:
        argv = fsdp2_command(run, argv, port)
    if port and run.runner in ("fabric", "lightning", "min-fabric", "min-lightning"):
        env["MASTER_PORT"] = port
    return [*argv, *run.extra_args], env


def fsdp2_command(run: Run, argv: list[str], port: str | None) -> list[str]:
    """The runner's DDP command, asking for FSDP2 as a user of that runner would."""
    n = str(run.mode.processes)
    if run.runner in ("torch", "fabric"):
        return [*argv, "--strategy", arguments.FSDP2]
    if run.runner == "lightning":  # the config file, sized to the processes
        at = argv.index("--trainer.strategy")
        return [*argv[:at], "--config", "configs/lightning/fsdp2.yaml", "--trainer.devices", n,
                "--trainer.strategy.init_args.data_parallel_size", n, *argv[at + 2 :]]  # fmt: skip
    if run.runner == "accelerate":  # its FSDP2 config: refused on CPUs, shown as such
        script = argv.index("accelerate_train.py")
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  "configs/accelerate/fsdp.json", "--num_processes", n]  # fmt: skip
        return [*launch, "--main_process_port", str(port), *argv[script:]]
    raise ValueError(run.runner)


def minimal_command(run: Run, port: str | None) -> list[str]:
    """A minimal loop (minimal/), launched as its docstring says: the task's size only."""
    s, mode, script, py = run.settings, run.mode, MINIMAL[run.runner], sys.executable
    size = dict.fromkeys(MINIMAL_SIZE, 0)
    if s.replace(**size) != settings.DEFAULTS.replace(**size):
        raise ValueError(f"{run.runner} takes the task's defaults beyond its size: {s}")
    if mode.precision != "32-true" or mode.accumulate != 1:
        raise ValueError(f"{run.runner} trains in fp32 without accumulation only")
    n = mode.processes
    argv = [py, script]
    if run.runner == "min-torch":
        if n > 1:
            argv = [py, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
            argv += ["--master_port", str(port), script]
        argv += ["--device", "cpu"]
    elif run.runner in ("min-fabric", "min-lightning"):
        argv += ["--accelerator", "cpu", "--devices", str(n)]
    elif n > 1:  # min-accelerate
        argv = [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
        argv += ["--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no"]
        argv += ["--main_process_port", str(port), script, "--cpu"]
    else:
        argv += ["--cpu"]
    for key in MINIMAL_SIZE:  # spelled as the hand-written runners spell them
        argv += [settings.BY_KEY[key].flag, str(getattr(s, key))]
    return [*argv, "--save", str(run.run_dir / "model.pt")]


def child_env(run: Run, extra: dict[str, str]) -> dict[str, str]:
    """Our environment without a launcher's variables, plus what every run gets the same."""
    env = {k: v for k, v in os.environ.items() if not is_launch_variable(k)}
    # The step timer, then the checkout itself: a script below its top (minimal/, benchmarks/)
    # imports the checkout's fourways, as the runners at its top do, not an installed copy.
    timer_and_checkout = [str(run.checkout / STEP_TIMER), str(run.checkout)]
    pythonpath = [*timer_and_checkout, *filter(None, [env.get("PYTHONPATH")])]
    env |= {
        "OMP_NUM_THREADS": str(run.threads),  # the same threads for every runner
        "MKL_NUM_THREADS": str(run.threads),
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "COMPARE_STEP_LOG": str(run.log_dir / "steps"),
        "PYTHONUNBUFFERED": "1",  # epoch lines reach the log (and the progress display) at once
        # Inherited by a launcher's ranks too: see fourways/interrupts.py.
        interrupts.MARKER: interrupts.TAG,
    }
    return env | extra


def is_launch_variable(name: str) -> bool:
    """A launcher's variables inherited from our own environment would confuse the children."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return name in names or name.startswith(("ACCELERATE_", "PL_", "TORCHELASTIC_"))
