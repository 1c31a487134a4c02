"""The custom socket types the pack's nodes pass between them, and where they sit in the menu."""

from comfy_api.latest import io

CATEGORY = "DifFRACT"

Transcoders = io.Custom("TRANSCODERS")  # diffract_core TranscoderSet
Recording = io.Custom("FEATURE_RECORDING")  # diffract_core FeatureRecording
Circuit = io.Custom("CIRCUIT")  # diffract_core CircuitGraph
FeatureAtlas = io.Custom("FEATURE_ATLAS")  # diffract_core Atlas

AFTER_SAMPLING = "the sampler's output: makes this node run after sampling"
STREAM_CHOICES = ("img+txt", "img", "txt")
CHUNK_CHOICES = {"cond": frozenset({0}), "uncond": frozenset({1}), "cond+uncond": frozenset({0, 1})}


def streams_of(choice: str) -> tuple[str, ...]:
    return tuple(choice.split("+"))
