"""Load Transcoders (local files only) and Download Transcoders from Hub (the only node that
touches the network)."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ..diffract_core.hub import DEFAULT_REPO_ID, SAE_FOLDER, TRANSCODER_FOLDER, HubRelease, download_release
from ..diffract_core.sites import LAYERS_HELP, parse_layers
from ..diffract_core.transcoders import TranscoderSet, describe_sites, dtype_from_name
from .node_types import CATEGORY, STREAM_CHOICES, Transcoders, streams_of
from .progress import NodeProgress
from .transcoder_folders import download_destination, release_folder, release_folders

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")  # names dtype_from_name reads; auto: as stored
FP8 = "fp8_e4m3"  # encoder and decoder in 8 bits, one scale per feature; the rest as `auto`
LOAD_DTYPE_CHOICES = (*DTYPE_CHOICES, FP8)


def _runtime_dtype(transcoders: TranscoderSet, choice: str) -> TranscoderSet:
    """The chosen dtype; `auto` keeps the stored one, except that fp32 weights on a CUDA device run
    in bf16 and half-precision weights on a CPU run in fp32 (CPUs are slow and coarse in half precision)."""
    if choice != "auto":
        return transcoders.to(dtype=dtype_from_name(choice))
    stored = {transcoders.config(site).torch_dtype for site in transcoders}
    device = comfy.model_management.get_torch_device().type
    if stored == {torch.float32} and device == "cuda":
        return transcoders.to(dtype=torch.bfloat16)
    if device == "cpu" and stored & {torch.float16, torch.bfloat16}:
        return transcoders.to(dtype=torch.float32)
    return transcoders


class LoadTranscoders(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractLoadTranscoders",
            display_name="Load Transcoders (DifFRACT)",
            category=CATEGORY,
            description="Open a converted transcoder release from models/transcoders/. Weights load lazily, "
            "memory-mapped, when a site is first used. Reads local files only. A feature atlas beside the release "
            "(Build Feature Atlas) is checked here and labels the features in every DifFRACT node.",
            inputs=[
                io.Combo.Input("release", options=sorted(release_folders()),
                               tooltip="a folder under models/transcoders/"),
                io.Combo.Input("streams", options=list(STREAM_CHOICES), default="img+txt"),
                io.String.Input("layers", default="all", tooltip=LAYERS_HELP),
                io.Combo.Input(
                    "dtype",
                    options=list(LOAD_DTYPE_CHOICES),
                    default="auto",
                    tooltip="auto: as stored, but fp32 files run in bf16 on a CUDA device "
                    "and fp16/bf16 files in fp32 on a CPU. fp8_e4m3: encoder and decoder held in 8 bits with one "
                    "scale per feature (half the memory of bf16; pre-activations off by about 2.5%), computed as auto",
                ),
                io.Combo.Input("kind", options=["transcoder", "sae"], default="transcoder"),
            ],
            outputs=[Transcoders.Output(display_name="TRANSCODERS")],
        )

    @classmethod
    def execute(cls, release: str, streams: str, layers: str, dtype: str, kind: str) -> io.NodeOutput:
        transcoders = TranscoderSet.open(
            release_folder(release), kind=kind, streams=streams_of(streams), layers=parse_layers(layers),
            fp8_weights=dtype == FP8,
        )
        atlas = transcoders.atlas  # one that does not belong to this release is refused here, naming the fix
        note = (f"feature atlas: {len(atlas.prompts)} prompts, sites {describe_sites(atlas.sites)}" if atlas is not None
                else "no feature atlas beside this release: features show as indices (Build Feature Atlas makes one)")
        return io.NodeOutput(_runtime_dtype(transcoders, "auto" if dtype == FP8 else dtype), ui={"text": [note]})


class DownloadTranscoders(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffractDownloadTranscoders",
            display_name="Download Transcoders from Hub",
            category=CATEGORY,
            description="Download released transcoders from the Hugging Face Hub into models/transcoders/<folder>/ "
            "and convert them to safetensors once; sites already there are not fetched again.",
            inputs=[
                io.String.Input("repo_id", default=DEFAULT_REPO_ID),
                io.Combo.Input("hub_folder", options=[TRANSCODER_FOLDER, SAE_FOLDER], default=TRANSCODER_FOLDER),
                io.String.Input("folder", default="DifFRACT",
                                tooltip="the local folder name under models/transcoders/"),
                io.Combo.Input("streams", options=list(STREAM_CHOICES), default="img+txt"),
                io.String.Input("layers", default="all", tooltip=LAYERS_HELP),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPE_CHOICES),
                    default="auto",
                    tooltip="dtype the files are stored in (auto: as released, fp32); bf16 halves the disk size",
                ),
            ],
            outputs=[Transcoders.Output(display_name="TRANSCODERS")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls, repo_id: str, hub_folder: str, folder: str, streams: str, layers: str, dtype: str
    ) -> io.NodeOutput:
        dest = download_destination(folder)
        progress = NodeProgress(1, node_id=cls.hidden.unique_id)
        transcoders = download_release(
            dest,
            release=HubRelease(repo_id.strip(), hub_folder),
            streams=streams_of(streams),
            layers=parse_layers(layers),
            dtype=None if dtype == "auto" else dtype_from_name(dtype),
            progress=lambda done, total, _name: progress.update(done, total),
        )
        return io.NodeOutput(_runtime_dtype(transcoders, "auto"))
