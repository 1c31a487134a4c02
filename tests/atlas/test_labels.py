"""Auto-labels on synthetic features whose answer is known: by colour, region, prompt word, text
token, steps; "unclear" for features that fire everywhere or too rarely."""

from __future__ import annotations

import pytest
import torch

from diffract_core.atlas.colours import COLOUR_NAMES
from diffract_core.atlas.labels import LabelRule, label_site, regions
from diffract_core.atlas.prompts import PromptSet
from diffract_core.atlas.statistics import BatchContext, Dimensions, SiteStatistics
from diffract_core.atlas.summary import SummaryShape, summarise_site
from diffract_core.transcoders.transcoder import SparseCodes

SCHEDULE = (1.0, 0.75, 0.5, 0.25, 0.0)  # steps 0..3 fall in sigma buckets 3, 2, 1, 0
VOCABULARY = ("a", "circle", "red", "square")
RED, BLACK = COLOUR_NAMES.index("red"), COLOUR_NAMES.index("black")


def image_site(rows: int, **columns: torch.Tensor) -> dict[str, torch.Tensor]:
    """Arrays of `rows` image features: the given columns, neutral values elsewhere."""
    shape = SummaryShape(buckets=4, top_n=2, vocabulary=len(VOCABULARY), words_per_feature=2, cells=4, crops=0)
    arrays = {name: torch.zeros(size, dtype=dtype) for name, (size, dtype) in shape.layout("img", rows).items()}
    arrays["features"] = torch.arange(rows, dtype=torch.int32)
    arrays["tokens"] = torch.full((4,), 100)
    arrays["fired"] = torch.full((rows, 4), 10)
    arrays["prompts_fired"] = torch.full((rows,), 20, dtype=torch.int32)
    colour_base = torch.zeros(len(COLOUR_NAMES))
    colour_base[[BLACK, RED]] = torch.tensor([0.8, 0.2])
    arrays["colour_base"] = colour_base
    arrays["colour_share"] = colour_base.expand(rows, -1).half().clone()
    arrays["cell_base"] = torch.full((16,), 1 / 16)
    arrays["cell_share"] = torch.full((rows, 16), 1 / 16, dtype=torch.float16)
    arrays["word_ids"] = torch.tensor([[0, 1]] * rows, dtype=torch.int16)
    arrays["word_base"] = torch.tensor([0.95, 0.3, 0.2, 0.3])
    arrays["word_share"] = torch.tensor([[0.95, 0.3]] * rows, dtype=torch.float16)
    arrays["word_z"] = torch.zeros(rows, 2, dtype=torch.float16)
    for name, value in columns.items():
        arrays[name] = value.to(arrays[name].dtype)
    return arrays


def test_each_kind_of_attribute_and_the_steps_are_named() -> None:
    rows = 6
    colour_share = torch.tensor([[0.8, 0.2]] * rows)
    colour_share[0] = torch.tensor([0.05, 0.95])  # red
    colour_share[2] = torch.tensor([0.99, 0.01])  # background: black, base 0.8
    full = torch.zeros(rows, len(COLOUR_NAMES))
    full[:, [BLACK, RED]] = colour_share
    left = regions(4)["left half"].float()
    cell_share = torch.full((rows, 16), 1 / 16)
    cell_share[1] = left / left.sum()
    fired = torch.full((rows, 4), 10)
    fired[0] = torch.tensor([0, 0, 5, 10])  # fires at sigma > 0.5: steps 0 and 1
    word_share = torch.tensor([[0.95, 0.3]] * rows)
    word_z = torch.zeros(rows, 2)
    word_share[3], word_z[3] = torch.tensor([1.0, 0.95]), torch.tensor([0.5, 6.0])  # 'circle' in prompt
    prompts_fired = torch.full((rows,), 20)
    prompts_fired[5] = 2
    full[5] = full[0]  # red, but seen in two prompts only
    arrays = image_site(rows, colour_share=full, cell_share=cell_share, fired=fired, word_share=word_share,
                        word_z=word_z, prompts_fired=prompts_fired)
    labels = label_site("img", arrays, vocabulary=VOCABULARY, schedule=SCHEDULE, cells=4)
    assert [label.text for label in labels] == [
        "red (image, steps 0-1)",
        "left half (image, all steps)",
        "black (image, all steps)",
        "'circle' in prompt (image, all steps)",
        "broad (image, all steps)",  # everything at its base rate
        "unclear",  # two prompts are too few to judge
    ]
    assert labels[0].confidence == labels[0].attributes[0].gain == pytest.approx(0.9375, abs=1e-3)  # (0.95 - 0.2) / 0.8
    assert labels[4].confidence == 0.0 and labels[4].attributes == () and labels[4].describes
    assert not labels[5].describes
    assert all(a.kind != "word" or a.value != "a" for label in labels for a in label.attributes)  # base 0.95, z 0.5
    strict = label_site("img", arrays, vocabulary=VOCABULARY, schedule=SCHEDULE, cells=4, rule=LabelRule(min_gain=0.95))
    assert strict[0].text == "broad, leaning red (image, steps 0-1)" and strict[0].confidence == 0.0
    assert strict[2].text == "black (image, all steps)"


