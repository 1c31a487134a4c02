"""Our pack loads in real ComfyUI (opt-in: COMFYUI_DIR + COMFYUI_PYTHON, see conftest.py)."""

import re

PACK_NAME = "diffract_comfyui"


def _failure_lines(text: str, pack_path: str) -> list[str]:
    """Log lines that report a failed load of our pack."""
    bad = []
    for line in text.splitlines():
        if pack_path in line and ("IMPORT FAILED" in line or "Cannot import" in line or "comfy_entrypoint" in line
                                  or "Skip " in line):
            bad.append(line)
    return bad


def test_loader_imports_pack(comfy_run, comfy_nodes_dir, pack_dir):
    """nodes.load_custom_node() says True, the package is registered under ComfyUI's module name,
    comfy_entrypoint returns a ComfyExtension whose nodes are all registered, and WEB_DIRECTORY is
    in EXTENSION_WEB_DIRS under the folder name."""
    proc = comfy_run(
        """
        import asyncio, os, sys
        import harness_boot as hb
        import nodes
        from comfy_api.latest import ComfyExtension

        ok, pack = hb.load_pack()
        if not ok:  # the loader logs only the message of an entry-point error: get the traceback
            import traceback
            tb = None
            try:
                asyncio.run(pack.comfy_entrypoint())
            except Exception:
                tb = traceback.format_exc()
            hb.emit(dict(ok=ok, traceback=tb))
            sys.exit(0)
        ext = asyncio.run(pack.comfy_entrypoint())
        node_list = asyncio.run(ext.get_node_list()) if isinstance(ext, ComfyExtension) else None
        hb.emit(dict(
            ok=ok,
            module_key=pack.__name__ if pack is not None else None,
            pack_file=getattr(pack, "__file__", None),
            web_directory=getattr(pack, "WEB_DIRECTORY", None),
            is_extension=isinstance(ext, ComfyExtension),
            node_ids=None if node_list is None else [n.GET_SCHEMA().node_id for n in node_list],
            registered={k: getattr(v, "RELATIVE_PYTHON_MODULE", None) for k, v in nodes.NODE_CLASS_MAPPINGS.items()},
            web_dirs={k: os.path.realpath(v) for k, v in nodes.EXTENSION_WEB_DIRS.items()},
            loaded_dirs={k: os.path.realpath(v) for k, v in nodes.LOADED_MODULE_DIRS.items()},
        ))
        """,
        load="none",
    )
    r = proc.result
    pack_path = str(comfy_nodes_dir / PACK_NAME)
    assert r["ok"] is True, f"{proc.stderr[-3000:]}\n{r.get('traceback') or ''}"
    assert not _failure_lines(proc.stderr, pack_path), proc.stderr[-4000:]
    assert r["module_key"] == pack_path.replace(".", "_x_")  # ComfyUI keys the package by its path
    assert r["pack_file"] == pack_path + "/__init__.py"
    assert r["loaded_dirs"].get(PACK_NAME) == str(pack_dir.resolve())
    assert r["is_extension"], "comfy_entrypoint() did not return a ComfyExtension"
    assert isinstance(r["node_ids"], list)
    for node_id in r["node_ids"]:
        assert r["registered"].get(node_id) == f"custom_nodes.{PACK_NAME}", node_id
    web = (pack_dir / r["web_directory"]).resolve()
    assert web.is_dir(), f"WEB_DIRECTORY {r['web_directory']!r} does not exist: ComfyUI would not serve it"
    assert r["web_dirs"].get(PACK_NAME) == str(web), r["web_dirs"]


