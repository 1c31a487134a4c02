"""FeatureRecording's storage: sparse, on the CPU, small enough for a full FLUX run."""

import torch

from diffract_core.recording import FeatureRecording, RecordKey
from diffract_core.transcoders.transcoder import SparseCodes

RELEASED = [(stream, layer) for stream in ("img", "txt") for layer in (*range(16), 18)]


def test_four_steps_at_1024px_with_every_released_site_stay_under_512_mb() -> None:
    """Top-64 codes of 4096 image and 256 text tokens (ComfyUI's minimum T5 length), as the patches add them."""
    sigmas = (1.0, 0.75, 0.5, 0.25, 0.0)
    recording = FeatureRecording(sites=tuple(RELEASED), k=64)
    recording.start_run(sigmas)
    for sigma in sigmas[:-1]:
        for stream, layer in RELEASED:
            tokens = 4096 if stream == "img" else 256
            codes = SparseCodes(
                indices=torch.randint(0, 49152, (1, tokens, 64)), values=torch.rand(1, tokens, 64), d_features=49152
            )
            recording.add(RecordKey(stream, layer, sigma, 0), codes)
    stored = recording.records[RecordKey("img", 3, 0.5, 0)][0]
    assert stored.indices.dtype == torch.int32 and stored.values.dtype == torch.float16
    assert stored.indices.device.type == "cpu"
    assert recording.nbytes < 512 * 2**20
    assert recording.nbytes == 4 * 17 * (4096 + 256) * 64 * 6  # 113.6 MB
