"""A ground truth for trainers: an MLP whose input is a sparse sum of known features.

Each row switches on a few of `n_features` unit input directions with random magnitudes,
x = sum_i c_i a_i (+ a little noise); the MLP is a real two-layer ReLU network whose hidden units
read those directions, h = ReLU(A x - threshold), and writes known output directions scaled by a
function of sigma, y = (1 + sigma / 2) B^T h. A transcoder with enough features can recover it
sparsely (FVU near 0 at an L0 near the number of active features), which makes it a test of the
trainer, not of the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..seeding import seeded_generator
from ..transcoders.transcoder_set import SiteKey
from .shards import ShardWriter, site_folder

SCHNELL_SIGMAS = (1.0, 0.75, 0.5, 0.25)


@dataclass
class SparseDictionaryMLP:
    d_model: int = 64
    n_features: int = 128
    active_per_row: float = 3.0
    threshold: float = 0.5
    noise: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        generator = seeded_generator("synthetic-dictionary", self.seed)
        self.input_atoms = F.normalize(torch.randn(self.n_features, self.d_model, generator=generator), dim=-1)
        self.output_atoms = F.normalize(torch.randn(self.n_features, self.d_model, generator=generator), dim=-1)

    def codes(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        on = torch.rand(rows, self.n_features, generator=generator) < self.active_per_row / self.n_features
        magnitude = 0.5 + 1.5 * torch.rand(rows, self.n_features, generator=generator)
        return on * magnitude

    def mlp(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(x @ self.input_atoms.T - self.threshold)
        return (1 + sigma[:, None] / 2) * (hidden @ self.output_atoms)

    def sample(self, rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, sigma) for `rows` token rows; sigma drawn from schnell's four values."""
        x = (self.codes(rows, generator) @ self.input_atoms
             + self.noise * torch.randn(rows, self.d_model, generator=generator))
        choices = torch.tensor(SCHNELL_SIGMAS)
        sigma = choices[torch.randint(len(choices), (rows,), generator=generator)]
        return x, self.mlp(x, sigma), sigma

    def write(self, root: Path, site: SiteKey, rows: int, *, split: str = "train", rows_per_shard: int = 4096,
              chunk: int = 4096) -> Path:
        """Harvest-format shards of `rows` rows under `root/split/{stream}_{layer}` (fp32)."""
        folder = site_folder(root, split, site)
        writer = ShardWriter(folder, site, self.d_model, rows_per_shard, dtype=torch.float32, seed=self.seed,
                             metadata={"split": split, "model": {"family": "synthetic", "seed": self.seed}})
        generator = seeded_generator("synthetic-rows", self.seed, split, *site)
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x, y, sigma = self.sample(n, generator)
            writer.add(x, y, sigma, torch.zeros(n, dtype=torch.int32), 0)
        writer.close()
        return folder
