"""Build the tiny world's atlas (tiny_world.py) from RELEASE into OUT: alone, or as one rank of a
torchrun job. The two-process test runs it both ways.

    python distributed_build.py RELEASE OUT
    python -m torch.distributed.run --standalone --nproc_per_node 2 distributed_build.py RELEASE OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from tiny_world import PROMPTS, SETTINGS, decode, encoder, tiny_model

from diffract_core.atlas import build_atlas
from diffract_core.transcoders import TranscoderSet

if __name__ == "__main__":
    release, out = sys.argv[1:3]
    model = tiny_model()
    build_atlas(model, encoder(model), TranscoderSet.open(release), PROMPTS, Path(out), SETTINGS, decode=decode)
