"""Two processes (gloo on CPU), in every runner: bit for bit the replay of its own arithmetic.

Plain DDP, Fabric and the Trainer interleave each step's 32 samples over the ranks
(DistributedSampler); Accelerate shards them (rank 0 takes samples 0-15). fourways/parity.py replays
each grouping in-process, DDP's gradient combination included, and every run must equal it exactly.
That both groupings are the same training as one device is shown in float64 (test_parity.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    PYTHON,
    RUNNERS,
    assert_equals_replay,
    free_port,
    load_metrics,
    load_weights,
    run,
    run_env,
    shared_runs,
    train_all,
)  # fmt: skip

from fourways import parity

TWO_PROCESSES = {name: parity.Setup(processes=2, grouping=parity.grouping_of(name, 2))
                 for name in (r.name for r in RUNNERS)}  # fmt: skip


@pytest.fixture(scope="session")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = shared_runs(tmp_path_factory, "ddp", lambda root: train_all(root, processes=2))
    return {runner.name: root / runner.name for runner in RUNNERS}


@pytest.mark.slow
def test_two_processes_equal_the_replay_of_their_grouping(ddp_runs: dict[str, Path]) -> None:
    for name, run_dir in ddp_runs.items():
        assert_equals_replay(name, run_dir, TWO_PROCESSES[name])


@pytest.mark.slow
def test_interleaving_runners_agree_bitwise(ddp_runs: dict[str, Path]) -> None:
    reference = load_weights(ddp_runs["torch"])
    for name in ("lightning", "fabric"):  # DistributedSampler + DDP: the very same arithmetic
        weights = load_weights(ddp_runs[name])
        assert all(torch.equal(weights[k], reference[k]) for k in reference), name


@pytest.mark.slow
def test_metrics_cover_every_sample_once(
    ddp_runs: dict[str, Path], single_device_runs: dict[str, Path]
) -> None:
    for name, run_dir in ddp_runs.items():
        metrics = load_metrics(run_dir)
        assert metrics["world_size"] == 2, name
        assert (metrics["global_batch_size"], metrics["per_device_batch_size"]) == (32, 16)
        assert metrics["optimizer_steps"] == 125
        single = load_metrics(single_device_runs[name])["epochs"]
        for ours, ref in zip(metrics["epochs"], single, strict=True):
            # Means over all 800 / 200 samples: one device's, up to summation order
            # (fourways/parity.py).
            for key in ("train_loss", "val_loss", "val_acc"):
                expected = pytest.approx(ref[key], rel=parity.EPOCH_METRIC_REL_TOL)
                assert ours[key] == expected, (name, ours["epoch"], key)


@pytest.mark.slow
def test_only_rank_zero_prints_epoch_lines(ddp_runs: dict[str, Path]) -> None:
    for name, run_dir in ddp_runs.items():
        text = (run_dir / "console.txt").read_text()
        assert sum(line.startswith("epoch ") for line in text.splitlines()) == 5, name


@pytest.mark.slow
def test_two_machines_on_loopback_equal_the_replay(tmp_path: Path) -> None:
    # torchrun with --nnodes 2 stands in for two machines: one process each, rendezvous on
    # 127.0.0.1, exactly as docs/strategies.md's two-machine commands but with a local address.
    port = str(free_port())
    commands = [
        [PYTHON, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
         "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
         "simple_train.py", "--device", "cpu", "--run-dir", str(tmp_path)]
        for rank in (0, 1)
    ]  # fmt: skip
    nodes = [subprocess.Popen(cmd, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd in commands]  # fmt: skip
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert load_metrics(tmp_path)["world_size"] == 2
    assert_equals_replay("torch on 2 nodes", tmp_path, TWO_PROCESSES["torch"])


@pytest.mark.slow
def test_fabric_run_cli_matches_fabric_launch(tmp_path: Path, ddp_runs: dict[str, Path]) -> None:
    cli = [PYTHON, "-m", "lightning.fabric.cli", "--accelerator=cpu", "--devices=2",
           f"--main-port={free_port()}"]  # fmt: skip
    result = run([*cli, "fabric_train.py", "--accelerator", "cpu", "--run-dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    weights, reference = load_weights(tmp_path), load_weights(ddp_runs["fabric"])
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_accelerate_refuses_two_unconnected_trainings(tmp_path: Path) -> None:
    # A multi-GPU launch on a machine without CUDA, and no --cpu: two separate trainings.
    # (On a machine with CUDA GPUs this launch is legitimate: nothing to refuse there.)
    if torch.cuda.is_available():
        pytest.skip("with CUDA GPUs a multi-GPU launch is what the user asked for")
    result = run([PYTHON, "-m", "accelerate.commands.launch", "--config_file",
                  "configs/accelerate/config_multi_gpu.json", f"--main_process_port={free_port()}",
                  "accelerate_train.py", "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.returncode != 0
    assert "did not join one process group" in result.stderr
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.slow
def test_accelerate_refuses_one_process_where_two_were_asked(tmp_path: Path) -> None:
    result = run([PYTHON, "-m", "accelerate.commands.launch", "--cpu", "--num_processes=2",
                  "accelerate_train.py", "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.returncode != 0
    assert "was asked for 2 processes but started 1" in result.stderr
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.slow
def test_accelerate_config_files_are_accepted_as_is(tmp_path: Path) -> None:
    result = run([PYTHON, "-m", "accelerate.commands.launch", "--config_file",
                  "configs/accelerate/config.json", "accelerate_train.py", "--cpu", "--epochs",
                  "1", "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert load_metrics(tmp_path)["world_size"] == 1
