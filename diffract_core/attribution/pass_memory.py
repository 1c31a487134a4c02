"""How many target rows one backward pass of the replacement model can take in the memory that is
free: an estimate before the first pass, and halving when a pass runs out of memory anyway."""

from __future__ import annotations

import os

import torch

from .replacement import ReplacementModel

_HEADROOM = 0.8  # of the free memory, for what the estimate leaves out (allocator slack, fragmentation)


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a pass on `device`: the CUDA device's free memory plus what PyTorch holds
    unused; on the CPU the memory the system can give without swapping (None where it does not say)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return _available_host_bytes()


def _available_host_bytes() -> int | None:
    """Linux's MemAvailable (free pages plus the page cache it can drop; free pages alone would
    count a machine with a warm file cache as full), else the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def rows_that_fit(model: ReplacementModel, most: int, free: int | None) -> int:
    """The most rows, up to `most`, whose pass fits in `_HEADROOM` of `free` bytes (all of `most`
    where the free memory is unknown; at least one)."""
    if free is None:
        return most
    budget = free * _HEADROOM - model.pass_fixed_bytes()
    return max(1, min(most, int(budget // model.pass_bytes_per_row())))
