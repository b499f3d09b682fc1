"""The minimal four (minimal/): the full plain runner's weights, short and aligned, and their page.

Each script runs once per mode (module fixtures); the tests read those runs.
"""

from __future__ import annotations

import ast
import difflib
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import (
    PYTHON,
    ROOT,
    free_port,
    in_parallel,
    load_weights,
    max_abs_diff,
    reference,
    run,
    run_env,
)

from fourways import parity

MINIMAL = ROOT / "minimal"
# One device, CPU asked for in each framework's own idiom.
ONE_DEVICE = {
    "plain": ["minimal/simple_train.py", "--device", "cpu"],
    "fabric": ["minimal/fabric_train.py", "--accelerator", "cpu"],
    "accelerate": ["minimal/accelerate_train.py", "--cpu"],
    "trainer": ["minimal/lightning_train.py", "--accelerator", "cpu"],
}
ALIGNED = ("fabric_train.py", "accelerate_train.py")  # line for line with simple_train.py
MAX_LINES, MAX_CHANGED = 100, 40
# The project's own modules that a minimal script may import: the task, nothing of the runners.
ALLOWED_IMPORTS = {"argparse", "logging", "os", "warnings", "torch", "lightning", "accelerate",
                   "fourways.task"}  # fmt: skip
QUIET = {"", "Seed set to 42"}  # what Fabric's and Lightning's seed_everything log
PRINTED_RESOLUTION = 1e-4  # the epoch lines' 4 decimals


def two_processes(name: str) -> list[str]:
    """Each framework's own two-process launch (Fabric and the Trainer start their own)."""
    port = f"--master_port={free_port()}"
    if name == "plain":
        return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", port,
                *ONE_DEVICE[name]]  # fmt: skip
    if name == "accelerate":
        return [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
                f"--main_process_port={free_port()}", *ONE_DEVICE[name]]  # fmt: skip
    return [PYTHON, *ONE_DEVICE[name], "--devices", "2"]


def train_all(root: Path, command: dict[str, list[str]], processes: int) -> dict[str, Path]:
    """Runs each script with --save; its weights and console output land under `root`.
    One-process runs go two at a time; a two-process run fills both cores alone."""
    weights = {name: root / f"{name}.pt" for name in command}

    def job(name: str) -> Callable[[], subprocess.CompletedProcess[str]]:
        cmd = [*command[name], "--save", str(weights[name])]
        return lambda: run(cmd, run_env(MASTER_PORT=str(free_port())))

    jobs = {name: job(name) for name in command}
    results = in_parallel(jobs) if processes == 1 else {name: jobs[name]() for name in jobs}
    for name, result in results.items():
        assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
        (root / f"{name}.txt").write_text(result.stdout)
        (root / f"{name}.err.txt").write_text(result.stderr)
    return weights


@pytest.fixture(scope="module")
def one_device_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    commands = {name: [PYTHON, *args] for name, args in ONE_DEVICE.items()}
    return train_all(tmp_path_factory.mktemp("minimal1"), commands, processes=1)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    commands = {name: two_processes(name) for name in ONE_DEVICE}
    return train_all(tmp_path_factory.mktemp("minimal2"), commands, processes=2)


def epoch_metrics(console: Path) -> list[dict[str, float]]:
    """Each `epoch N  name value ...` line a run printed, as {"epoch": N, name: value, ...}."""
    lines = [line.split() for line in console.read_text().splitlines()]
    return [
        {key: float(value) for key, value in zip(words[::2], words[1::2], strict=True)}
        for words in lines
        if words[:1] == ["epoch"]
    ]


