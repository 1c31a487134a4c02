"""DifFRACT for ComfyUI: the entry point ComfyUI imports from `custom_nodes/<this folder>/`.

Importing this file is cheap: it imports neither torch nor anything from ComfyUI. ComfyUI calls
`comfy_entrypoint()` when it loads the pack; only then are the node modules (which import
`comfy_api` and the `diffract_core` library) loaded.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():  # the return type lives in comfy_api, imported lazily
    from .nodes import DiffractExtension

    return DiffractExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
