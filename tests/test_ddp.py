"""Two processes (gloo on CPU) reach the single-device weights, in every runner."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    PYTHON,
    RUNNERS,
    default_shuffle_order,
    free_port,
    load_metrics,
    load_weights,
    max_abs_diff,
    replay,
    run,
    run_env,
)  # fmt: skip


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    dirs = {}
    for runner in RUNNERS:
        dirs[runner.name] = root / runner.name
        result = runner.train(dirs[runner.name], processes=2)
        (dirs[runner.name] / "console.txt").write_text(result.stdout)
    return dirs


def test_two_processes_match_one_device(
    ddp_runs: dict[str, Path], single_device_runs: dict[str, Path]
) -> None:
    for name, run_dir in ddp_runs.items():
        diff = max_abs_diff(load_weights(run_dir), load_weights(single_device_runs[name]))
        assert diff <= 1e-6, f"{name}: 2 x 16 is {diff:.2e} away from 1 x 32"


def test_two_process_runs_agree_with_each_other(ddp_runs: dict[str, Path]) -> None:
    reference = load_weights(ddp_runs["torch"])
    for name in ("lightning", "fabric"):  # DistributedSampler + DDP: the very same arithmetic
        weights = load_weights(ddp_runs[name])
        assert all(torch.equal(weights[k], reference[k]) for k in reference), name
    # Accelerate shards whole batches (rank 0 takes samples 0-15 of each 32): same samples per
    # step, another summation order.
    assert max_abs_diff(load_weights(ddp_runs["accelerate"]), reference) <= 1e-6


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
            # Means over all 800 / 200 samples: equal to one device's up to summation order.
            for key in ("train_loss", "val_loss", "val_acc"):
                assert ours[key] == pytest.approx(ref[key], abs=1e-5), (name, key)


def test_only_rank_zero_prints_epoch_lines(ddp_runs: dict[str, Path]) -> None:
    for name, run_dir in ddp_runs.items():
        text = (run_dir / "console.txt").read_text()
        assert sum(line.startswith("epoch ") for line in text.splitlines()) == 5, name


def test_two_machines_on_loopback_match_one_device(
    tmp_path: Path, single_device_runs: dict[str, Path]
) -> None:
    # torchrun with --nnodes 2 stands in for two machines: one process each, rendezvous on
    # 127.0.0.1, exactly as the README's two-machine commands but with a local address.
    port = str(free_port())
    commands = [
        [PYTHON, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
         "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
         "simple_train.py", "--run-dir", str(tmp_path)]
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
    diff = max_abs_diff(load_weights(tmp_path), load_weights(single_device_runs["torch"]))
    assert diff <= 1e-6


def test_the_check_fails_when_the_data_order_is_left_to_a_default(
    single_device_runs: dict[str, Path],
) -> None:
    # The trap when comparing frameworks: the same seed, another sample order, other weights.
    diff = max_abs_diff(
        replay(32, 1, order=default_shuffle_order), load_weights(single_device_runs["torch"])
    )
    assert diff > 1e-3


def test_accelerate_refuses_two_unconnected_trainings(tmp_path: Path) -> None:
    # A multi-GPU launch on a machine without CUDA, and no --cpu: two separate trainings.
    result = run([PYTHON, "-m", "accelerate.commands.launch", "--config_file",
                  "configs/accelerate/config_multi_gpu.json", f"--main_process_port={free_port()}",
                  "accelerate_train.py", "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.returncode != 0
    assert "did not join one process group" in result.stderr
    assert not (tmp_path / "model.pt").exists()


def test_accelerate_refuses_one_process_where_two_were_asked(tmp_path: Path) -> None:
    result = run([PYTHON, "-m", "accelerate.commands.launch", "--cpu", "--num_processes=2",
                  "accelerate_train.py", "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.returncode != 0
    assert "was asked for 2 processes but started 1" in result.stderr
    assert not (tmp_path / "model.pt").exists()


def test_accelerate_config_files_are_accepted_as_is(tmp_path: Path) -> None:
    result = run([PYTHON, "-m", "accelerate.commands.launch", "--config_file",
                  "configs/accelerate/config.json", "accelerate_train.py", "--epochs", "1",
                  "--run-dir", str(tmp_path)])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert load_metrics(tmp_path)["world_size"] == 1


def test_fabric_run_cli_matches_fabric_launch(tmp_path: Path, ddp_runs: dict[str, Path]) -> None:
    cli = [PYTHON, "-m", "lightning.fabric.cli", "--accelerator=cpu", "--devices=2",
           f"--main-port={free_port()}"]  # fmt: skip
    result = run(
        [*cli, f"--main-port={free_port()}", "fabric_train.py", "--run-dir", str(tmp_path)]
    )
    assert result.returncode == 0, result.stderr
    weights, reference = load_weights(tmp_path), load_weights(ddp_runs["fabric"])
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
