"""Helpers that run the real entry points as subprocesses, as a user would type them.

Every command asks for the CPU explicitly, so that the suite computes the same thing on a machine
with GPUs as without. Runs that several tests read are made once per session and shared by the
pytest-xdist workers (`shared_runs`): a session fixture alone would run once per worker.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from torch.utils.data import RandomSampler

import accelerate_train
import fabric_train
import lightning_module
import simple_train
from fourways import parity, task
from fourways.contract import errors

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TIMEOUT_S = 240
# The runners' modules, imported once here, not inside a test: Lightning's log handlers keep the
# stderr they find at import, and a test's captured stderr is closed when the test ends.
SCRIPTS = {
    "simple_train.py": simple_train,
    "fabric_train.py": fabric_train,
    "lightning_module.py": lightning_module,
    "accelerate_train.py": accelerate_train,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_env(**extra: str) -> dict[str, str]:
    # One thread per process: 2 processes on 2 cores, and no oversubscription between them.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env.pop("RANK", None)  # never inherit a launcher's rank from the outside
    return env


def run(
    cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        cwd=ROOT,
        env=env or run_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def in_process(
    command: Sequence[str], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """`python <script> ...` run by calling the script's own `main()` in this process, as its
    `__main__` does (`errors.run_main`): for the refusal matrices, where starting Python for
    every case would be most of the suite's time. Each runner's refusal is also checked once as
    a real subprocess (its exit status and stderr as a shell sees them)."""
    assert command[0] == PYTHON and command[1] in SCRIPTS, command
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = list(command[1:])
    os.chdir(ROOT)
    try:
        errors.run_main(SCRIPTS[command[1]].main)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(cwd)
        reset_accelerate()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(command), code, captured.out, captured.err)


def reset_accelerate() -> None:
    """Accelerate keeps its state in process-wide singletons: the next run starts afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@dataclass
class Runner:
    """How to start one runner with N processes, writing into `run_dir`."""

    name: str

    def command(self, run_dir: Path, processes: int = 1, args: Sequence[str] = ()) -> list[str]:
        port = str(free_port())
        if self.name == "torch":
            script = ["simple_train.py", "--device", "cpu", "--run-dir", str(run_dir), *args]
            if processes == 1:
                return [PYTHON, *script]
            launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
            return [PYTHON, *launcher, f"--master_port={port}", *script]
        if self.name == "fabric":
            return [PYTHON, "fabric_train.py", "--accelerator", "cpu", "--devices",
                    str(processes), "--run-dir", str(run_dir), *args]  # fmt: skip
        if self.name == "lightning":
            logger = "--trainer.logger.init_args."
            ddp = ["--trainer.strategy", "ddp"] if processes > 1 else []
            return [PYTHON, "lightning_module.py", "fit", "--trainer.accelerator", "cpu",
                    "--trainer.devices", str(processes), *ddp,
                    f"{logger}save_dir", str(run_dir.parent), f"{logger}name", "",
                    f"{logger}version", run_dir.name, *args]  # fmt: skip
        if self.name == "accelerate":
            script = ["accelerate_train.py", "--cpu", "--run-dir", str(run_dir), *args]
            if processes == 1:
                return [PYTHON, *script]
            return [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu",
                    f"--num_processes={processes}", "--num_machines=1", "--mixed_precision=no",
                    "--dynamo_backend=no", f"--main_process_port={port}", *script]  # fmt: skip
        raise ValueError(self.name)

    def train(
        self, run_dir: Path, processes: int = 1, args: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        # Fabric and the Trainer start their own processes and read the port from the env.
        result = run(self.command(run_dir, processes, args), run_env(MASTER_PORT=str(free_port())))
        assert result.returncode == 0, f"{self.name} failed:\n{result.stdout}\n{result.stderr}"
        return result


RUNNERS = [Runner("torch"), Runner("lightning"), Runner("fabric"), Runner("accelerate")]

# Refusals that exist because this machine has no CUDA GPU: on a machine with one, the same
# command is a legitimate GPU run, so there is nothing to refuse.
without_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a refusal for machines without a CUDA GPU"
)


# The strategy a hand-written runner records with its run (a resume may not change it); the
# Trainer's lives in its config file and Accelerate's in its launch, neither in the record.
RECORDED_STRATEGY = {"torch": "ddp", "fabric": "auto"}


