"""Where no public API does the job: the framework internals the hand-written runners rely on.

Every entry names the versions it was written against (torch 2.13.0, lightning 2.6.6,
accelerate 1.15.0), why no public way exists, and the test (tests/test_workarounds_torch_runtime.py)
that fails when the framework changes that behaviour. Nothing else in the project touches these
internals. It needs torch alone at import: lightning and accelerate are imported where used.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# torch: teaching the DataLoader's default collate a type (torch 2.13.0)
# ---------------------------------------------------------------------------------------------
# The task's datasets fetch a whole batch in one index (`__getitems__`, public) and hand it to
# the collate function as a sequence of samples. `default_collate` would then take it apart and
# stack it again sample by sample: ~150 us a step here, as much as the model's step. torch's
# documented way to teach `default_collate` a type (its docstring, "Option 2") is the map in the
# private module `torch.utils.data._utils.collate`. The public way, `collate_fn=` on every
# DataLoader, would put a data-loading detail into each minimal loop (minimal/) and every runner.


def register_default_collate(sample_type: type, collate: Callable[..., Any]) -> None:
    """Make `default_collate` (every DataLoader's, every framework's) call `collate` for batches
    whose first element is a `sample_type`."""
    from torch.utils.data._utils.collate import default_collate_fn_map

    default_collate_fn_map[sample_type] = collate


# ---------------------------------------------------------------------------------------------
# Lightning Fabric: the epoch of a resumed loader (lightning 2.6.6)
# ---------------------------------------------------------------------------------------------
# Fabric's loader calls `sampler.set_epoch(n)` at every `iter()`, n being how often it was
# iterated, counted from 0 in a private attribute; a `set_epoch` of our own is overwritten. A run
# resumed at epoch E must draw epoch E's order, so the count starts at E. (Public alternatives:
# iterating the loader E times, fetching a batch each, or leaving Fabric's sampler handling.)


def start_fabric_loader_at_epoch(loader: Any, epoch: int) -> None:
    """The next `iter(loader)` of a loader from `fabric.setup_dataloaders` uses epoch `epoch`."""
    loader._num_iter_calls = epoch


# ---------------------------------------------------------------------------------------------
# Accelerate: how many processes `accelerate launch` was asked for (accelerate 1.15.0)
# ---------------------------------------------------------------------------------------------
# `accelerate launch --cpu --num_processes 2` (or a MULTI_CPU config without an MPI hostfile)
# starts ONE process and says nothing; the launcher passes no count to it (no environment
# variable, no public state: `num_processes` is 1). The one record of the request is the
# launcher's command line, our parent process's (Linux /proc), read with Accelerate's own parser.


def accelerate_launch_options() -> set[str]:
    """The option names (argparse dests) that `accelerate launch` accepts."""
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


def accelerate_requested_processes() -> int:
    """The process count that `accelerate launch` was given (flag or config file), else 1."""
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    cmdline = Path(f"/proc/{os.getppid()}/cmdline")
    argv = cmdline.read_bytes().decode().split("\0") if cmdline.exists() else []
    launch = [i for i, arg in enumerate(argv) if arg in ("launch", "accelerate.commands.launch")]
    if not launch:
        return 1
    args, _ = launch_command_parser().parse_known_args(argv[launch[0] + 1 :])
    if args.num_processes is None:
        config_file = args.config_file or default_config_file
        if os.path.isfile(config_file):
            args.num_processes = load_config_from_file(config_file).num_processes
    return args.num_processes or 1


# ---------------------------------------------------------------------------------------------
# torch: a weights-only refusal told from a damaged file (torch 2.13.0)
# ---------------------------------------------------------------------------------------------
# `torch.load(weights_only=True)` raises a plain `pickle.UnpicklingError` for whatever its
# weights-only unpickler will not read (a refused global, a damaged stream too), with a message
# that starts as below; pickle's own errors (a cut stream read by the restricted unpickler in
# fourways/sharded.py, which writes the same words when it refuses) are UnpicklingErrors
# without it. No subclass, attribute or chained cause tells them apart, only the message.
# (`torch.serialization.get_unsafe_globals_in_checkpoint` is public but reads zip files only.)
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


def is_weights_only_refusal(err: pickle.UnpicklingError) -> bool:
    """Whether torch's weights-only unpickler refused the file (rather than found it damaged)."""
    return WEIGHTS_ONLY_REFUSAL in str(err)


# ---------------------------------------------------------------------------------------------
# torch: ending a gloo process group (torch 2.13.0)
# ---------------------------------------------------------------------------------------------
# A gloo collective's Work holds its tensors, and a gloo barrier's Work holds the Work of every
# collective still in flight when it was issued. Whichever thread drops the last reference frees
# them, and a tensor made in Python needs the GIL to be freed. When that thread is one of gloo's
# worker threads (it drops its reference just after the barrier completes), the main thread may
# by then be ending the interpreter: Python 3.11 makes a thread that asks for the GIL then exit,
# through a noexcept frame, so the process aborts ("terminate called without an active
# exception", SIGABRT) after the run's files were written. gdb on such a process: runLoop ->
# ~AsyncBarrierWork -> ~AsyncAllreduceWork -> TensorImpl::decref_pyobject -> take_gil ->
# pthread_exit -> std::terminate. Inside `destroy_process_group` the same worker waits for the GIL
# while the main thread, holding it, joins the workers: the hang measured in an earlier session.
# No public API waits for gloo's workers. So a runner ends with one more barrier and keeps its
# Work until the interpreter's exit: that barrier either waits (without the GIL) for a worker
# still freeing, or holds what the worker would free, and then the main thread frees it at exit.
# Measured 2026-12-01, 2 processes, 50 all-reduces then the end, two launches at once: the
# interpreter's exit aborted 37 of 60 runs, a barrier then exit 18 of 60, a kept barrier (alone,
# or after a barrier as the runners do) 0 of 120; the plain runner in CI aborted in 2 of its
# 2-process runs. Lightning 2.6.6 destroys only NCCL groups (at exit), and
# so do the hand-written runners: a gloo group is left to the interpreter's exit.

_KEPT_TO_EXIT: list[Any] = []  # the last barrier's Work, freed by the main thread at exit


def process_group_left_to_exit() -> bool:
    """Whether this process's default group is gloo's: leave it to the interpreter's exit
    instead of destroying it (call the framework's teardown when this is False)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo"


def settle_gloo_workers() -> None:
    """After a run's last collective: one more barrier, its Work kept until the interpreter's
    exit, so that no gloo worker frees a Python tensor while the interpreter ends (see above).
    Nothing to do without a gloo group."""
    import torch.distributed as dist

    if not process_group_left_to_exit():
        return
    work = dist.barrier(async_op=True)
    work.wait()
    _KEPT_TO_EXIT.append(work)
