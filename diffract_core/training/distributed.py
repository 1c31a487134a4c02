"""Scale-out on `torch.distributed` (launched with `torchrun`): sites are sharded across ranks, and
the ranks that share a site train it data-parallel.

With W ranks and S sites: if W <= S, rank r trains sites r, r + W, ... alone; if W > S, W must be a
multiple of S and each site gets W / S ranks. Data-parallel ranks read the same global batch (batch
n is a pure function of the seed and n), each computes the gradient of its contiguous slice, and
the slices' gradients are summed, so the update equals one process's on the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import DiffractError
from ..transcoders.transcoder_set import SiteKey


@dataclass
class SiteGroup:
    """The ranks that train one site."""

    ranks: tuple[int, ...]
    rank: int  # this process's global rank
    group: object | None = None  # the process group (None: this process alone)

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def is_leader(self) -> bool:
        return self.rank == self.ranks[0]

    def part(self, rows: int) -> slice:
        """This rank's contiguous slice of a global batch of `rows` rows."""
        index = self.ranks.index(self.rank)
        base, extra = divmod(rows, self.size)
        start = index * base + min(index, extra)
        return slice(start, start + base + (index < extra))

    def all_reduce_(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.broadcast(tensor, src=self.ranks[0], group=self.group)
        return tensor


@dataclass
class DistributedPlan:
    rank: int
    world: int
    groups: dict[SiteKey, SiteGroup]  # the sites this rank trains

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def assign_sites(sites: list[SiteKey], world: int) -> dict[SiteKey, tuple[int, ...]]:
    """Site -> the ranks that train it."""
    if not sites:
        raise DiffractError("no sites to train")
    if world <= len(sites):
        return {site: (index % world,) for index, site in enumerate(sites)}
    if world % len(sites):
        raise DiffractError(
            f"{world} processes cannot share {len(sites)} sites evenly: launch a multiple of {len(sites)} processes "
            f"(torchrun --nproc_per_node), or at most {len(sites)}"
        )
    per_site = world // len(sites)
    return {site: tuple(range(i * per_site, (i + 1) * per_site)) for i, site in enumerate(sites)}


def plan_from_environment(sites: list[SiteKey], backend: str | None = None) -> DistributedPlan:
    """One process unless torchrun's WORLD_SIZE says otherwise; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistributedPlan(0, 1, {site: SiteGroup((0,), 0) for site in sites})
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    rank = dist.get_rank()
    assignment = assign_sites(sites, world)
    groups: dict[SiteKey, SiteGroup] = {}
    for site, ranks in assignment.items():
        # Every rank must take part in creating every group, in the same order.
        group = dist.new_group(list(ranks)) if len(ranks) > 1 else None
        if rank in ranks:
            groups[site] = SiteGroup(ranks, rank, group)
    return DistributedPlan(rank, world, groups)
