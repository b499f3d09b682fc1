"""FSDP2 on CPU processes (gloo): plain PyTorch, Fabric and the Trainer shard the MLP and end
where their DDP runs end, bit for bit; a kill mid-epoch resumes exactly from the sharded
checkpoint; Accelerate, which has no FSDP on CPUs, is refused, judged by what it set up.

Every training run is a real entry point in a subprocess, two processes, small sizes.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import (
    PYTHON,
    ROOT,
    Runner,
    assert_equals_replay,
    free_port,
    in_process,
    load_metrics,
    load_weights,
    run,
    run_env,
    shared_runs,
)  # fmt: skip
from test_resume import RunsCode, checkpoint_args, killed_run, options, plant, resume_args

from fourways import parity, sharded
from fourways.contract import arguments, errors

SHARDED_RUNNERS = ("torch", "fabric", "lightning")
SEEDS = (1, 2)
# 320 samples: 256 training (8 steps of 32 an epoch), 64 validation; 2 epochs = 16 steps.
SIZE = {"num_samples": "320", "epochs": "2"}
# Checkpoints every 7 steps and at each epoch's end (the Trainer: every 7 only): the kill after
# step 15 falls in epoch 2, after the checkpoint at step 14 (epoch 2, batch 6), the newest: the
# resume starts mid-epoch from a sharded checkpoint.
KILL_STEP = 15


def strategy_args(name: str, strategy: str) -> list[str]:
    """How a user asks runner `name` for DDP or FSDP2 on 2 processes."""
    if strategy == "ddp":
        return []  # Runner.command's 2-process default is DDP
    if name == "lightning":  # later on the command line than Runner's --trainer.strategy ddp
        return ["--config", "configs/lightning/fsdp2.yaml"]
    return ["--strategy", arguments.FSDP2]


def train(name: str, run_dir: Path, strategy: str, seed: int) -> None:
    args = [*strategy_args(name, strategy), *options(name, seed=str(seed), **SIZE)]
    result = Runner(name).train(run_dir, 2, args)
    (run_dir / "console.txt").write_text(result.stdout)


@pytest.fixture(scope="session")
def strategy_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<runner>/<strategy>-<seed>: each runner with DDP and FSDP2, 2 processes, 2 seeds."""

    def make(root: Path) -> None:
        for name in SHARDED_RUNNERS:
            for seed in SEEDS:
                for strategy in ("ddp", "fsdp2"):
                    train(name, root / name / f"{strategy}-{seed}", strategy, seed)

    return shared_runs(tmp_path_factory, "fsdp2", make)


