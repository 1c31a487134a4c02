"""The current process's memory counters from /proc/self/status (Linux), shared by the memory benchmarks."""

from __future__ import annotations

from pathlib import Path


def status_kib(field: str) -> int:
    """A /proc/self/status field in KiB, e.g. VmRSS, VmHWM, RssAnon."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
