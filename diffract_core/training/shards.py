"""Activation pairs on disk: per site and split, safetensors shards plus an `index.json`.

A shard holds, per token row: the MLP input `x`, the pre-gate MLP output `y`, the `sigma` of the
model call, and the `prompt` and `step` it came from. The writer fills one preallocated buffer per
site, so the harvest's RAM is fixed up front (`ShardWriter.reserved_bytes`), and shuffles each
buffer before it writes it. The reader streams shuffled batches from memory-mapped shards: each
epoch visits the shards in a seeded order, a few at a time, and permutes the rows of those few
together, so a batch mixes prompts and steps. Batch `n` is a pure function of (seed, n): training
can resume at any step without replaying data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CorruptFileError, DiffractError, OutputExistsError, SettingsError
from ..seeding import seeded_generator
from ..transcoders.config import dtype_from_name, dtype_name
from ..transcoders.transcoder_set import SiteKey

INDEX_FILE = "index.json"
INDEX_FORMAT = "diffract-activations"
SPLITS = ("train", "validation")


def site_dir_name(site: SiteKey) -> str:
    return f"{site[0]}_{site[1]}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


class ShardWriter:
    """Buffers one site's rows in a preallocated buffer of `rows_per_shard` rows and writes a
    shuffled shard each time it fills."""

    def __init__(
        self,
        folder: Path,
        site: SiteKey,
        d_model: int,
        rows_per_shard: int,
        *,
        dtype: torch.dtype = torch.bfloat16,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if rows_per_shard < 1:
            raise SettingsError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.folder, self.site, self.d_model, self.seed = folder, site, d_model, seed
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / INDEX_FILE).exists() or any(folder.glob("shard_*.safetensors")):
            raise OutputExistsError(f"{folder} already holds activation shards; harvest into an empty folder")
        self.x = torch.empty(rows_per_shard, d_model, dtype=dtype)
        self.y = torch.empty(rows_per_shard, d_model, dtype=dtype)
        self.sigma = torch.empty(rows_per_shard, dtype=torch.float32)
        self.prompt = torch.empty(rows_per_shard, dtype=torch.int32)
        self.step = torch.empty(rows_per_shard, dtype=torch.int32)
        self.filled = 0
        self.shards: list[dict[str, Any]] = []
        self.sigmas: set[float] = set()
        self.prompts: set[int] = set()
        self.metadata = dict(metadata or {})

    @staticmethod
    def row_bytes(d_model: int, dtype: torch.dtype) -> int:
        return 2 * d_model * torch.empty((), dtype=dtype).element_size() + 4 + 4 + 4

    @property
    def reserved_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.sigma, self.prompt, self.step))

    def add(self, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, prompt: torch.Tensor, step: int) -> None:
        """Rows [n, d_model] of one model call (any device), with one sigma and prompt id per row."""
        if x.shape != y.shape or x.dim() != 2 or x.shape[1] != self.d_model:
            raise DiffractError(
                f"site {self.site}: expected x and y of shape [rows, {self.d_model}], got {tuple(x.shape)} and "
                f"{tuple(y.shape)}"
            )
        start = 0
        while start < x.shape[0]:
            take = min(x.shape[0] - start, self.x.shape[0] - self.filled)
            rows = slice(self.filled, self.filled + take)
            self.x[rows] = x[start : start + take].to("cpu", self.x.dtype)
            self.y[rows] = y[start : start + take].to("cpu", self.y.dtype)
            self.sigma[rows] = sigma[start : start + take].to("cpu", torch.float32)
            self.prompt[rows] = prompt[start : start + take].to("cpu", torch.int32)
            self.step[rows] = step
            self.filled += take
            start += take
            if self.filled == self.x.shape[0]:
                self.flush()

    def flush(self) -> None:
        if not self.filled:
            return
        n = self.filled
        order = torch.randperm(n, generator=seeded_generator("shard", self.seed, self.site, len(self.shards)))
        name = f"shard_{len(self.shards):05d}.safetensors"
        tensors = {
            "x": self.x[:n][order].contiguous(),
            "y": self.y[:n][order].contiguous(),
            "sigma": self.sigma[:n][order].contiguous(),
            "prompt": self.prompt[:n][order].contiguous(),
            "step": self.step[:n][order].contiguous(),
        }
        temporary = self.folder / f".{name}.tmp"
        save_file(tensors, str(temporary))
        os.replace(temporary, self.folder / name)
        self.sigmas.update(float(s) for s in torch.unique(tensors["sigma"]).tolist())
        self.prompts.update(int(p) for p in torch.unique(tensors["prompt"]).tolist())
        self.shards.append({"file": name, "rows": n})
        self.filled = 0
        self._write_index(complete=False)

    def _write_index(self, complete: bool) -> None:
        _write_json(
            self.folder / INDEX_FILE,
            {
                "format": INDEX_FORMAT,
                "format_version": 1,
                "site": {"stream": self.site[0], "layer": self.site[1]},
                "d_model": self.d_model,
                "dtype": dtype_name(self.x.dtype),
                "rows": sum(shard["rows"] for shard in self.shards),
                "shards": self.shards,
                "sigmas": sorted(self.sigmas, reverse=True),
                "prompt_ids": sorted(self.prompts),
                "complete": complete,  # False while harvesting, and for ever after an interrupted harvest
                **self.metadata,
            },
        )

    def close(self) -> None:
        self.flush()
        if not self.shards:
            raise DiffractError(f"site {self.site} received no rows; nothing was harvested into {self.folder}")
        self._write_index(complete=True)


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # [n, d_model] fp32: MLP input
    y: torch.Tensor  # [n, d_model] fp32: pre-gate MLP output
    sigma: torch.Tensor  # [n] fp32

    def rows(self, part: slice) -> Batch:
        return Batch(self.x[part], self.y[part], self.sigma[part])


class ActivationShards:
    """The shards of one site and split, opened memory-mapped."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        try:
            self.index = json.loads(index_path.read_text())
        except FileNotFoundError as exc:
            raise DiffractError(
                f"{self.folder} holds no {INDEX_FILE}: it is not a harvested activation folder; run "
                "`python -m diffract_core harvest` (or the harvest step of `train`) first"
            ) from exc
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{index_path} is not valid JSON ({exc}); harvest again") from exc
        if self.index.get("format") != INDEX_FORMAT:
            raise CorruptFileError(f"{index_path} is not a {INDEX_FORMAT} index")
        if not self.index.get("complete"):
            raise DiffractError(
                f"{self.folder} holds an unfinished harvest (it was interrupted or is still running); delete "
                f"{self.folder.parent.parent} and harvest again"
            )
        site = self.index["site"]
        self.site: SiteKey = (site["stream"], int(site["layer"]))
        self.d_model = int(self.index["d_model"])
        self.dtype = dtype_from_name(self.index["dtype"])
        self.shard_rows = [int(shard["rows"]) for shard in self.index["shards"]]
        self.rows = sum(self.shard_rows)
        if not self.rows:
            raise DiffractError(f"{self.folder} holds no rows")
        self._handles: dict[int, Any] = {}

    def _open(self, shard: int) -> Any:
        if shard not in self._handles:
            path = self.folder / self.index["shards"][shard]["file"]
            try:
                self._handles[shard] = safe_open(str(path), framework="pt")
            except (SafetensorError, FileNotFoundError, OSError) as exc:
                raise CorruptFileError(f"{path} cannot be read ({exc}); harvest this site again") from exc
        return self._handles[shard]

    def read(self, shard: int, fields: tuple[str, ...] = ("x", "y", "sigma")) -> dict[str, torch.Tensor]:
        handle = self._open(shard)
        out = {name: handle.get_tensor(name) for name in fields}
        if "x" in out and tuple(out["x"].shape) != (self.shard_rows[shard], self.d_model):
            raise CorruptFileError(f"{self.folder}: shard {shard} does not match {INDEX_FILE}; harvest again")
        return out

    def _load(self, shards: list[int], generator: torch.Generator) -> Batch:
        parts = [self.read(shard) for shard in shards]
        x = torch.cat([p["x"] for p in parts])
        order = torch.randperm(x.shape[0], generator=generator)
        return Batch(
            x[order].float(),
            torch.cat([p["y"] for p in parts])[order].float(),
            torch.cat([p["sigma"] for p in parts])[order].float(),
        )

    def batches(self, batch_size: int, *, seed: int, start_step: int = 0, mix_shards: int = 4) -> Iterator[Batch]:
        """Endless shuffled batches; the first one is batch number `start_step`."""
        skip = start_step * batch_size
        epoch, skip = divmod(skip, self.rows)
        pending: list[Batch] = []
        pending_rows = 0
        while True:
            order = torch.randperm(len(self.shard_rows), generator=seeded_generator("epoch", seed, epoch)).tolist()
            for window_index, start in enumerate(range(0, len(order), mix_shards)):
                window = order[start : start + mix_shards]
                window_rows = sum(self.shard_rows[s] for s in window)
                if skip >= window_rows:
                    skip -= window_rows
                    continue
                rows = self._load(window, seeded_generator("window", seed, epoch, window_index))
                rows, skip = rows.rows(slice(skip, None)), 0
                pending.append(rows)
                pending_rows += rows.x.shape[0]
                while pending_rows >= batch_size:
                    merged = _concat(pending)
                    yield merged.rows(slice(0, batch_size))
                    rest = merged.rows(slice(batch_size, None))
                    pending, pending_rows = [rest], rest.x.shape[0]
            epoch += 1

    def sequential(self, chunk_rows: int = 8192) -> Iterator[Batch]:
        """Every row once, in storage order (for evaluation)."""
        for shard in range(len(self.shard_rows)):
            part = self.read(shard)
            for start in range(0, self.shard_rows[shard], chunk_rows):
                rows = slice(start, start + chunk_rows)
                yield Batch(part["x"][rows].float(), part["y"][rows].float(), part["sigma"][rows].float())


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), torch.cat([p.sigma for p in parts]))


def site_folder(root: Path, split: str, site: SiteKey) -> Path:
    return Path(root) / split / site_dir_name(site)


def harvested_sites(root: Path, split: str = "train") -> list[SiteKey]:
    """The sites harvested under `root/split`."""
    base = Path(root) / split
    if not base.is_dir():
        raise DiffractError(f"{base} does not exist: no {split} activations were harvested under {root}")
    return sorted(ActivationShards(folder).site for folder in base.iterdir() if (folder / INDEX_FILE).is_file())