def test_labels_from_statistics_of_synthetic_codes() -> None:
    """Feature 0 fires on red tokens, 1 on the left half, 2 everywhere; 3 on the text token 'circle'."""
    generator = torch.Generator().manual_seed(0)
    prompts = PromptSet.from_prompts([f"a red circle number{i}" for i in range(12)], 8)
    grid, tokens = (4, 4), 16
    colours = torch.where(torch.rand(12, tokens, generator=generator) < 0.3, RED, BLACK)
    left = torch.arange(tokens) % 4 < 2
    values = torch.stack([(colours == RED).float(), left.float().expand(12, -1), torch.full((12, tokens), 0.5)], -1)
    indices = torch.tensor([0, 1, 2]).expand(12, tokens, 3)
    context = BatchContext(torch.arange(12), prompts.word_presence(range(12)), None, colours, grid)
    dimensions = Dimensions(4, 4, 3, len(prompts.vocabulary), 4)
    stats = SiteStatistics.empty("img", dimensions)
    codes = SparseCodes(indices=indices.int(), values=values.half(), d_features=4)
    stats.add([(0, 3, codes), (1, 2, codes)], context)
    shape = SummaryShape(4, 3, len(prompts.vocabulary), 2, 4, 0)
    arrays = summarise_site(stats, shape, prior_strength=10.0)
    labels = label_site("img", arrays, vocabulary=prompts.vocabulary, schedule=SCHEDULE, cells=4)
    assert arrays["features"].tolist() == [0, 1, 2]
    assert [label.text for label in labels] == ["red (image, steps 0-1)", "left half (image, steps 0-1)",
                                                  "broad (image, steps 0-1)"]

    text_ids = prompts.token_ids(range(12), 5)  # 'circle' is word 2 of every prompt
    text_values = torch.zeros(12, 5, 1)
    text_values[:, 2] = 1.0
    text = SiteStatistics.empty("txt", dimensions)
    text.add([(0, 3, SparseCodes(indices=torch.full((12, 5, 1), 3, dtype=torch.int32), values=text_values.half(),
                                  d_features=4))], BatchContext(torch.arange(12), context.words, text_ids, None, None))
    text_arrays = summarise_site(text, shape, prior_strength=10.0)
    [label] = label_site("txt", text_arrays, vocabulary=prompts.vocabulary, schedule=SCHEDULE, cells=4)
    assert label.text == "'circle' token (text, step 0)" and label.confidence == 1.0


def test_regions_split_the_cells() -> None:
    named = regions(4)
    assert named["left half"].view(4, 4)[:, :2].all() and not named["left half"].view(4, 4)[:, 2:].any()
    assert named["centre"].view(4, 4)[1:3, 1:3].all() and int(named["centre"].sum()) == 4
    assert torch.equal(named["top-left"], named["top half"] & named["left half"])
