"""Helpers that run the real entry points as subprocesses, as a user would type them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler

import task

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TIMEOUT_S = 240


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


@dataclass
class Runner:
    """How to start one runner with N processes, writing into `run_dir`."""

    name: str

    def command(self, run_dir: Path, processes: int = 1, args: Sequence[str] = ()) -> list[str]:
        port = str(free_port())
        if self.name == "torch":
            if processes == 1:
                return [PYTHON, "simple_train.py", "--run-dir", str(run_dir), *args]
            launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
            return [PYTHON, *launcher, f"--master_port={port}", "simple_train.py",
                    "--run-dir", str(run_dir), *args]  # fmt: skip
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


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def load_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="session")
def single_device_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four runners once each with the defaults, shared by the tests that read them."""
    root = tmp_path_factory.mktemp("single")
    dirs = {}
    for runner in RUNNERS:
        dirs[runner.name] = root / runner.name
        result = runner.train(dirs[runner.name])
        (dirs[runner.name] / "console.txt").write_text(result.stdout)
    return dirs


def shared_order(train_set: Sequence, epoch: int) -> list[int]:
    """The runners' order: DistributedSampler's permutation, seeded with seed + epoch."""
    sampler = task.EpochShuffleSampler(train_set, seed=task.SEED)
    sampler.set_epoch(epoch)
    return list(sampler)


def default_shuffle_order(train_set: Sequence, epoch: int) -> list[int]:
    """What `DataLoader(shuffle=True)` does: a RandomSampler seeded from the global RNG."""
    return list(RandomSampler(train_set))


def replay(
    micro_batch: int,
    accumulate: int,
    divide_loss: bool = True,
    order: Callable[[Sequence, int], list[int]] = shared_order,
) -> dict[str, torch.Tensor]:
    """The reference loop in-process (one thread), with K micro-batches per optimizer step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_set, _ = task.split_dataset(task.make_dataset())
        x, y = train_set.tensors
        torch.manual_seed(task.SEED)
        model = task.MLP()
        optimizer = torch.optim.Adam(model.parameters(), lr=task.LEARNING_RATE)
        for epoch in range(task.EPOCHS):
            indices = torch.tensor(order(train_set, epoch))
            for i in range(len(indices) // micro_batch):
                idx = indices[i * micro_batch : (i + 1) * micro_batch]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                (loss / accumulate if divide_loss else loss).backward()
                if (i + 1) % accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad()
        return model.state_dict()
    finally:
        torch.set_num_threads(threads)
