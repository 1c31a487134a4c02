"""Seeded random generators that draw the same numbers on every machine and rank."""

import hashlib

import torch


def seeded_generator(*parts: object) -> torch.Generator:
    """A generator whose seed is a stable hash of `parts` (the same on every machine and rank)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
