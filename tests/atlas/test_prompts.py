"""The atlas's prompt set: deduplication, the tracked words, and the word at each text position."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffract_core.atlas.prompts import OTHER, PAD, PromptSet, read_prompts
from diffract_core.errors import DiffractError


def test_prompts_are_deduplicated_and_words_ranked_by_prompts_containing_them() -> None:
    prompts = PromptSet.from_prompts(["A red circle", "a red  circle", "a blue square", " a red star "], 3)
    assert prompts.prompts == ("A red circle", "a blue square", "a red star")
    assert prompts.vocabulary == ("a", "red", "blue")  # 3, 2, then 1 prompt each: ties alphabetical
    assert prompts.word_presence([1, 2]).tolist() == [[True, False, True], [True, True, False]]
    strings = prompts.token_vocabulary
    assert [strings[i] for i in prompts.token_ids([0], 5)[0]] == ["a", "red", OTHER, PAD, PAD]
    assert prompts.token_strings(1, 2) == ["a", "blue"]


def test_an_empty_prompt_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(DiffractError, match="holds no prompts"):
        read_prompts(empty)
    with pytest.raises(DiffractError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(DiffractError, match="no prompts"):
        PromptSet.from_prompts(["  "], 4)