def task_config(name: str, config: dict) -> dict:
    """A run's recorded configuration less its runner's own strategy (checked to be the
    runner's default): what the four runners record alike."""
    config = dict(config)
    assert config.pop("strategy", None) == RECORDED_STRATEGY.get(name), (name, config)
    return config


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def load_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


max_abs_diff = parity.max_abs_diff


@functools.cache
def reference(setup: parity.Setup) -> dict[str, torch.Tensor]:
    """The in-process replay of a runner's own arithmetic (parity.replay), computed once."""
    return parity.replay(setup)


# model.pt is the LightningModule's state_dict: the task's module holds the MLP as `model`.
TASK_MODULE_PREFIX = "model."


def task_mlp_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The task module's model.pt (model.hidden.weight, ...) keyed as the MLP the replay trains
    (hidden.weight, ...)."""
    return {key.removeprefix(TASK_MODULE_PREFIX): value for key, value in weights.items()}


def assert_equals_replay(name: str, run_dir: Path, setup: parity.Setup) -> None:
    """A run's model.pt must equal, bit for bit, the replay of its runner's own arithmetic."""
    weights, replayed = task_mlp_weights(load_weights(run_dir)), reference(setup)
    diff = max_abs_diff(weights, replayed)
    assert parity.bitwise_equal(weights, replayed), (
        f"{name}: {diff:.2e} from the replay ({setup.grouping}, {setup.processes} process(es), "
        f"{setup.precision}, accumulate {setup.accumulate})"
    )


def in_parallel(jobs: dict[str, Callable[[], subprocess.CompletedProcess[str]]]) -> dict:
    """Run independent single-process jobs two at a time; results keyed like the jobs."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def shared_runs(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder of runs made once per session, even with several pytest-xdist workers.

    The first worker to ask makes it under a lock; the others wait, then read the same folder
    (pytest-xdist's documented pattern for session data). Without xdist it is a plain folder.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = factory.mktemp(name)
        make(folder)
        return folder
    folder = factory.getbasetemp().parent / name  # this session's folder, above the workers'
    with FileLock(f"{folder}.lock"):
        done = folder / ".done"
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder


def train_all(
    root: Path, processes: int = 1, args: Callable[[str], Sequence[str]] = lambda name: ()
) -> None:
    """Every runner into root/<name>, console saved; single processes two at a time."""
    root.mkdir(parents=True, exist_ok=True)

    def job(runner: Runner) -> Callable[[], subprocess.CompletedProcess[str]]:
        return lambda: runner.train(root / runner.name, processes, args(runner.name))

    if processes == 1:
        results = in_parallel({r.name: job(r) for r in RUNNERS})
    else:  # two processes already fill both cores
        results = {r.name: job(r)() for r in RUNNERS}
    for name, result in results.items():
        (root / name / "console.txt").write_text(result.stdout)
        (root / name / "console.err.txt").write_text(result.stderr)


@pytest.fixture(scope="session")
def single_device_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four runners once each with the defaults, shared by the tests that read them."""
    root = shared_runs(tmp_path_factory, "single", train_all)
    return {runner.name: root / runner.name for runner in RUNNERS}


def shared_order(train_set: Sequence, epoch: int, seed: int = task.SEED) -> list[int]:
    """The runners' order: DistributedSampler's permutation, seeded with seed + epoch."""
    return parity.epoch_order(train_set, epoch, seed)


def default_shuffle_order(train_set: Sequence, epoch: int, seed: int = 0) -> list[int]:
    """What `DataLoader(shuffle=True)` does: a RandomSampler seeded from the global RNG."""
    return list(RandomSampler(train_set))


def replay(
    micro_batch: int,
    accumulate: int,
    divide_loss: bool = True,
    order: Callable[[Sequence, int, int], list[int]] = shared_order,
    **setup: object,
) -> dict[str, torch.Tensor]:
    """parity.replay on one process with K micro-batches per step; `setup`: other Setup fields."""
    batch = micro_batch * accumulate
    config = parity.Setup(global_batch_size=batch, accumulate=accumulate, **setup)
    return parity.replay(config, divide_loss=divide_loss, order=order)
