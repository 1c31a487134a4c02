"""Recording and steering features while a FLUX model runs: the call lifecycle every host adapts
(lifecycle.py), the patched MLP and its call context, the sparse recording, and steering specs in
delta form."""

from .call_inputs import CallInputs, keep_call_inputs
from .lifecycle import (
    end_call,
    flux_call,
    install,
    keep_inputs_hook,
    one_call,
    publish_call,
    row_sigmas,
    sampling_run,
    site_patch,
)
from .patched_mlp import MLP_MODES, CallContext, MlpMode, PatchedMLP
from .recording import CHUNK_NAMES, COND, UNCOND, FeatureRecording, RecordKey
from .reference import patch_reference_model
from .steering import STEER_MODES, PerImageSteering, Steering, SteeringSpec, SteerMode

__all__ = [
    "CHUNK_NAMES",
    "COND",
    "MLP_MODES",
    "STEER_MODES",
    "UNCOND",
    "CallContext",
    "CallInputs",
    "FeatureRecording",
    "MlpMode",
    "PatchedMLP",
    "PerImageSteering",
    "RecordKey",
    "SteerMode",
    "Steering",
    "SteeringSpec",
    "end_call",
    "flux_call",
    "install",
    "keep_call_inputs",
    "keep_inputs_hook",
    "one_call",
    "patch_reference_model",
    "publish_call",
    "row_sigmas",
    "sampling_run",
    "site_patch",
]
