"""Precision, gradient accumulation and sharded strategies: the same meaning in every runner.

- bf16-mixed: the four runners equal the bf16 replay of their arithmetic bit for bit
  (fourways/parity.py), record the precision, and differ from fp32 (so they really computed in
  bf16).
- Accumulation: K micro-batches per optimizer step equal the replay of that arithmetic, on one
  process (2 x 16) and on two (2 processes x 2 micro-batches x 8, sharded by Accelerate,
  interleaved by the others); test_parity.py shows in float64 that it is the 1 x 32 training.
- Refusals: fp16 on a CPU, DeepSpeed / FSDP1 without CUDA and a missing deepspeed package end
  before training with exit status 2, one "error: ..." line and no `model.pt`.

Every run is a subprocess of a real entry point. Independent single-process runs go two at a
time (one thread each, on two cores); two-process runs go one at a time.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    PYTHON,
    ROOT,
    RUNNERS,
    Runner,
    assert_equals_replay,
    free_port,
    in_parallel,
    in_process,
    load_metrics,
    load_weights,
    max_abs_diff,
    reference,
    run,
    run_env,
    shared_runs,
    train_all,
    without_cuda,
)  # fmt: skip

from fourways import parity
from fourways.workarounds import torch_runtime

PRECISION_OPTION: dict[str, Callable[[str], list[str]]] = {
    "torch": lambda p: ["--precision", p],
    "fabric": lambda p: ["--precision", p],
    "lightning": lambda p: ["--trainer.precision", p],
    "accelerate": lambda p: ["--mixed-precision", {"32-true": "no", "bf16-mixed": "bf16",
                                                   "16-mixed": "fp16"}[p]],
}  # fmt: skip
ACCUMULATE_OPTION: dict[str, Callable[[int], list[str]]] = {
    "torch": lambda k: ["--accumulate", str(k)],
    "fabric": lambda k: ["--accumulate", str(k)],
    "lightning": lambda k: ["--trainer.accumulate_grad_batches", str(k)],
    "accelerate": lambda k: ["--accumulate", str(k)],
}


# ---------------------------------------------------------------------------------------------
# bf16-mixed
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bf16_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    bf16 = lambda name: PRECISION_OPTION[name]("bf16-mixed")  # noqa: E731
    root = shared_runs(tmp_path_factory, "bf16", lambda root: train_all(root, 1, bf16))
    return {r.name: root / r.name for r in RUNNERS}


@pytest.mark.slow
def test_bf16_runners_equal_the_bf16_replay(bf16_runs: dict[str, Path]) -> None:
    for name, run_dir in bf16_runs.items():
        assert load_metrics(run_dir)["precision"] == "bf16-mixed", name
        assert_equals_replay(name, run_dir, parity.Setup(precision="bf16-mixed"))


@pytest.mark.slow
def test_bf16_runs_really_computed_in_bf16(bf16_runs: dict[str, Path]) -> None:
    fp32 = reference(parity.Setup())  # measured 2.1e-3 away from the bf16 runs
    for name, run_dir in bf16_runs.items():
        diff = max_abs_diff(load_weights(run_dir), fp32)
        assert diff > parity.BF16_MIN_DIFF_FROM_FP32, f"{name}: fp32 bit for bit, not bf16"


# ---------------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------------
def accumulate_two(name: str) -> list[str]:
    return ACCUMULATE_OPTION[name](2)


@pytest.fixture(scope="session")
def accumulation_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every runner with 2 micro-batches of 16 per step on one process."""
    return shared_runs(tmp_path_factory, "accumulate1", lambda r: train_all(r, 1, accumulate_two))


