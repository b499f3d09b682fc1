"""Why a user's model trains otherwise on N processes than on one device, and the fix in each
framework: the catalogue compare.py's diagnosis (diagnosis.py) draws its causes from.

Each cause says what happens, one fix line per framework (the Trainer, Fabric, Accelerate, plain
torch), whether that fix runs on this machine, and what difference remains once it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRAMEWORKS = ("lightning", "fabric", "accelerate", "torch")


@dataclass(frozen=True)
class Cause:
    key: str
    title: str
    why: str
    fixes: dict[str, str]  # framework -> one line
    fix_runs_here: bool
    remains: str  # what differs from one device once fixed ("" if nothing)
    detail: str = field(default="", compare=False)  # what was seen in this model

    def lines(self) -> list[str]:
        """The cause as report lines: what, why, each framework's fix, what remains."""
        head = f"{self.title}" + (f" ({self.detail})" if self.detail else "") + f": {self.why}"
        out = [head]
        out += [f"  fix, {fw}: {self.fixes[fw]}" for fw in FRAMEWORKS if fw in self.fixes]
        runs = "the fix runs here" if self.fix_runs_here else "the fix does NOT run here"
        out.append(f"  {runs}" + (f"; {self.remains}" if self.remains else ""))
        return out


CONVERT = "model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)"

CATALOGUE: dict[str, Cause] = {
    c.key: c
    for c in (
        Cause(
            "batchnorm",
            "BatchNorm under several processes",
            "each process normalises over its own micro-batch (and keeps its own running "
            "statistics; DDP copies rank 0's), where one device normalises over the global batch",
            {
                "lightning": "--trainer.sync_batchnorm true",
                "fabric": f"{CONVERT} before fabric.setup(model, ...)",
                "accelerate": f"{CONVERT} before accelerator.prepare(model, ...)",
                "torch": f"{CONVERT} before DistributedDataParallel(model)",
            },
            fix_runs_here=False,
            remains="SyncBatchNorm needs GPUs in torch 2.13 (on CPU: 'SyncBatchNorm layers only "
            "work with GPU modules'), so on CPUs each process keeps normalising over its own "
            "micro-batch; with accumulation, even SyncBatchNorm normalises each micro-batch "
            "(global batch / accumulation), not the global batch",
        ),
        Cause(
            "rng",
            "Randomness in training_step (torch's global RNG)",
            "each process draws its own masks for its own micro-batch, not one device's; and the "
            "runners reach the first training_step with the stream in other places (the "
            "Trainer re-seeds every DDP process in its setup, after the model is built; Fabric, "
            "Accelerate and plain PyTorch do not), so they draw other masks",
            {
                runner: "seed each process's stream in the module, where every runner calls the "
                "same hook: in on_train_batch_start of the first batch, "
                "torch.manual_seed(seed + rank) (rank: torch.distributed.get_rank()); "
                "examples/batchnorm_dropout.py --model.reseed N does this"
                for runner in ("lightning", "fabric", "accelerate", "torch")
            },
            fix_runs_here=True,
            remains="the runners that group the samples alike then draw the same masks; the "
            "masks stay per process: the same training as one device in distribution, never in "
            "bits (with the randomness off, e.g. --model.dropout 0, this cause is gone)",
        ),
        Cause(
            "sampler",
            "A training sampler of its own",
            "it is neither a RandomSampler, SequentialSampler nor DistributedSampler: the Trainer "
            "replaces it by a DistributedSampler, Fabric keeps its order and interleaves it, "
            "Accelerate deals its whole batches round-robin; the steps see other samples",
            {
                "lightning": "--trainer.use_distributed_sampler false, and in train_dataloader "
                "a sampler that takes num_replicas=trainer.world_size, rank=trainer.global_rank",
                "fabric": "fabric.setup_dataloaders(loader, use_distributed_sampler=False) with "
                "that rank-aware sampler",
                "accelerate": "a rank-aware sampler in the loader, and the loader not passed "
                "to accelerator.prepare",
                "torch": "DataLoader(..., sampler=YourSampler(..., num_replicas=world, "
                "rank=rank)) with every rank's share of each global batch",
            },
            fix_runs_here=True,
            remains="",
        ),
        Cause(
            "shuffle",
            "A shuffle that DDP replaces",
            "on one device a RandomSampler orders each epoch from torch's RNG; under DDP the "
            "Trainer, Fabric and plain DistributedSampler order it by a permutation seeded with "
            "seed + epoch, and Accelerate shards the batches of its own draw: the steps see "
            "other samples",
            {
                fw: "shuffle with a sampler that orders epoch e as DistributedSampler(seed=seed) "
                "does (randperm seeded with seed + e, set_epoch each epoch), e.g. "
                "fourways.task.EpochShuffleSampler"
                for fw in FRAMEWORKS
            },
            fix_runs_here=True,
            remains="",
        ),
        Cause(
            "uneven",
            "An uneven last batch",
            "the training set is not a whole number of global batches: DistributedSampler pads "
            "with repeated samples, Accelerate wraps round to the first batches, one device "
            "takes a short last batch",
            {
                fw: "drop_last=True in the DataModule's train DataLoader (the frameworks pass it "
                "on to their DistributedSampler)"
                for fw in ("lightning", "fabric", "accelerate")
            }
            | {"torch": "DistributedSampler(..., drop_last=True) and DataLoader(drop_last=True)"},
            fix_runs_here=True,
            remains="",
        ),
        Cause(
            "scheduler",
            "A scheduler stepped at another interval",
            "the two runs' learning rates differ from one step on",
            {
                "lightning": 'configure_optimizers returns {"scheduler": s, "interval": "step"} '
                '(or "epoch"): the Trainer honours it',
                **{
                    fw: "scheduler.step() right after optimizer.step() for interval 'step', "
                    "after the epoch's last optimizer step for 'epoch', every 'frequency'"
                    for fw in ("fabric", "accelerate", "torch")
                },
            },
            fix_runs_here=True,
            remains="",
        ),
        Cause(
            "loss",
            "A loss not averaged over the batch",
            "DDP averages the processes' gradients and accumulation divides by the micro-batches, "
            "which keeps one device's gradient only for a mean; a sum's gradient shrinks by "
            "processes x accumulation",
            {
                fw: "reduce the loss with a mean over the batch (e.g. F.cross_entropy(..., "
                "reduction='mean')), or scale a summed loss by the global batch"
                for fw in FRAMEWORKS
            },
            fix_runs_here=True,
            remains="",
        ),
    )
}


def cause(key: str, detail: str = "") -> Cause:
    """The catalogue's cause `key`, with what was seen in this model."""
    from dataclasses import replace

    return replace(CATALOGUE[key], detail=detail)
