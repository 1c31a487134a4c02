"""One batch of an atlas build: its prompts sampled with every atlas site recorded, and the final
images (when the model has a decoder) at preview size.

Batches are fixed by the prompt set (batch b holds prompts b * size ... (b + 1) * size - 1) and each
prompt's noise by its text and the seed (`harvest.prompt_noise`), so a batch gives the same codes
whichever process samples it and whatever came before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..flux.model import Flux
from ..flux.sampling import euler_sample, flux_sigmas
from ..recording import COND, FeatureRecording, patch_reference_model
from ..training.config_file import ModelSpec
from ..training.harvest import prompt_noise
from ..training.prompts import PromptEncoder
from ..transcoders.transcoder_set import SiteKey, TranscoderSet
from .memory import release_freed_memory
from .settings import AtlasSettings
from .statistics import SiteCall, sigma_bucket

ImageDecoder = Callable[[torch.Tensor], torch.Tensor]  # final latents [B, C, h, w] -> images [B, 3, H, W] in [0, 1]


def batch_count(prompts: int, settings: AtlasSettings) -> int:
    return -(-prompts // settings.sampling.prompts_per_call)


def batch_prompt_ids(batch: int, prompts: int, settings: AtlasSettings) -> list[int]:
    size = settings.sampling.prompts_per_call
    return list(range(batch * size, min((batch + 1) * size, prompts)))


def decoder_for(model: ModelSpec) -> ImageDecoder | None:
    """The toy's exact latent-to-image map; other models of the library have no image decoder."""
    if model.kind != "toy":
        return None
    from ..toy import codec

    return codec.decode


@torch.no_grad()
def sample_recorded(
    model: Flux,
    encoder: PromptEncoder,
    transcoders: TranscoderSet,
    prompts: Sequence[str],
    sites: Sequence[SiteKey],
    settings: AtlasSettings,
    decode: ImageDecoder | None,
) -> tuple[FeatureRecording, torch.Tensor | None]:
    """The recording of `prompts` sampled together, and their final images as uint8 [B, 3, H, W]."""
    sampling = settings.sampling
    parameters = next(model.parameters())
    height, width = sampling.latent_size
    shape = (model.config.latent_channels, height, width)
    noise = torch.stack([prompt_noise(prompt, sampling.seed, shape) for prompt in prompts])
    context, pooled = encoder(list(prompts))
    sigmas = flux_sigmas(sampling.steps, sampling.shift)
    recording = FeatureRecording(sites=tuple(sites), k=settings.k)
    recording.start_run(sigmas)
    with patch_reference_model(model, transcoders, sites=sites, recording=recording):
        latents = euler_sample(
            model,
            noise.to(parameters.device),
            context.to(parameters.device, parameters.dtype),
            pooled.to(parameters.device, parameters.dtype),
            sigmas.to(parameters.device),
            guidance=sampling.guidance,
            # Before each model call: the last one's temporaries, freed between the codes the recording
            # keeps, go back to the system (`memory.py`).
            callback=lambda _step, _sigma, _x: release_freed_memory(),
        )
    recording.finish_run()
    if decode is None:
        return recording, None
    return recording, to_preview(decode(latents).float().cpu(), settings.preview_size)


def site_calls(recording: FeatureRecording, site: SiteKey, buckets: int) -> list[SiteCall]:
    """Every recorded (cond) model call at a site, in sampling order, with its step and sigma bucket."""
    keys = sorted((key for key in recording.records if key.site == site and key.chunk == COND), key=lambda k: -k.sigma)
    return [(recording.step_of(key.sigma), sigma_bucket(key.sigma, buckets), codes)
            for key in keys for codes in recording.records[key]]


def preview_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) shrunk so that the longer side is at most `size`."""
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_preview(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [0, 1] as uint8, shrunk (area average) to `preview_shape`."""
    shape = preview_shape(images.shape[-2], images.shape[-1], size)
    if shape != tuple(images.shape[-2:]):
        images = F.interpolate(images, size=shape, mode="area")
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
