"""One test per entry of fourways/workarounds/torch_runtime.py: each fails when the framework
changes the behaviour that the entry works around (then the entry, and perhaps the workaround,
go)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, ROOT, run, run_env
from torch.utils.data import DataLoader, RandomSampler, default_collate

from fourways import task
from fourways.workarounds import torch_runtime


def test_default_collate_hands_a_fetched_batch_back_as_it_is() -> None:
    # The registration (fourways/task.py, at import) is consulted: the very tensors fetched come
    # back, nothing taken apart and stacked again.
    train, _ = task.split_dataset(task.make_dataset(40))
    fetched = train.__getitems__([3, 1, 4, 1])
    collated = default_collate(fetched)
    assert all(a is b for a, b in zip(collated, fetched.tensors, strict=True))
    x, y = next(iter(DataLoader(train, batch_size=4)))  # the DataLoader's own default collate
    assert torch.equal(x, train.tensors[0][:4]) and torch.equal(y, train.tensors[1][:4])


class RecordingSampler(RandomSampler):
    def __init__(self, data_source: object) -> None:
        super().__init__(data_source)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def fabric_loader() -> tuple[object, RecordingSampler]:
    import lightning as L

    train, _ = task.split_dataset(task.make_dataset(40))
    sampler = RecordingSampler(train)
    fabric = L.Fabric(accelerator="cpu", devices=1)
    return fabric.setup_dataloaders(DataLoader(train, batch_size=8, sampler=sampler)), sampler


def test_fabric_overrides_a_samplers_epoch_with_its_own_count() -> None:
    # Why the entry exists: a set_epoch of one's own is overwritten by the loader's count (0).
    loader, sampler = fabric_loader()
    sampler.set_epoch(3)
    next(iter(loader))
    assert sampler.epochs == [3, 0]


def test_a_fabric_loader_starts_at_the_given_epoch() -> None:
    loader, sampler = fabric_loader()
    torch_runtime.start_fabric_loader_at_epoch(loader, 3)
    next(iter(loader))
    next(iter(loader))
    assert sampler.epochs == [3, 4]


def test_accelerate_launch_knows_the_options_read() -> None:
    options = torch_runtime.accelerate_launch_options()
    assert {"num_processes", "config_file", "cpu", "multi_gpu"} <= options


PROBE = """
import json, os
from accelerate import Accelerator
from fourways.workarounds import torch_runtime
print(json.dumps({
    "started": Accelerator(cpu=True).num_processes,
    "requested": torch_runtime.accelerate_requested_processes(),
    "counts": sorted(k for k, v in os.environ.items() if k.startswith("ACCELERATE") and v == "2"),
}))
"""


@pytest.mark.slow
def test_accelerate_launch_cpu_starts_one_process_and_hides_the_count(tmp_path: Path) -> None:
    # Why the entry exists: one process where two were asked, and no count in its environment
    # or its state; the launcher's command line, read through /proc, still says 2.
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE))
    env = run_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = run([PYTHON, "-m", "accelerate.commands.launch", "--cpu", "--num_processes=2",
                  str(probe)], env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines == [{"started": 1, "requested": 2, "counts": []}], result.stdout


def test_torch_marks_a_weights_only_refusal_by_its_message(tmp_path: Path) -> None:
    # A pickled object that is no tensor or plain value: refused, with the text looked for.
    path = tmp_path / "object.pt"
    path.write_bytes(pickle.dumps(Path("x")))
    with pytest.raises(pickle.UnpicklingError) as refused:
        torch.load(path, weights_only=True)
    assert type(refused.value) is pickle.UnpicklingError  # no subclass to catch instead
    assert torch_runtime.is_weights_only_refusal(refused.value)
    # pickle's own error for a cut stream (read by an unpickler of our own) does not carry it.
    with pytest.raises(pickle.UnpicklingError) as damaged:
        pickle.loads(pickle.dumps({"a": [1.0, 2.0]})[:-4])
    assert not torch_runtime.is_weights_only_refusal(damaged.value)


LIGHTNING_EXIT = """
import atexit
import torch.distributed as dist
import lightning as L
# Registered first, so run last: after any handler Lightning registers.
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), dist.get_backend()))
L.Fabric(accelerator="cpu", devices=1, strategy="ddp").launch()
"""


def test_lightning_leaves_a_gloo_group_to_the_interpreters_exit(tmp_path: Path) -> None:
    # The rule the runners follow (process_group_left_to_exit) is Lightning's: it destroys NCCL
    # groups at exit, never gloo's. Should it start destroying gloo's, this fails: follow it.
    script = tmp_path / "fabric_exit.py"
    script.write_text(textwrap.dedent(LIGHTNING_EXIT))
    result = run([PYTHON, str(script)])
    assert result.returncode == 0, result.stderr
    assert "initialized at exit: True gloo" in result.stdout, result.stdout


def test_a_gloo_group_is_left_to_exit_and_no_group_is_not(tmp_path: Path) -> None:
    import torch.distributed as dist

    assert not torch_runtime.process_group_left_to_exit()  # no group: nothing to leave
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert torch_runtime.process_group_left_to_exit()
    finally:
        dist.destroy_process_group()  # one process, no worker left to wait on: safe here


GLOO_BARRIER_HOLDS = """
import json, sys, time, weakref
import torch
import torch.distributed as dist

rank = int(sys.argv[2])
dist.init_process_group("gloo", store=dist.FileStore(sys.argv[1], 2), rank=rank, world_size=2)
if rank == 1:
    time.sleep(1)  # rank 0's all-reduce is still in flight when it issues its barrier
tensor = torch.ones(4)
reduced = dist.all_reduce(tensor, async_op=True)
barrier = dist.barrier(async_op=True)
reduced.wait()
barrier.wait()
tensor_ref = weakref.ref(tensor)
del tensor, reduced
time.sleep(0.5)  # long enough for gloo's workers to drop their own references
held = tensor_ref() is not None
del barrier
deadline = time.monotonic() + 10
while tensor_ref() is not None and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"held_by_barrier": held, "freed_with_barrier": tensor_ref() is None}))
"""


def test_a_gloo_barrier_holds_the_tensors_of_collectives_in_flight(tmp_path: Path) -> None:
    # The reason for settle_gloo_workers: a gloo barrier keeps the collectives in flight when it
    # was issued, tensors and all, until its Work is freed, by whichever thread drops it last.
    # Should torch stop doing so, this fails: the entry (and the runners' last barrier) can go.
    script = tmp_path / "barrier_holds.py"
    script.write_text(GLOO_BARRIER_HOLDS)
    store = str(tmp_path / "store")
    rank_1 = [PYTHON, str(script), store, "1"]
    with subprocess.Popen(rank_1, env=run_env(), cwd=ROOT, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as peer:  # fmt: skip
        try:
            result = run([PYTHON, str(script), store, "0"], timeout=120)
            _, peer_stderr = peer.communicate(timeout=120)
        finally:
            peer.kill()  # nothing left behind, whatever failed (a no-op once it has ended)
    assert peer.returncode == 0, peer_stderr
    assert result.returncode == 0, result.stderr
    last_line = result.stdout.strip().splitlines()[-1]
    assert json.loads(last_line) == {"held_by_barrier": True, "freed_with_barrier": True}
