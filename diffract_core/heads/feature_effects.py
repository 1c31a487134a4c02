"""What ablating each head does to one transcoder feature inside one kept model call: the call's
double blocks are replayed from its kept inputs up to the feature's layer, once clean and once per
head with that head's attention output zeroed (at that call only), and the feature's activation is
summed over its stream's tokens. Heads above the feature's layer cannot reach it and are not run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..attribution.blocks import LinearReader, read_plain_linear
from ..attribution.replacement import ReplacementModel
from ..features import FeatureRef, check_features
from ..recording.call_inputs import CallInputs
from ..transcoders.transcoder import Transcoder
from ..transcoders.transcoder_set import TranscoderSet
from .ablation import zero_heads
from .profile import Progress


@dataclass(frozen=True)
class FeatureEffects:
    """`ablated[layer, head]`: the feature's total activation with that head zeroed (NaN for heads
    above the feature's layer); `clean`: the total in the call as it ran."""

    feature: FeatureRef
    clean: float
    ablated: torch.Tensor  # [layers, heads] float64

    @property
    def effect(self) -> torch.Tensor:
        """[layers, heads]: ablated - clean."""
        return self.ablated - self.clean


def _total_activation(transcoder: Transcoder, x: torch.Tensor, sigma: float, index: int) -> float:
    codes = transcoder.feature_activation(x.to(transcoder.device, transcoder.dtype), sigma, [index])
    return float(codes.double().sum())


@torch.no_grad()
def feature_ablation_effects(
    blocks: Sequence[nn.Module],
    transcoders: TranscoderSet,
    call: CallInputs,
    feature: FeatureRef,
    *,
    read_linear: LinearReader = read_plain_linear,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> FeatureEffects:
    """Each head's effect on `feature` in `call` (one image: `CallInputs.row(i)`)."""
    check_features([feature], transcoders)
    transcoder = transcoders[feature.site]
    replay = ReplacementModel(blocks, TranscoderSet({}), call, last_layer=feature.layer, read_linear=read_linear,
                              dtype=dtype, device=device)
    heads = replay.num_heads
    clean = _total_activation(transcoder, replay.mlp_inputs[feature.site], call.sigma, feature.index)
    ablated = torch.full((len(blocks), heads), float("nan"), dtype=torch.float64)
    total = (feature.layer + 1) * heads
    for layer in range(feature.layer + 1):
        for head in range(heads):
            edit: Callable[[int, torch.Tensor], torch.Tensor] = (
                lambda index, attended, layer=layer, head=head:
                zero_heads(attended, [head], heads) if index == layer else attended)
            x = replay.real_forward(attention_edit=edit)[feature.site]
            ablated[layer, head] = _total_activation(transcoder, x, call.sigma, feature.index)
            if progress is not None:
                progress(layer * heads + head + 1, total)
    return FeatureEffects(feature, clean, ablated)
