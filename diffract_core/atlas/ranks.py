"""Which batches this process samples: under `torchrun` the prompts' batches are dealt out to the
ranks (batch b to rank b mod W); alone, every batch is this process's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    owns_group: bool = False  # this build initialised the process group (and destroys it when done)

    @classmethod
    def from_environment(cls) -> Ranks:
        """One process unless torchrun's WORLD_SIZE says otherwise; joins (or starts) the process group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1)
        started = not dist.is_initialized()
        if started:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        return cls(dist.get_rank(), world, started)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batches(self, count: int) -> list[int]:
        return list(range(self.rank, count, self.world))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
