"""The custom socket types the pack's nodes pass between them, and where they sit in the menu."""

from comfy_api.latest import io

from ..diffract_core.recording import CHUNK_NAMES

CATEGORY = "DifFRACT"

Transcoders = io.Custom("TRANSCODERS")  # diffract_core TranscoderSet
Recording = io.Custom("FEATURE_RECORDING")  # diffract_core FeatureRecording
Circuit = io.Custom("CIRCUIT")  # diffract_core CircuitGraph
FeatureAtlas = io.Custom("FEATURE_ATLAS")  # diffract_core Atlas

AFTER_SAMPLING = "the sampler's output: makes this node run after sampling"
STREAM_CHOICES = ("img+txt", "img", "txt")
CHUNKS = {name: chunk for chunk, name in CHUNK_NAMES.items()}  # one chunk: "cond" -> 0, "uncond" -> 1
CHUNK_CHOICES = {name: frozenset({chunk}) for name, chunk in CHUNKS.items()}
CHUNK_CHOICES["cond+uncond"] = frozenset(CHUNKS.values())


def streams_of(choice: str) -> tuple[str, ...]:
    return tuple(choice.split("+"))
