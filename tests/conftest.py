"""Helpers that run the real entry points as subprocesses, as a user would type them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

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
