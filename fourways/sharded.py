"""FSDP2 (torch's `fully_shard`) for the runners, and a safe read of the sharded checkpoints that
Lightning's `ModelParallelStrategy` writes.

One FSDP in the project: FSDP2, which trains on CPU processes over gloo as on GPUs
(FRAMEWORK_NOTES, checked 2026-12-01). Lightning's `fsdp` strategy (FSDP1) refuses the CPU.

A sharded checkpoint is a folder: torch.distributed.checkpoint (DCP) files for the model and
optimizer (`.metadata`, `__<rank>_0.distcp`), and Lightning's `meta.pt` (everything else, read
with `torch.load(weights_only=True)` when asked). DCP's own reader is not safe on a crafted folder
(torch 2.13, torch/distributed/checkpoint): it reads `.metadata` with a bare `pickle.load` and
the optimizer's non-tensor values (param_groups) with `torch.load(weights_only=False)`; only the
tensors with `weights_only=True`. So before Lightning loads a folder, `read_sharded_checkpoint`
reads every file of it as tensors and plain values only: `.metadata` through an unpickler that
knows DCP's metadata classes and nothing else, each non-tensor item through
`torch.load(weights_only=True)`, and `meta.pt` the same way.
"""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from fourways.contract import checkpoint_io, errors
from fourways.workarounds import torch_runtime

META_FILE = "meta.pt"  # Lightning's name (lightning.fabric.utilities.load._METADATA_FILENAME)
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's


def shard_model(module: torch.nn.Module, device_mesh: DeviceMesh) -> torch.nn.Module:
    """Fabric's `parallelize_fn` for ModelParallelStrategy: the MLP (`module.model`, the
    parameters) sharded over the data-parallel processes, as one FSDP2 unit. The LightningModule
    around it calls `self.model(x)` in its steps, so FSDP2's forward hooks gather the weights."""
    fully_shard(module.model, mesh=device_mesh["data_parallel"])
    return module


# Every global that DCP's `.metadata` pickle names (torch 2.13, listed with pickletools): its
# dataclasses, torch's Size, dtypes, layouts and memory formats, a path. Anything else is
# refused, not constructed.
_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "StorageMeta", "MetadataIndex", "_MEM_FORMAT_ENCODING",
    )
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
      # a layout by its name (torch's own weights_only loader allows it); the checkpoint's path
      ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
      ("collections", "OrderedDict")}  # fmt: skip
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUES):
            return getattr(torch, name)
        refusal = torch_runtime.WEIGHTS_ONLY_REFUSAL  # as torch words it: one refusal for both
        raise pickle.UnpicklingError(f"{refusal}: {module}.{name} is not allowed")


def read_dcp_metadata(folder: Path) -> Metadata:
    """DCP's `.metadata`, with no class outside `_METADATA_CLASSES` constructed."""

    def load(path: Path) -> Metadata:
        with path.open("rb") as file:
            metadata = _MetadataUnpickler(file).load()
        if not isinstance(metadata, Metadata):
            raise ValueError(f"not DCP metadata: {type(metadata).__name__}")
        return metadata

    return checkpoint_io.read_checkpoint_file(
        folder / DCP_METADATA, load, (AttributeError, TypeError)
    )


def check_dcp_items(folder: Path, metadata: Metadata) -> None:
    """Reads each non-tensor item of the DCP files as tensors and plain values only (DCP itself
    would unpickle them with weights_only=False)."""
    for key, item in metadata.state_dict_metadata.items():
        if not isinstance(item, BytesStorageMetadata):
            continue
        info = metadata.storage_data[MetadataIndex(key)]
        path = folder / Path(info.relative_path).name  # never outside the folder

        def load(path: Path, info: Any = info) -> Any:
            with path.open("rb") as file:
                file.seek(info.offset)
                data = file.read(info.length)
            return torch.load(io.BytesIO(data), weights_only=True)

        checkpoint_io.read_checkpoint_file(path, load)


def read_sharded_checkpoint(folder: Path) -> dict[str, Any]:
    """Every file of a ModelParallelStrategy checkpoint folder read as tensors and plain values
    (the tensors themselves DCP reads with weights_only=True); returns `meta.pt`'s contents."""
    if not folder.is_dir():
        raise errors.UsageError(f"no checkpoint to resume from at {folder}")
    check_dcp_items(folder, read_dcp_metadata(folder))
    return checkpoint_io.load_checkpoint(folder / META_FILE)


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint as tensors and plain values: a sharded folder (ModelParallelStrategy)
    read by `read_sharded_checkpoint`, else one file (`checkpoint_io.load_checkpoint`)."""
    return read_sharded_checkpoint(path) if path.is_dir() else checkpoint_io.load_checkpoint(path)


def reshard(module: torch.nn.Module) -> None:
    """Frees the gathered weights after an evaluation pass. FSDP2 keeps the root unit's weights
    gathered after a forward (a backward would use them next); after a no-grad pass nothing
    reshards them, and a checkpoint taken then would find no sharded (DTensor) parameters."""
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def partial_path(path: Path) -> Path:
    """Where a sharded checkpoint is written before `swap_in` makes it `path`."""
    return path.with_name(f".partial_{path.name}")


def swap_in(path: Path) -> None:
    """Rank 0, after every rank has written `partial_path(path)`: it becomes `path`. A kill
    between the two renames leaves the previous checkpoint as `.previous_*`: `recover` puts it
    back, so some complete checkpoint always stands."""
    previous = path.with_name(f".previous_{path.name}")
    shutil.rmtree(previous, ignore_errors=True)
    if path.exists():
        path.rename(previous)
    checkpoint_io.commit_write(partial_path(path), path)  # fault point write-<name>:N before it
    shutil.rmtree(previous, ignore_errors=True)


def recover(path: Path) -> None:
    """Before a resume: the previous complete checkpoint back in place if a kill left none."""
    previous = path.with_name(f".previous_{path.name}")
    if not path.exists() and previous.is_dir():
        previous.rename(path)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """The Trainer's ModelParallelStrategy (lightning 2.6.6), with complete-or-absent checkpoint
    folders: Lightning rewrites a folder in place (DCP shards, then `.metadata`, then `meta.pt`),
    so a kill mid-write could leave new shards beside the old position. Here every rank writes
    into `partial_path`, and rank 0 swaps the folder in once all have written. The same job as
    `AtomicCheckpointIO` for the other strategies, which this one does not use."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        path = Path(self.broadcast(filepath))
        if self.is_global_zero:
            shutil.rmtree(partial_path(path), ignore_errors=True)  # a write cut short by a kill
        self.barrier()
        super().save_checkpoint(checkpoint, partial_path(path), storage_options)
        self.barrier()  # every rank's shard is written
        if self.is_global_zero:
            swap_in(path)


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole `state_dict` for model.pt: gathered from every rank under FSDP2 (a
    collective: every rank must call it), the module's own otherwise."""
    if not any(isinstance(unit, FSDPModule) for unit in module.modules()):
        return module.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)