def test_full_node_init_reports_no_import_failure(comfy_run, comfy_nodes_dir):
    """nodes.init_extra_nodes() (what the server runs) lists our pack among the custom-node import
    times without `(IMPORT FAILED)`."""
    proc = comfy_run(
        """
        import harness_boot as hb
        import nodes
        hb.emit(dict(loaded=hb.PACK is not None and hb.PACK_NAME in nodes.LOADED_MODULE_DIRS))
        """,
        load="all",
    )
    pack_path = str(comfy_nodes_dir / PACK_NAME)
    timing = [line for line in proc.stderr.splitlines()
              if re.search(r"\d seconds.*: " + re.escape(pack_path) + "$", line)]
    assert len(timing) == 1, proc.stderr[-4000:]
    assert "IMPORT FAILED" not in timing[0]
    assert not _failure_lines(proc.stderr, pack_path), proc.stderr[-4000:]
    assert proc.result == {"loaded": True}


def test_server_starts_with_pack(comfy_server, pack_dir):
    """A real server: /object_info answers with every node of ours, the log shows our pack imported
    (no IMPORT FAILED), /extensions lists our web files, and the server is still serving afterwards."""
    pack_path = str(comfy_server.custom_nodes / PACK_NAME)
    object_info = comfy_server.get_json("/object_info")
    assert "KSampler" in object_info  # a core node: the listing is real
    ours = {k for k, v in object_info.items() if v.get("python_module") == f"custom_nodes.{PACK_NAME}"}

    log = comfy_server.log()
    timing = [line for line in log.splitlines() if re.search(r"\d seconds.*: " + re.escape(pack_path) + "$", line)]
    assert len(timing) == 1 and "IMPORT FAILED" not in timing[0], log[-4000:]
    assert not _failure_lines(log, pack_path), log[-4000:]

    extensions = comfy_server.get_json("/extensions")
    assert isinstance(extensions, list)
    web_files = sorted(p.relative_to(pack_dir / "web").as_posix() for p in (pack_dir / "web").rglob("*.js"))
    ours_js = sorted(e[len(f"/extensions/{PACK_NAME}/"):] for e in extensions
                     if e.startswith(f"/extensions/{PACK_NAME}/"))
    assert ours_js == web_files
    for rel in web_files:  # each listed file is served
        status, _ = comfy_server.get(f"/extensions/{PACK_NAME}/{rel}")
        assert status == 200, rel

    stats = comfy_server.get_json("/system_stats")
    assert stats["devices"][0]["type"] == "cpu"
    assert comfy_server.get_json("/object_info").keys() >= ours
    assert comfy_server.alive()


def test_tiny_flux_samples(comfy_run):
    """The harness builds tiny FLUX models (schnell and dev-style, several sizes) with ComfyUI and
    samples them: finite, non-zero latents of the input's shape."""
    proc = comfy_run(
        """
        import torch, tiny_flux, harness_boot as hb
        out = {}
        for name, cfg in {
            "schnell_256": dict(),
            "schnell_64_1x1": dict(hidden_size=64, num_heads=2, depth=1, depth_single_blocks=1),
            "dev_128": dict(hidden_size=128, num_heads=2, guidance_embed=True),
        }.items():
            patcher = tiny_flux.build(**cfg)
            latent = torch.zeros(2, 16, 16, 24)
            pos = tiny_flux.conditioning(patcher, batch=2, guidance=3.5 if cfg.get("guidance_embed") else None)
            x = tiny_flux.sample(patcher, steps=2, latent=latent, positive=pos)
            out[name] = dict(shape=list(x.shape), finite=bool(torch.isfinite(x).all()), absmax=float(x.abs().max()),
                             model=type(patcher.model).__name__,
                             n_double=len(patcher.model.diffusion_model.double_blocks),
                             n_single=len(patcher.model.diffusion_model.single_blocks))
        hb.emit(out)
        """,
    )
    r = proc.result
    assert set(r) == {"schnell_256", "schnell_64_1x1", "dev_128"}
    for name, o in r.items():
        assert o["shape"] == [2, 16, 16, 24], name
        assert o["finite"] and o["absmax"] > 0, (name, o)
        assert o["model"] == "Flux", name
    assert (r["schnell_256"]["n_double"], r["schnell_256"]["n_single"]) == (2, 2)
    assert (r["schnell_64_1x1"]["n_double"], r["schnell_64_1x1"]["n_single"]) == (1, 1)
