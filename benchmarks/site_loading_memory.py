"""Private memory taken by loading one transcoder site at FLUX size: the native loader (memory-mapped
safetensors) against the same file read into RAM and deserialised (a plain, non-mapped load).

Each loader runs in a fresh child process, which reports its own peak private (anonymous) memory
after loading the site and encoding a batch of tokens; the figure printed is that peak over the
file's size. File-backed pages of a memory map are page cache the kernel can drop, not a copy.

    python benchmarks/site_loading_memory.py                  # D=3072, F=49152 (1.2 GB fp32)
    python benchmarks/site_loading_memory.py --features 8192  # smaller, faster
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from pathlib import Path

import torch
from process_status import status_kib
from safetensors.torch import load as deserialize_safetensors

from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import Transcoder, TranscoderSet, convert_file, release_state_dict
from diffract_core.transcoders.native import WEIGHTS_FILE, read_site_config

NATIVE = "native (mmap)"
IN_RAM = "read into RAM"


def _measure(loader: str, folder: str, tokens: int, queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(2)
    before = status_kib("RssAnon")
    if loader == NATIVE:
        transcoder = TranscoderSet.open(folder)[("img", 0)]
    else:
        site = Path(folder) / "transcoder_img_0"
        transcoder = Transcoder(read_site_config(site), device="meta")
        transcoder.load_state_dict(deserialize_safetensors((site / WEIGHTS_FILE).read_bytes()), assign=True)
    loaded = status_kib("RssAnon")
    with torch.inference_mode():
        transcoder.encode_topk(torch.randn(tokens, transcoder.d_model), 0.5, k=64)
    queue.put((loaded - before, status_kib("RssAnon") - before))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=3072)
    parser.add_argument("--features", type=int, default=49152)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        site = random_transcoder("img", 0, d_model=args.d_model, d_features=args.features, time_dim=256)
        torch.save(release_state_dict(site.state_dict()), folder / "transcoder_img_0.pt")
        del site
        convert_file(folder / "transcoder_img_0.pt", folder)
        size_mib = (folder / "transcoder_img_0" / WEIGHTS_FILE).stat().st_size / 2**20
        print(f"D={args.d_model} F={args.features} site file {size_mib:.0f} MiB (fp32); "
              f"encode_topk of {args.tokens} tokens")
        print(f"{'loader':22} {'private MiB after load':>24} {'after encode_topk':>18} {'/ file size':>12}")
        context = multiprocessing.get_context("spawn")
        for loader in (NATIVE, IN_RAM):
            queue = context.Queue()
            child = context.Process(target=_measure, args=(loader, tmp, args.tokens, queue))
            child.start()
            loaded, peak = queue.get()
            child.join()
            print(f"{loader:22} {loaded / 1024:24.0f} {peak / 1024:18.0f} {peak / 1024 / size_mib:11.2f}x")


if __name__ == "__main__":
    main()
