"""ComfyUI adapters over `diffract_core`: the only code of the pack that imports `comfy` or
`comfy_api`. Node ids registered here are permanent once shipped (workflows store them).
"""

from comfy_api.latest import ComfyExtension, io

# The node classes arrive with the node-pack issue (Load/Download Transcoders, Record Features,
# heatmaps, steering); until then the pack registers its web folder and no nodes.
NODES: tuple[type[io.ComfyNode], ...] = ()


class DiffractExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