def setup_of(seed: int) -> parity.Setup:
    return parity.Setup(num_samples=320, epochs=2, seed=seed, processes=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", SHARDED_RUNNERS)
def test_fsdp2_equals_ddp_and_the_replay(name: str, seed: int, strategy_runs: Path) -> None:
    fsdp, ddp = strategy_runs / name / f"fsdp2-{seed}", strategy_runs / name / f"ddp-{seed}"
    sharded_weights = load_weights(fsdp)
    expected = ["model.hidden.weight", "model.hidden.bias", "model.out.weight", "model.out.bias"]
    assert list(sharded_weights) == expected  # the LightningModule's state_dict
    assert sharded_weights["model.hidden.weight"].shape == (32, 10)  # gathered whole
    assert parity.bitwise_equal(sharded_weights, load_weights(ddp)), (
        f"{name}: {parity.max_abs_diff(sharded_weights, load_weights(ddp)):.2e} from DDP"
    )
    assert_equals_replay(name, fsdp, setup_of(seed))  # interleaved, as DistributedSampler
    metrics = load_metrics(fsdp)
    assert metrics["world_size"] == 2 and metrics["per_device_batch_size"] == 16
    assert metrics["optimizer_steps"] == 16
    for ours, theirs in zip(metrics["epochs"], load_metrics(ddp)["epochs"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):  # the same sums, the same order
            assert ours[key] == theirs[key], (name, ours["epoch"], key)
    if name != "torch":  # Lightning's sharded form: one DCP file per rank, and meta.pt
        folder = fsdp / "checkpoints" / "last.ckpt"
        assert sorted(p.name for p in folder.iterdir()) == [
            ".metadata",
            "__0_0.distcp",
            "__1_0.distcp",
            sharded.META_FILE,
        ]


def resume_alone(runner: Runner, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """Resume a killed FSDP2 run with the resume option alone, after checking that another
    strategy is refused: the strategy is part of the run (the Trainer's lives in its config
    file, not in its checkpoint, so it is given again)."""
    name = runner.name
    if name != "lightning":
        other = ["--strategy", "ddp", *checkpoint_args(name), *resume_args(name)]
        refused = run(runner.command(run_dir, 2, other), run_env(MASTER_PORT=str(free_port())))
        assert refused.returncode != 0, refused.stdout
        assert "error: --strategy ddp contradicts the checkpoint" in refused.stderr, refused.stderr
    resume = [*checkpoint_args(name), *resume_args(name)]  # the strategy: the checkpoint's
    if name == "lightning":
        resume = [*strategy_args(name, "fsdp2"), *resume]
    return runner.train(run_dir, 2, resume)


# The plain runner's kill and resume in the default run; Fabric's and the Trainer's in the deep
# tier (python -m pytest -m deep), with the kills between a sharded checkpoint's renames.
@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [SHARDED_RUNNERS[0], *(pytest.param(n, marks=pytest.mark.deep) for n in SHARDED_RUNNERS[1:])],
)
def test_fsdp2_sigkill_mid_epoch_then_resume_is_exact(
    name: str, tmp_path: Path, strategy_runs: Path
) -> None:
    runner, run_dir, seed = Runner(name), tmp_path / "run", SEEDS[0]
    args = [*strategy_args(name, "fsdp2"), *options(name, seed=str(seed), **SIZE)]
    assert killed_run(runner, run_dir, 2, f"step:{KILL_STEP}", args) != 0
    assert not (run_dir / "model.pt").exists()
    result = resume_alone(runner, run_dir)
    assert "resumed from" in result.stdout and "epoch 2, batch 6, optimizer step 14" in (
        result.stdout
    ), result.stdout
    uninterrupted = strategy_runs / name / f"fsdp2-{seed}"
    assert parity.bitwise_equal(load_weights(run_dir), load_weights(uninterrupted))
    assert_equals_replay(name, run_dir, setup_of(seed))


@pytest.mark.slow
@pytest.mark.deep
@pytest.mark.parametrize(
    ("name", "fault", "resumed_at"),
    [  # Fabric writes at steps 7, 8 (epoch end), 14; the Trainer at steps 7, 14
        ("fabric", "write-last.ckpt:3", "epoch 2, batch 0, optimizer step 8"),
        ("lightning", "write-last.ckpt:2", "epoch 1, batch 7, optimizer step 7"),
    ],
)
def test_a_kill_while_swapping_in_a_sharded_checkpoint_keeps_the_previous_one(
    name: str, fault: str, resumed_at: str, tmp_path: Path, strategy_runs: Path
) -> None:
    runner, run_dir, seed = Runner(name), tmp_path / "run", SEEDS[0]
    args = [*strategy_args(name, "fsdp2"), *options(name, seed=str(seed), **SIZE)]
    assert killed_run(runner, run_dir, 2, fault, args) != 0
    checkpoints = run_dir / "checkpoints"
    # Killed between the renames: the new folder written whole, the old one set aside.
    assert (checkpoints / ".partial_last.ckpt" / ".metadata").exists()
    assert (checkpoints / ".previous_last.ckpt" / sharded.META_FILE).exists()
    assert not (checkpoints / "last.ckpt").exists()
    result = resume_alone(runner, run_dir)
    assert resumed_at in result.stdout, result.stdout
    uninterrupted = strategy_runs / name / f"fsdp2-{seed}"
    assert parity.bitwise_equal(load_weights(run_dir), load_weights(uninterrupted))


# ---------------------------------------------------------------------------------------------
# Accelerate: no FSDP on CPUs, refused by what it set up
# ---------------------------------------------------------------------------------------------
def test_accelerate_fsdp_without_a_gpu_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `accelerate launch` sets from an FSDP config (configs/accelerate/fsdp.json).
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    result = in_process(Runner("accelerate").command(tmp_path / "run"), capsys)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: FSDP was asked for"), result.stderr
    assert "set up NO" in lines[0] and "fsdp2" in lines[0]
    assert not list(tmp_path.rglob("model.pt"))


@pytest.mark.slow
def test_accelerate_would_fall_back_to_ddp_silently_and_is_refused(tmp_path: Path) -> None:
    """An FSDP config with use_cpu and 2 processes: Accelerate 1.15 sets up MULTI_CPU (plain
    DDP) without a word. The runner must refuse, naming what Accelerate set up. Should a later
    Accelerate set up FSDP on CPUs instead, this fails: then it trains, and docs/strategies.md's
    reason no longer holds."""
    config = json.loads((ROOT / "configs/accelerate/fsdp.json").read_text())
    config |= {"use_cpu": True, "num_processes": 2}
    (tmp_path / "fsdp_cpu.json").write_text(json.dumps(config))
    command = [PYTHON, "-m", "accelerate.commands.launch", "--config_file",
               str(tmp_path / "fsdp_cpu.json"), f"--main_process_port={free_port()}",
               "accelerate_train.py", "--cpu", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    result = run(command, run_env())
    assert result.returncode != 0  # the launcher turns the script's 2 into its own 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "FSDP was asked for, but Accelerate set up MULTI_CPU" in errors[0]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints: read as tensors and plain values only
# ---------------------------------------------------------------------------------------------
def write_sharded(folder: Path, extra: object = 0.001) -> None:
    """A ModelParallelStrategy-shaped folder, written by DCP in this one process."""
    state = {"model": {"w": torch.ones(3)}, "optimizer": {"param_groups": [{"lr": extra}]}}
    dcp.save(state, checkpoint_id=folder)
    torch.save({"epoch": 1, "config": {"seed": 1}}, folder / sharded.META_FILE)


def test_a_sharded_checkpoint_reads_as_its_meta(tmp_path: Path) -> None:
    write_sharded(tmp_path / "ckpt")
    assert sharded.read_sharded_checkpoint(tmp_path / "ckpt") == {"epoch": 1, "config": {"seed": 1}}


@pytest.mark.parametrize("where", ["metadata", "item"])
def test_no_sharded_checkpoint_file_can_run_code(where: str, tmp_path: Path) -> None:
    folder, marker = tmp_path / "ckpt", tmp_path / "ran"
    write_sharded(folder, RunsCode(marker) if where == "item" else 0.001)
    assert not marker.exists()  # dcp.save pickled the object without running it
    if where == "metadata":  # DCP's own reader: pickle.load
        plant(folder / sharded.DCP_METADATA, marker)
    with pytest.raises(errors.UsageError, match="more than tensors and plain values"):
        sharded.read_sharded_checkpoint(folder)
    assert not marker.exists()
    if where == "metadata":  # the payload is live: DCP's reader would have run it
        with pytest.raises(Exception):  # noqa: B017 (after it ran, it is no Metadata)
            dcp.FileSystemReader(folder).read_metadata()
        assert marker.exists()


def test_the_trainer_config_is_lightnings_model_parallel_strategy_over_every_process() -> None:
    import yaml
    from lightning.pytorch.strategies import ModelParallelStrategy

    trainer = yaml.safe_load((ROOT / "configs/lightning/fsdp2.yaml").read_text())["trainer"]
    module, name = trainer["strategy"]["class_path"].rsplit(".", 1)
    assert issubclass(getattr(importlib.import_module(module), name), ModelParallelStrategy)
    # Data parallel only, over every process: each holds a shard, none a tensor-parallel slice.
    assert trainer["strategy"]["init_args"] == {
        "data_parallel_size": trainer["devices"],
        "tensor_parallel_size": 1,
    }
    assert "accelerator" not in trainer  # CPUs or GPUs, as --trainer.accelerator says
