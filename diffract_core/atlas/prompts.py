"""The atlas's prompt set: deduplicated prompts, the words the statistics track, and the word at
each text position.

Both of the library's prompt encoders (the toy's and the hashing encoder) put the i-th word of the
normalised prompt at text position i and pad the rest, so a text token's string is its word (or
PAD). Word statistics track the `vocabulary_size` words that most prompts contain; every other word
counts as OTHER.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiffractError
from ..file_reading import check_readable_file
from ..training.prompts import PromptEncoder, normalise_prompt, read_prompt_file

OTHER, PAD = "<other>", "<pad>"


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[str, ...]
    vocabulary: tuple[str, ...]  # tracked words, those most prompts contain first

    @classmethod
    def from_prompts(cls, prompts: Sequence[str], vocabulary_size: int) -> PromptSet:
        """Deduplicate (a repeated prompt would be sampled from the same noise) and pick the vocabulary."""
        seen: set[str] = set()
        unique = []
        for prompt in prompts:
            key = normalise_prompt(prompt)
            if key and key not in seen:
                seen.add(key)
                unique.append(prompt.strip())
        if not unique:
            raise DiffractError("the atlas has no prompts: give a prompt file with one prompt per line")
        counts = Counter(word for prompt in unique for word in set(normalise_prompt(prompt).split()))
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        return cls(tuple(unique), tuple(ranked[:vocabulary_size]))

    @property
    def token_vocabulary(self) -> tuple[str, ...]:
        """Strings a text token can have: the vocabulary, then OTHER and PAD."""
        return (*self.vocabulary, OTHER, PAD)

    def words(self, index: int) -> list[str]:
        return normalise_prompt(self.prompts[index]).split()

    def token_strings(self, index: int, tokens: int) -> list[str]:
        words = self.words(index)[:tokens]
        return words + [PAD] * (tokens - len(words))

    def word_presence(self, ids: Sequence[int]) -> torch.Tensor:
        """bool [prompts, vocabulary]: which tracked words each prompt contains."""
        position = {word: i for i, word in enumerate(self.vocabulary)}
        presence = torch.zeros(len(ids), len(self.vocabulary), dtype=torch.bool)
        for row, index in enumerate(ids):
            for word in set(self.words(index)):
                if word in position:
                    presence[row, position[word]] = True
        return presence

    def token_ids(self, ids: Sequence[int], tokens: int) -> torch.Tensor:
        """long [prompts, tokens]: each text position's index in `token_vocabulary`."""
        vocabulary = self.token_vocabulary
        position = {word: i for i, word in enumerate(vocabulary)}
        other = len(vocabulary) - 2
        rows = [[position.get(word, other) for word in self.token_strings(index, tokens)] for index in ids]
        return torch.tensor(rows, dtype=torch.long).reshape(len(ids), tokens)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.prompts, self.vocabulary]).encode()).hexdigest()


def read_prompts(path: Path) -> list[str]:
    """A prompt file's prompts (one per line; blank and '#' lines skipped)."""
    try:
        check_readable_file(path, "give a text file with one prompt per line")
        prompts = read_prompt_file(str(path))
    except FileNotFoundError as exc:
        raise DiffractError(f"prompt file {path} does not exist") from exc
    if not prompts:
        raise DiffractError(f"{path} holds no prompts: write one prompt per line ('#' starts a comment)")
    return prompts


def check_prompts(encoder: PromptEncoder, prompts: Sequence[str], batch: int, source: Path | None = None) -> None:
    """Encode every prompt before sampling starts, so that a prompt the encoder refuses stops the
    build at once, named with its line in `source`."""
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start : start + batch])
        try:
            encoder(chunk)
        except DiffractError:
            for prompt in chunk:
                try:
                    encoder([prompt])
                except DiffractError as exc:
                    raise DiffractError(f"{_where(prompt, source)}: {exc}") from exc
            raise


def _where(prompt: str, source: Path | None) -> str:
    if source is None:
        return f"prompt {prompt!r}"
    for number, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() == prompt:
            return f"{source}, line {number}"
    return f"{source}, prompt {prompt!r}"
