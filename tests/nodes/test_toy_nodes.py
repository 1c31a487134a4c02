"""The toy's loader, text encoder and decoder nodes, through the fake ComfyUI surface: the MODEL
they build samples exactly what the library's toy samples, and Load Transcoders finds the toy's
release without any file copied."""

from __future__ import annotations

import importlib

import pytest
import torch


@pytest.fixture(scope="module")
def toy_nodes(pack):
    return importlib.import_module("diffract_pack.nodes.toy_nodes")


@pytest.fixture(scope="module")
def loaded(toy_nodes):
    import fake_runtime

    return fake_runtime.run_node(toy_nodes.ToyModelLoader).args


@pytest.fixture(scope="module")
def toy(core):
    return importlib.import_module("diffract_pack.diffract_core.toy.embedded").load_toy()


def test_loader_builds_a_comfy_flux_with_the_toys_weights(loaded, toy) -> None:
    model, text_encoder = loaded
    diffusion_model = model.model.diffusion_model
    assert model.model.model_config.unet_config["in_channels"] == 16  # ComfyUI counts channels before patchifying
    for name, tensor in toy.flux.state_dict().items():
        assert torch.equal(diffusion_model.state_dict()[name], tensor), name
    assert sum(p.numel() for p in text_encoder.parameters()) < 200_000  # a small object to pass between nodes


def test_encode_sample_decode_matches_the_library(toy_nodes, loaded, toy, core) -> None:
    import fake_runtime

    model, text_encoder = loaded
    generate = importlib.import_module("diffract_pack.diffract_core.toy.generate")
    prompt = "a yellow circle and a blue square"
    (conditioning,) = fake_runtime.run_node(toy_nodes.ToyTextEncode, text_encoder=text_encoder,
                                            text=f"  {prompt} ").args
    (context, extra), = conditioning
    noise = generate.toy_noise([5])
    sigmas = importlib.import_module("diffract_pack.diffract_core.flux.sampling").flux_sigmas(generate.STEPS)
    with torch.no_grad():
        latent = fake_runtime.sample(model, noise, sigmas, (context, extra["pooled_output"]))
    raw = latent / core.toy.codec.SCALE + core.toy.codec.SHIFT  # ComfyUI hands the sampler's output back raw
    (image,) = fake_runtime.run_node(toy_nodes.ToyDecode, samples={"samples": raw}).args
    expected = generate.generate(toy, [prompt], noise)
    assert image.shape == (1, 32, 32, 3)
    torch.testing.assert_close(image, expected.permute(0, 2, 3, 1), atol=1e-5, rtol=0)


def test_a_word_outside_the_toy_world_is_refused_by_name(toy_nodes, loaded, core) -> None:
    import fake_runtime

    with pytest.raises(core.errors.DiffractError, match="unknown: \\['cat'\\]"):
        fake_runtime.run_node(toy_nodes.ToyTextEncode, text_encoder=loaded[1], text="a red cat")


def test_load_transcoders_lists_the_toys_release(pack, models_dir) -> None:
    import fake_runtime

    nodes = pack.nodes
    nodes.transcoder_folders.register_transcoder_folder()
    assert "diffract-toy" in nodes.transcoder_folders.release_folders()
    schema = nodes.LoadTranscoders.define_schema()
    options = next(spec.options for spec in schema.inputs if spec.id == "release")
    assert "diffract-toy" in options
    (transcoders,) = fake_runtime.run_node(nodes.LoadTranscoders, release="diffract-toy").args
    assert sorted(transcoders.sites) == sorted((s, layer) for s in ("img", "txt") for layer in range(4))


def test_the_toys_sae_baseline_loads_and_steers_the_toy_in_the_comfy_path(
    pack, models_dir, toy_nodes, loaded, core
) -> None:
    """Load Transcoders (kind sae) opens the SAEs beside the transcoders; Steer Feature steers an
    SAE feature while ComfyUI's FLUX samples the toy: scale 1 is bit-identical, ablation changes the
    image the way the library's SAE steering does."""
    import fake_runtime

    nodes = pack.nodes
    nodes.transcoder_folders.register_transcoder_folder()
    (saes,) = fake_runtime.run_node(nodes.LoadTranscoders, release="diffract-toy", kind="sae").args
    assert sorted(saes.sites) == sorted((s, layer) for s in ("img", "txt") for layer in range(4))
    assert {saes.config(site).kind for site in saes} == {"sae"}
    model, text_encoder = loaded
    generate = importlib.import_module("diffract_pack.diffract_core.toy.generate")
    recording_module = importlib.import_module("diffract_pack.diffract_core.recording")
    prompt = "a blue circle and a red square"
    (conditioning,) = fake_runtime.run_node(toy_nodes.ToyTextEncode, text_encoder=text_encoder, text=prompt).args
    (context, extra), = conditioning
    noise = generate.toy_noise([3])
    sigmas = importlib.import_module("diffract_pack.diffract_core.flux.sampling").flux_sigmas(generate.STEPS)
    recording = recording_module.FeatureRecording(sites=(("img", 2),), k=4)
    with torch.no_grad():
        toy = importlib.import_module("diffract_pack.diffract_core.toy.embedded").load_toy()
        generate.generate(toy, [prompt], noise, transcoders=saes, recording=recording)
    strongest = int(recording.codes(("img", 2), 2).indices[0, :, 0].mode().values)
    features = f"img:2:{strongest}"

    def sample(strength: float) -> torch.Tensor:
        (steered,) = fake_runtime.run_node(nodes.SteerFeature, model=model, transcoders=saes, features=features,
                                           mode="scale", strength=strength).args
        with torch.no_grad():
            return fake_runtime.sample(steered, noise, sigmas, (context, extra["pooled_output"]))

    with torch.no_grad():
        plain = fake_runtime.sample(model, noise, sigmas, (context, extra["pooled_output"]))
    assert torch.equal(sample(1.0), plain)
    amplified = sample(16.0)  # one SAE feature alone barely moves the toy: amplify it to see it
    spec = recording_module.SteeringSpec((core.features.FeatureRef("img", 2, strongest),), "scale", 16.0)
    expected = generate.generate(toy, [prompt], noise, transcoders=saes, steering=[spec])
    image = core.toy.codec.decode(amplified)
    assert (image - generate.generate(toy, [prompt], noise)).abs().max() > 1e-3
    torch.testing.assert_close(image, expected, atol=1e-4, rtol=0)
