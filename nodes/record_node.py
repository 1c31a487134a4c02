"""Record Features: attach transcoders to a FLUX MODEL's MLPs and keep every step's top features."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..diffract_core.errors import DiffractError
from ..diffract_core.recording import MLP_MODES, FeatureRecording
from ..diffract_core.sites import SITES_HELP, parse_sites, parse_steps
from ..diffract_core.transcoders import TranscoderSet
from .model_patching import record_features
from .node_types import CATEGORY, CHUNK_CHOICES, Recording, Transcoders

MODE_HELP = (
    "observe: the MLP output is untouched (the image is bit-identical); replace: transcoder output plus its "
    "error term (identical to float precision); replace_without_error: the transcoder alone (shows how "
    "faithful the transcoders are)"
)


class RecordFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractRecordFeatures",
            display_name="Record Features",
            category=CATEGORY,
            description="Patch a FLUX MODEL so that sampling with it records, at every step, the top-k transcoder "
            "features of every token. Sample with the MODEL this node outputs.",
            inputs=[
                io.Model.Input("model"),
                Transcoders.Input("transcoders"),
                io.String.Input("sites", default="all", tooltip=SITES_HELP),
                io.Int.Input("top_k", default=64, min=1, max=4096, tooltip="features kept per token"),
                io.Combo.Input("mode", options=list(MLP_MODES), default="observe", tooltip=MODE_HELP),
                io.Combo.Input("record", options=list(CHUNK_CHOICES), default="cond",
                               tooltip="which CFG chunk to record"),
                io.String.Input(
                    "keep_inputs_at_steps",
                    default="",
                    tooltip="steps (e.g. 0, 2) whose model inputs are kept for Trace Circuit; empty: none",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL"), Recording.Output(display_name="FEATURE_RECORDING")],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        transcoders: TranscoderSet,
        sites: str,
        top_k: int,
        mode: str,
        record: str,
        keep_inputs_at_steps: str,
    ) -> io.NodeOutput:
        chosen = parse_sites(sites, transcoders.sites)
        smallest = min(transcoders.config(site).d_features for site in chosen)
        if top_k > smallest:
            raise DiffractError(f"top_k {top_k} is more than the {smallest} features of the chosen transcoders: "
                                "lower it")
        recording = FeatureRecording(
            sites=chosen, k=top_k, chunks=CHUNK_CHOICES[record], keep_input_steps=parse_steps(keep_inputs_at_steps)
        )
        return io.NodeOutput(record_features(model, transcoders, chosen, recording, mode), recording)
