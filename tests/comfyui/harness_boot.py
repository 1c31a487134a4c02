"""Boot code that runs INSIDE the ComfyUI interpreter (COMFYUI_PYTHON), never under pytest.

`conftest.comfy_run(script)` runs

    harness_boot.main(<snippet file>)

in a child forked from one `COMFYUI_PYTHON -c "...; harness_boot.serve()"` process (cwd =
COMFYUI_DIR) that has done the slow imports once (`serve`). `main` does what ComfyUI's `main.py`
does before a custom node is imported (ComfyUI dir on sys.path, `args.cpu = True` before
`comfy.model_management`, `folder_paths` and `utils.extra_config` imported before `nodes`, our
temporary custom_nodes folder registered), then,
depending on HARNESS_LOAD, loads our pack with ComfyUI's own loader and runs the snippet as
`__main__` (tracebacks keep the snippet's line numbers).

Snippets use the names below:  `import harness_boot as hb`; `hb.PACK` (the pack module as ComfyUI
imported it), `hb.PACK_NAME`, `hb.PACK_PATH`, `hb.load_pack()`, `hb.init_nodes()`, `hb.emit(obj)`;
`import tiny_flux` works too (this folder is on sys.path, after COMFYUI_DIR).

Only the standard library is imported at module level: this file is imported before torch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import runpy
import sys

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
CUSTOM_NODES = os.environ.get("HARNESS_CUSTOM_NODES", "")  # temp folder holding the pack symlink
PACK_NAME = os.environ.get("HARNESS_PACK_NAME", "diffract_comfyui")
PACK_PATH = os.path.join(CUSTOM_NODES, PACK_NAME)  # the path ComfyUI's loader is given
RESULT_MARKER = "@@HARNESS_RESULT@@"

PACK = None  # set by load_pack()


def boot() -> None:
    """Prepare a ComfyUI process the way main.py does, minus the server. Idempotent."""
    if COMFYUI_DIR not in sys.path:
        sys.path.insert(0, COMFYUI_DIR)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s:%(name)s: %(message)s")
    import comfy.cli_args  # parses args from [] unless comfy.options.enable_args_parsing() was called
    import comfy.options

    comfy.cli_args.args.cpu = True  # must happen before comfy.model_management is imported
    # main.py order: folder_paths and utils.* before nodes (nodes.py puts ComfyUI/comfy on sys.path,
    # whose utils.py would shadow the `utils` package afterwards)
    import folder_paths
    import utils.extra_config  # noqa: F401

    if CUSTOM_NODES and CUSTOM_NODES not in folder_paths.get_folder_paths("custom_nodes"):
        folder_paths.add_model_folder_path("custom_nodes", CUSTOM_NODES)
    import comfy.model_management as mm

    assert mm.get_torch_device().type == "cpu", mm.get_torch_device()


def load_pack():
    """Load our pack through `nodes.load_custom_node`, as init_external_custom_nodes() does.

    Returns (ok, module); ok is the loader's own verdict (False on an import failure, a missing
    entry point, or an exception in comfy_entrypoint; the loader logs why as a WARNING)."""
    global PACK
    import nodes

    base_node_names = set(nodes.NODE_CLASS_MAPPINGS)
    ok = asyncio.run(nodes.load_custom_node(PACK_PATH, base_node_names, module_parent="custom_nodes"))
    # the loader registers the package under its path, dots replaced by "_x_"
    PACK = sys.modules.get(PACK_PATH.replace(".", "_x_"))
    return ok, PACK


def init_nodes(api_nodes: bool = False) -> list:
    """Run ComfyUI's full node init (`nodes.init_extra_nodes`): comfy_extras, then every
    custom_nodes folder (ComfyUI's own and ours). Logs `IMPORT FAILED` for a failed pack, exactly
    like the server. Returns the comfy_extras modules that failed."""
    global PACK
    import nodes

    failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=api_nodes))
    PACK = sys.modules.get(PACK_PATH.replace(".", "_x_"))
    return failed


def emit(obj) -> None:
    """Hand a JSON-serialisable result back to the test (`proc.result` in comfy_run)."""
    print(RESULT_MARKER + json.dumps(obj), flush=True)


def serve() -> None:
    """A fork server for comfy_run: boot once (torch, ComfyUI's model management and nodes.py
    imported, no custom node loaded), then for each request line on stdin ({"script", "env",
    "stdout", "stderr"}) fork a child that runs `main(script)` with its output in those files. Each
    snippet gets a fresh copy of a booted interpreter without paying for the imports again. Answers
    {"pid": ...} when the child starts and {"returncode": ...} when it ends."""
    boot()
    import nodes  # noqa: F401 - the slowest import, done once

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def _child(request: dict) -> int:
    """Run one snippet in a forked child, as `python -c ... harness_boot.main(script)` would; its exit code."""
    for stream, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), stream)
    os.environ.update(request["env"])
    code = 0
    try:
        main(request["script"])
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as the interpreter would, then exit 1
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(snippet_path: str) -> None:
    boot()
    mode = os.environ.get("HARNESS_LOAD", "pack")
    if mode == "pack":
        ok, _ = load_pack()
        if not ok:
            print(f"harness_boot: ComfyUI failed to load the pack at {PACK_PATH}", file=sys.stderr)
            sys.exit(3)
    elif mode == "all":
        init_nodes()
    elif mode != "none":
        sys.exit(f"harness_boot: unknown HARNESS_LOAD={mode!r}")
    runpy.run_path(snippet_path, run_name="__main__")