def test_one_device_writes_the_full_plain_runners_weights_bitwise(
    one_device_runs: dict[str, Path], single_device_runs: dict[str, Path]
) -> None:
    reference = load_weights(single_device_runs["torch"])
    for name, path in one_device_runs.items():
        weights = parity.as_module_keys(torch.load(path, weights_only=True))
        assert list(weights) == list(reference), f"{name}: keys {list(weights)}"
        assert all(torch.equal(weights[k], reference[k]) for k in reference), name
        assert len(epoch_metrics(path.with_suffix(".txt"))) == 5, name
        # The console is the epoch lines: no framework tips, device banners or warnings.
        console = path.with_suffix(".txt").read_text() + path.with_suffix(".err.txt").read_text()
        lines = console.splitlines()
        noise = [line for line in lines if line not in QUIET and not line.startswith("epoch ")]
        assert not noise, f"{name}: {noise}"


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_their_own_arithmetic(
    two_process_runs: dict[str, Path], single_device_runs: dict[str, Path]
) -> None:
    full_metrics = epoch_metrics(single_device_runs["torch"] / "console.txt")
    for name, path in two_process_runs.items():
        # Bit for bit the replay of this framework's own two-process arithmetic
        # (fourways/parity.py):
        # Accelerate deals whole batches out to the ranks, the others interleave samples.
        grouping = parity.grouping_of("accelerate" if name == "accelerate" else "torch", 2)
        replayed = reference(parity.Setup(processes=2, grouping=grouping))
        weights = parity.as_module_keys(torch.load(path, weights_only=True))
        diff = max_abs_diff(weights, replayed)
        assert parity.bitwise_equal(weights, replayed), f"{name}: {diff:.2e} from the replay"
        # One line per epoch (the main process alone prints) with the full runner's validation
        # metrics on one device: all 200 samples, each once. Printed to 4 decimals, so equal
        # numbers may round 1e-4 apart.
        ours = epoch_metrics(path.with_suffix(".txt"))
        assert len(ours) == len(full_metrics) == 5, f"{name}: {len(ours)} epoch lines"
        for got, want in zip(ours, full_metrics, strict=True):
            for key in ("epoch", "val_loss", "val_acc"):
                assert got[key] == pytest.approx(want[key], abs=PRINTED_RESOLUTION * 1.5), (
                    name, key, got, want,
                )  # fmt: skip


def test_scripts_are_short_and_the_aligned_ones_differ_only_where_the_framework_does() -> None:
    plain = (MINIMAL / "simple_train.py").read_text().splitlines()
    for script in ["simple_train.py", *ALIGNED, "lightning_train.py"]:
        lines = (MINIMAL / script).read_text().splitlines()
        assert len(lines) <= MAX_LINES, f"{script}: {len(lines)} lines"
    for script in ALIGNED:
        other = (MINIMAL / script).read_text().splitlines()
        diff = difflib.unified_diff(plain, other, lineterm="", n=0)
        changed = [d for d in diff if d[:1] in "+-" and d[:3] not in ("+++", "---")]
        assert len(changed) <= MAX_CHANGED, f"{script}: {len(changed)} lines differ from plain"


def test_scripts_import_the_task_and_nothing_of_the_full_runners() -> None:
    for script in ["simple_train.py", *ALIGNED, "lightning_train.py"]:
        tree = ast.parse((MINIMAL / script).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        for node in ast.walk(tree):  # `from fourways import task` imports fourways.task
            if isinstance(node, ast.ImportFrom):
                names |= {f"{node.module}.{a.name}" for a in node.names}
        top_level = {name if name.startswith("fourways.") else name.split(".")[0] for name in names}
        assert "fourways.task" in top_level, script
        assert top_level <= ALLOWED_IMPORTS, f"{script} imports {top_level - ALLOWED_IMPORTS}"


def test_the_page_is_current(tmp_path: Path) -> None:
    page = tmp_path / "side_by_side.html"
    result = run([PYTHON, "minimal/side_by_side.py", "--out", str(page)])
    assert result.returncode == 0, result.stderr
    committed = ROOT / "docs" / "side_by_side.html"
    assert page.read_bytes() == committed.read_bytes(), "run: python minimal/side_by_side.py"


def test_the_page_names_every_concept_for_every_framework() -> None:
    page = (ROOT / "docs" / "side_by_side.html").read_text(encoding="utf-8")
    concepts = re.findall(r'<tr><th>([^<]+)<br><span class="zh">([^<]+)</span></th>', page)
    names = {f"{english} · {chinese}" for english, chinese in concepts}
    assert len(names) == 8, names
    columns = ["plain", "fabric", "accelerate", "trainer"]
    tagged: dict[str, set[str]] = {key: set() for key in columns}
    for key, cell in re.findall(r'<td class="\w+" id="(\w+)-\d+">(.*?)</td>', page):
        tagged[key] |= set(re.findall(r'<span class="tag">([^<]+)</span>', cell))
    for key in columns:
        assert tagged[key] == names, f"{key} lacks {names - tagged[key]}"


def test_the_column_headers_count_only_what_means_something() -> None:
    """Line-aligned columns say how many lines a diff against plain changes; the Trainer's loop
    is its own, so its header gives no such count (it once read "86 lines, 87 changed")."""
    page = (ROOT / "docs" / "side_by_side.html").read_text(encoding="utf-8")
    meta = r'class="meta">(\d+) lines(?:, (\d+) as in plain)?(?:, (\d+) changed)?<'
    metas = re.findall(meta, page)
    assert len(metas) >= 4, metas
    for lines, _, changed in metas:  # a count of changed lines beyond the lines makes no sense
        assert not changed or int(changed) < int(lines), (lines, changed)
    trainer = page.split("minimal/lightning_train.py</code>")[1].split("</th>")[0]
    assert "changed" not in trainer and "as in plain" in trainer, trainer
