"""Reference FLUX.1 MM-DiT in plain PyTorch, with Black Forest Labs / ComfyUI parameter names.

``Flux(FluxConfig.flux1_dev())`` loads a BFL or ComfyUI FLUX.1 state dict as it is; any size works.
"""

from .config import FluxConfig
from .model import Flux, init_random_, make_img_ids, patchify, unpatchify

__all__ = ["Flux", "FluxConfig", "init_random_", "make_img_ids", "patchify", "unpatchify"]
