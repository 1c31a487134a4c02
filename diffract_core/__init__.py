"""DifFRACT core: timestep-conditioned transcoders for FLUX, their formats, and a reference FLUX model.

Pure PyTorch; never imports ComfyUI. See `diffract_core.transcoders` and `diffract_core.flux`.
"""

import os
import sys

if "torch" not in sys.modules:
    # OpenMP threads that spin while idle make two torch processes sharing a CPU's cores each run 5-20x
    # slower than their fair share (measured: toy training 0.67 s/step alone, 4.9 s/step beside a second
    # training, 0.8 s/step with passive waiting). Only where torch is not loaded yet, so a host such as
    # ComfyUI, which imports torch first, is never changed.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import DiffractError
from .transcoders import SparseCodes, Transcoder, TranscoderConfig, TranscoderSet

__version__ = "0.1.0"

__all__ = ["DiffractError", "SparseCodes", "Transcoder", "TranscoderConfig", "TranscoderSet", "__version__"]
