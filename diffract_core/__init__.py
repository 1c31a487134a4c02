"""DifFRACT core: timestep-conditioned transcoders for FLUX, their formats, and a reference FLUX model.

Pure PyTorch; never imports ComfyUI. See `diffract_core.transcoders` and `diffract_core.flux`.
"""

from .errors import DiffractError
from .transcoders import SparseCodes, Transcoder, TranscoderConfig, TranscoderSet

__version__ = "0.1.0"

__all__ = ["DiffractError", "SparseCodes", "Transcoder", "TranscoderConfig", "TranscoderSet", "__version__"]
