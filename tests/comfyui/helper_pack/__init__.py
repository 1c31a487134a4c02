"""Test-only custom nodes for the real-server tests: a tiny random FLUX (ComfyUI's own loaders
refuse tiny configs), hand-made conditioning for it, and a latent-to-image stand-in for a VAE.
Loaded from the temporary custom_nodes folder as `diffract_test_helpers`; never shipped."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import tiny_flux  # tests/comfyui, put on the path above

TINY = {"hidden_size": 64, "num_heads": 2, "depth": 2, "depth_single_blocks": 1, "context_in_dim": 32, "vec_in_dim": 16}


class TinyFlux:
    CATEGORY = "diffract_tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    def build(self, seed):
        return (tiny_flux.build(seed=seed, **TINY),)


class TinyConditioning:
    CATEGORY = "diffract_tests"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1}), "tokens": ("INT", {"default": 8})}}

    def make(self, seed, tokens):
        gen = torch.Generator().manual_seed(seed)
        context = torch.randn(1, tokens, TINY["context_in_dim"], generator=gen)
        return ([[context, {"pooled_output": torch.randn(1, TINY["vec_in_dim"], generator=gen)}]],)


class LatentToImage:
    CATEGORY = "diffract_tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def convert(self, samples):
        x = torch.sigmoid(samples["samples"][:, :3].float())
        return (torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest").movedim(1, -1),)


NODE_CLASS_MAPPINGS = {
    "DiffractTestTinyFlux": TinyFlux,
    "DiffractTestConditioning": TinyConditioning,
    "DiffractTestLatentToImage": LatentToImage,
}
