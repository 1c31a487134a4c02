"""recording/lifecycle.py: what every host does around one FLUX call."""

from __future__ import annotations

import torch
from torch import nn

from diffract_core.recording import (
    CallContext,
    FeatureRecording,
    PatchedMLP,
    end_call,
    flux_call,
    install,
    publish_call,
    site_patch,
)
from diffract_core.transcoders import Site


def test_a_site_knows_where_its_mlp_is_and_is_a_site_key() -> None:
    site = Site("txt", 7)
    assert site.module_path == "double_blocks.7.txt_mlp" and site.mlp_name == "txt_mlp"
    assert site == ("txt", 7) and {("txt", 7): 1}[site] == 1


def test_publish_fills_the_context_and_end_clears_it() -> None:
    context = CallContext()
    x, text = torch.zeros(4, 16, 5, 7), torch.zeros(4, 9, 8)
    timestep = torch.tensor([0.5, 0.25, 0.5, 0.25])
    # ComfyUI's sigmas hold one per latent; with two chunks they repeat over the batch
    publish_call(context, *flux_call((x,), {"timestep": timestep, "context": text}), 2, chunks=(1, 0),
                 sigmas=torch.tensor([0.5, 0.25]))
    assert context.chunks == (1, 0) and context.sigmas.tolist() == [0.5, 0.25, 0.5, 0.25]
    assert context.image_grid == (3, 4), "odd latent sizes pad to whole patches"
    assert context.text_tokens == 9
    assert (flux_call((x, timestep, text), {})[1] is timestep
            and flux_call((x,), {"timesteps": timestep, "context": text})[1] is timestep)
    end_call(context)
    assert (context.sigmas is None and context.image_grid is None and context.text_tokens is None
            and context.chunks == (0,))


class _Spec:
    """A steering that is only ever compared by identity here."""


def test_site_patch_adds_steering_and_replaces_a_recording() -> None:
    mlp, transcoder, context = nn.Sequential(nn.Linear(2, 2)), object(), CallContext()
    first, second = FeatureRecording(sites=(("img", 0),), k=4), FeatureRecording(sites=(("img", 0),), k=4)
    a, b = _Spec(), _Spec()
    recorded = site_patch(mlp, transcoder, context, mode="replace", recording=first, steering=(a,))
    assert isinstance(recorded, PatchedMLP) and recorded.mlp is mlp and recorded.mode == "replace"
    steered = site_patch(recorded, transcoder, context, steering=(b,))
    assert (steered.recording, steered.mode, steered.steering) == (first, "replace", (a, b)), "steering adds up"
    rerecorded = site_patch(steered, transcoder, context, recording=second)
    assert (rerecorded.recording, rerecorded.mode, rerecorded.steering) == (second, "observe", (a, b))
    assert rerecorded.mlp is mlp, "a patch never wraps a patch"


def test_install_patches_every_site_through_the_hosts_accessors() -> None:
    modules = {"double_blocks.0.img_mlp": nn.Identity(), "double_blocks.2.txt_mlp": nn.Identity()}
    put: dict[str, nn.Module] = {}
    transcoders = {("img", 0): object(), ("txt", 2): object()}
    install(modules.__getitem__, put.__setitem__, transcoders, [("img", 0), ("txt", 2)], CallContext(), mode="observe")  # type: ignore[arg-type]
    assert set(put) == set(modules) and all(put[path].mlp is modules[path] for path in put)
