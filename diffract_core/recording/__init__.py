"""Recording and steering features while a FLUX model runs: the patched MLP, its call context,
the sparse recording, and steering specs in delta form."""

from .patched_mlp import MLP_MODES, CallContext, MlpMode, PatchedMLP
from .recording import COND, UNCOND, FeatureRecording, RecordKey
from .reference import patch_reference_model
from .steering import STEER_MODES, PerImageSteering, Steering, SteeringSpec, SteerMode

__all__ = [
    "COND",
    "MLP_MODES",
    "STEER_MODES",
    "UNCOND",
    "CallContext",
    "FeatureRecording",
    "MlpMode",
    "PatchedMLP",
    "PerImageSteering",
    "RecordKey",
    "SteerMode",
    "Steering",
    "SteeringSpec",
    "patch_reference_model",
]