@pytest.fixture(scope="session")
def accumulation_2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every runner with 2 micro-batches of 8 per step on each of two processes."""
    return shared_runs(tmp_path_factory, "accumulate2", lambda r: train_all(r, 2, accumulate_two))


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_accumulation_equals_the_replay_of_its_grouping(
    processes: int, request: pytest.FixtureRequest
) -> None:
    root = request.getfixturevalue(f"accumulation_{processes}")
    for runner in RUNNERS:
        run_dir = root / runner.name
        metrics = load_metrics(run_dir)
        assert metrics["world_size"] == processes, runner.name
        assert metrics["accumulate_grad_batches"] == 2, runner.name
        assert metrics["global_batch_size"] == 32, runner.name
        assert metrics["per_device_batch_size"] == 32 // (processes * 2), runner.name
        assert metrics["optimizer_steps"] == 5 * 800 // 32, runner.name
        grouping = parity.grouping_of(runner.name, processes)
        setup = parity.Setup(processes=processes, accumulate=2, grouping=grouping)
        assert_equals_replay(runner.name, run_dir, setup)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------
def lightning_cmd(run_dir: Path, args: Sequence[str]) -> list[str]:
    """The Trainer writing into run_dir, with the accelerator and strategy a config file sets."""
    logger = "--trainer.logger.init_args."
    return [PYTHON, "lightning_module.py", "fit", *args, f"{logger}save_dir", str(run_dir.parent),
            f"{logger}name", "", f"{logger}version", run_dir.name]  # fmt: skip


def accelerate_launch(run_dir: Path, launch_args: Sequence[str]) -> list[str]:
    return [PYTHON, "-m", "accelerate.commands.launch", *launch_args,
            f"--main_process_port={free_port()}", "accelerate_train.py",
            "--run-dir", str(run_dir)]  # fmt: skip


def trainer(*args: str) -> Callable[[Path], list[str]]:
    return lambda d: Runner("lightning").command(d, 1, args)


def trainer_config(name: str) -> Callable[[Path], list[str]]:
    return lambda d: lightning_cmd(d, ["--config", f"configs/lightning/{name}.yaml"])


# Cases refused only for want of a CUDA GPU (their commands do not ask for the CPU): skipped,
# and not run, on a machine that has one.
CUDA_ONLY = {"deepspeed-nocuda-fabric", "config-lightning-fsdp", "config-lightning-deepspeed_zero2",
             "config-lightning-deepspeed_zero3", "launch-fp16", "launch-fsdp-config"}  # fmt: skip


def cases(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=[without_cuda] if n in CUDA_ONLY else []) for n in names]


# id: (command builder, words the one line must hold, importable deepspeed stand-in)
DIRECT_REFUSALS: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...], bool]] = {
    **{
        f"fp16-{r.name}": (
            lambda d, r=r: r.command(d, 1, PRECISION_OPTION[r.name]("16-mixed")),
            ("16", "CUDA"),
            False,
        )
        for r in RUNNERS
    },
    # FSDP2 shards over processes: one process is refused (it trains on CPUs: test_fsdp.py).
    "fsdp2-torch-one-process": (lambda d: Runner("torch").command(d, 1, ["--strategy", "fsdp2"]),
                                ("fsdp2", "torchrun"), False),
    "fsdp2-fabric-auto-devices": (
        lambda d: [PYTHON, "fabric_train.py", "--strategy", "fsdp2", "--run-dir", str(d)],
        ("fsdp2", "--devices N"), False),
    "fsdp-fabric": (lambda d: Runner("fabric").command(d, 1, ["--strategy", "fsdp"]),
                    ("fsdp", "CUDA"), False),
    "fsdp-lightning": (trainer("--trainer.strategy", "fsdp"), ("fsdp", "CUDA"), False),
    "deepspeed-missing-fabric": (
        lambda d: Runner("fabric").command(d, 1, ["--strategy", "deepspeed_stage_2"]),
        ("deepspeed", "pip install"), False),
    "deepspeed-missing-lightning": (trainer("--trainer.strategy", "deepspeed_stage_3"),
                                    ("deepspeed", "pip install"), False),
    # deepspeed installed (a stand-in on PYTHONPATH) but no CUDA: refused for the CUDA.
    "deepspeed-nocuda-fabric": (
        lambda d: [PYTHON, "fabric_train.py", "--strategy", "deepspeed_stage_3", "--run-dir",
                   str(d)],
        ("deepspeed_stage_3", "CUDA"), True),
    # The shipped configs ask for GPUs: which check speaks first (no GPU, no deepspeed, strategy
    # needs CUDA) is the runner's choice; the contract's form is what is checked.
    "config-lightning-fsdp": (trainer_config("fsdp"), (), False),
    "config-lightning-deepspeed_zero2": (trainer_config("deepspeed_zero2"), (), False),
    "config-lightning-deepspeed_zero3": (trainer_config("deepspeed_zero3"), (), False),
}  # fmt: skip


def direct_cases() -> list[object]:
    """The in-process refusals join the fast subset; the one that needs its own process not."""
    slow = {case for case, (_, _, stub_deepspeed) in DIRECT_REFUSALS.items() if stub_deepspeed}
    return [
        pytest.param(n, marks=[without_cuda] * (n in CUDA_ONLY) + [pytest.mark.slow] * (n in slow))
        for n in DIRECT_REFUSALS
    ]


# Under `accelerate launch` the script still refuses with its one line, but the launcher turns
# exit status 2 into its own 1 and adds its own traceback (subprocess.CalledProcessError, or torch
# elastic's ChildFailedError): the contract holds for `python accelerate_train.py` only.
LAUNCH_REFUSALS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "launch-fp16": (["--mixed_precision", "fp16"], ("fp16", "CUDA")),
    "launch-fsdp-config": (["--config_file", "configs/accelerate/fsdp.json"], ("fsdp", "CUDA")),
}
# Without the deepspeed package, `accelerate launch` with a DeepSpeed config fails in the
# launcher itself (ImportError, exit 1), before the script starts: nothing to refuse. (The ZeRO-3
# config takes the very same path.)
LAUNCHER_FAILURES = {
    "launch-deepspeed_zero2-config": ["--config_file", "configs/accelerate/deepspeed_zero2.json"],
}


Refusal = tuple[Path, subprocess.CompletedProcess[str]]


def make_refusals(root: Path) -> None:
    """Every refusal case once, two at a time; each result kept beside its run folder."""
    stub = root / "stub"
    (stub / "deepspeed").mkdir(parents=True)
    (stub / "deepspeed" / "__init__.py").write_text('"""Importable: the package check passes."""\n')
    stubbed = run_env(MASTER_PORT=str(free_port()), PYTHONPATH=str(stub))
    jobs = {}
    for case, (command, _, stub_deepspeed) in DIRECT_REFUSALS.items():
        if stub_deepspeed:  # the others run in-process (test_refused_with_one_line...)
            jobs[case] = partial(run, command(root / case), stubbed)
    for case, (launch_args, _) in LAUNCH_REFUSALS.items():
        jobs[case] = partial(run, accelerate_launch(root / case, launch_args))
    for case, launch_args in LAUNCHER_FAILURES.items():
        jobs[case] = partial(run, accelerate_launch(root / case, launch_args))
    if torch.cuda.is_available():
        jobs = {case: job for case, job in jobs.items() if case not in CUDA_ONLY}
    for case, result in in_parallel(jobs).items():
        saved = {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
        (root / f"{case}.result.json").write_text(json.dumps(saved))


@pytest.fixture(scope="session")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    root = shared_runs(tmp_path_factory, "refusals", make_refusals)
    names = [*DIRECT_REFUSALS, *LAUNCH_REFUSALS, *LAUNCHER_FAILURES]
    results = {}
    for case in names:
        if case in DIRECT_REFUSALS and not DIRECT_REFUSALS[case][2]:  # run in-process instead
            continue
        if not (root / f"{case}.result.json").exists():  # a CUDA-only case on a GPU machine
            continue
        saved = json.loads((root / f"{case}.result.json").read_text())
        results[case] = (root / case, subprocess.CompletedProcess([], **saved))
    return results


def assert_nothing_trained(run_dir: Path) -> None:
    # The Trainer's logger writes into the parent of run_dir: look there too.
    leftovers = list(run_dir.rglob("model.pt")) + list(run_dir.parent.glob("*/model.pt"))
    assert not leftovers, leftovers


@pytest.mark.parametrize("case", direct_cases())
def test_refused_with_one_line_and_exit_status_2(
    case: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, _, stub_deepspeed = DIRECT_REFUSALS[case]
    if stub_deepspeed:  # a stand-in package on PYTHONPATH: in a process of its own
        run_dir, result = request.getfixturevalue("refusals")[case]
    else:  # the runner's main() here: starting Python 12 times would cost minutes
        run_dir = tmp_path / case
        result = in_process(command(run_dir), capsys)
    assert result.returncode == 2, f"exit status {result.returncode}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in DIRECT_REFUSALS[case][1]:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert_nothing_trained(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("case", cases(list(LAUNCH_REFUSALS)))
def test_refused_under_accelerate_launch(case: str, refusals: dict[str, Refusal]) -> None:
    run_dir, result = refusals[case]
    # The script exits 2; the launcher reports any failure of its child as its own 1.
    assert result.returncode == 1, result.returncode
    assert "error: " not in result.stdout, result.stdout  # the refusal is on stderr, first
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for word in LAUNCH_REFUSALS[case][1]:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    assert 'accelerate_train.py", line' not in result.stderr, "the script itself raised"
    assert_nothing_trained(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LAUNCHER_FAILURES))
def test_deepspeed_config_without_the_package_fails_in_accelerate_launch(
    case: str, refusals: dict[str, Refusal]
) -> None:
    run_dir, result = refusals[case]
    assert result.returncode == 1
    assert "DeepSpeed is not installed" in result.stderr, result.stderr
    assert not any(line.startswith("error: ") for line in result.stderr.splitlines())
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "strategy"),
    [("deepspeed_zero2", "deepspeed_stage_2"), ("deepspeed_zero3", "deepspeed_stage_3"),
     ("fsdp", "fsdp")],
)  # fmt: skip
def test_lightning_strategy_configs(name: str, strategy: str) -> None:
    trainer = yaml.safe_load((ROOT / "configs" / "lightning" / f"{name}.yaml").read_text())
    assert trainer == {"trainer": {"accelerator": "gpu", "devices": "auto", "strategy": strategy}}


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_accelerate_strategy_configs_mean_what_the_task_means(name: str) -> None:
    # Loaded by Accelerate's own reader (unknown top-level keys are refused there); the nested
    # keys must be `accelerate launch` options, which it copies silently, known or not.
    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / "configs" / "accelerate" / f"{name}.json"
    config = load_config_from_file(str(path))
    assert json.loads(path.read_text())["num_processes"] == config.num_processes == 1
    assert config.mixed_precision == "no"  # precision is chosen per run, as in the other runners
    options = torch_runtime.accelerate_launch_options()
    if name.startswith("deepspeed"):
        assert config.distributed_type == "DEEPSPEED"
        nested = config.deepspeed_config
        assert nested["zero_stage"] == int(name[-1])
        # Accelerate fills an unset clipping with 1.0; the task clips nothing. Accumulation is
        # left to the script's --accumulate (a value here would silently override it).
        assert nested["gradient_clipping"] == 0
        assert "gradient_accumulation_steps" not in nested
        # ZeRO-3 shards the parameters: gathering them is what makes a full model.pt possible.
        assert nested.get("zero3_save_16bit_model", False) == (name == "deepspeed_zero3")
    else:
        assert config.distributed_type == "FSDP"
        nested = config.fsdp_config
        assert nested["fsdp_version"] == 2
        assert nested["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    unknown = set(nested) - options
    assert not unknown, f"not accelerate launch options: {unknown}"
