"""Data-parallel meta-training on torch.distributed: `torchrun --nproc_per_node=N -m metarun ...`.

Every rank draws the same meta-batch (one random stream, so a resume is exact) and computes the meta-gradients
of its share of the tasks; an all-reduce sums them, so every rank takes the same outer step from the same mean
and the parameters stay identical, as under DistributedDataParallel. Evaluation episodes are shared out the same
way and their scores gathered in order. Rank 0 alone writes. With one process all of this is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from metarun.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> Ranks:
        if dist.is_available() and dist.is_initialized():
            return Ranks(dist.get_rank(), dist.get_world_size())
        return Ranks()

    @property
    def is_main(self) -> bool:
        """Whether this process writes (logs, checkpoints, metrics) and prints."""
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's share of `items`: every `world`-th one from position `rank`."""
        return items[self.rank :: self.world]

    def gather(self, share: list) -> list:
        """Every rank's `share` put back in the order of the list they were taken from."""
        if self.world == 1:
            return share
        shares: list[list] = [[] for _ in range(self.world)]
        dist.all_gather_object(shares, share)
        return [shares[i % self.world][i // self.world] for i in range(sum(map(len, shares)))]

    def sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place (one flat all-reduce)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        for tensor, summed in zip(tensors, flat.split([t.numel() for t in tensors])):
            tensor.copy_(summed.view_as(tensor))

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (all ranks get the same answer)."""
        if self.world == 1:
            return flag
        found = torch.tensor([float(flag)])
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return bool(found.item())

    def from_main(self, value):
        """Rank 0's `value` on every rank (a picklable object)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def copy_from_main(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor with rank 0's, in place."""
        for tensor in tensors if self.world > 1 else ():
            dist.broadcast(tensor.data, src=0)


def start(device_name: str) -> tuple[Ranks, str]:
    """Join the process group when torchrun started this process (gloo on CPU, NCCL on CUDA); returns the ranks and
    this process's device name (`cuda:<local rank>` on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device_name
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device_name = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Ranks.current(), device_name


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_meta_batch(meta_batch_size: int, ranks: Ranks) -> None:
    if meta_batch_size < ranks.world:
        raise UserError(
            f"train.meta_batch_size={meta_batch_size} gives some of the {ranks.world} processes no task; use a "
            f"meta-batch of at least {ranks.world} (a multiple of it keeps every process equally busy), or fewer "
            "processes."
        )
