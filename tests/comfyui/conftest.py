"""Opt-in tests against a real ComfyUI (v0.8.0). See README.md in this folder.

Every test here is skipped unless COMFYUI_DIR (a ComfyUI source tree) and COMFYUI_PYTHON (the
interpreter that runs it) are set (README.md here says how to get both). COMFYUI_FRONTEND_ROOT, if set,
serves another frontend (--front-end-root). pytest itself runs under any python: ComfyUI only ever runs
in subprocesses under COMFYUI_PYTHON.

Fixtures:
  pack_dir          the repo root, i.e. our custom-node pack
  comfy_nodes_dir   a temporary custom_nodes folder holding `diffract_comfyui -> repo root` and
                    `diffract_test_helpers -> helper_pack/` (test-only nodes: tiny FLUX, conditioning)
  comfy_run         comfy_run(script, load="pack") -> CompletedProcess: runs a Python snippet in
                    ComfyUI's interpreter (cwd COMFYUI_DIR), after harness_boot.py has done the
                    main.py-style setup and loaded our pack with `nodes.load_custom_node`
  comfy_server      a real `main.py --cpu` server on 127.0.0.1 with our pack in custom_nodes
                    (session scope); a ComfyServer with .url, .log(), .get(), .get_json()

ComfyUI surfaces used: `comfy.cli_args.args.cpu`, `folder_paths.add_model_folder_path("custom_nodes",
...)`, `nodes.load_custom_node`, `nodes.init_extra_nodes`, `nodes.EXTENSION_WEB_DIRS`,
`nodes.LOADED_MODULE_DIRS`, `nodes.NODE_CLASS_MAPPINGS`; `main.py` flags --cpu --listen --port
--extra-model-paths-config --output/input/user/temp-directory --database-url --disable-auto-launch
--disable-api-nodes; HTTP GET /object_info, /extensions, /system_stats.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PACK_DIR = HERE.parents[1]  # tests/comfyui -> tests -> repo root
PACK_NAME = "diffract_comfyui"  # the folder name users get from the registry / git clone
HELPER_PACK_NAME = "diffract_test_helpers"  # helper_pack/: a tiny FLUX loader and friends, for the server tests
COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", "")
RESULT_MARKER = "@@HARNESS_RESULT@@"  # same as harness_boot.RESULT_MARKER

SKIP_REASON = (
    "real-ComfyUI tests are opt-in: set COMFYUI_DIR (ComfyUI source tree) and COMFYUI_PYTHON "
    "(its interpreter); tests/comfyui/README.md says how to set up both from a fresh clone"
)
ENABLED = bool(COMFYUI_DIR and COMFYUI_PYTHON)


def pytest_collection_modifyitems(config, items):
    """Skip every test collected from this folder when the two variables are not both set."""
    if ENABLED:
        return
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(marker)


def _check_env() -> None:
    if not ENABLED:
        pytest.skip(SKIP_REASON)
    if not Path(COMFYUI_DIR, "main.py").is_file() or not Path(COMFYUI_DIR, "nodes.py").is_file():
        pytest.fail(f"COMFYUI_DIR={COMFYUI_DIR!r} is not a ComfyUI source tree (no main.py/nodes.py)")
    if not os.access(COMFYUI_PYTHON, os.X_OK):
        pytest.fail(f"COMFYUI_PYTHON={COMFYUI_PYTHON!r} is not an executable")


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(
        COMFYUI_DIR=COMFYUI_DIR,
        PYTHONDONTWRITEBYTECODE="1",  # no __pycache__ littering the repo through the symlink
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def pack_dir() -> Path:
    """The repo root: our custom-node pack (has __init__.py with WEB_DIRECTORY/comfy_entrypoint)."""
    return PACK_DIR


@pytest.fixture(scope="session")
def comfy_nodes_dir(tmp_path_factory) -> Path:
    """A temporary custom_nodes folder with one entry, `diffract_comfyui` -> repo root, so ComfyUI
    names the pack as a user's `custom_nodes/diffract_comfyui` checkout would be named."""
    _check_env()
    d = tmp_path_factory.mktemp("custom_nodes")
    (d / PACK_NAME).symlink_to(PACK_DIR, target_is_directory=True)
    (d / HELPER_PACK_NAME).symlink_to(HERE / "helper_pack", target_is_directory=True)
    return d


@pytest.fixture(scope="session")
def comfy_run(comfy_nodes_dir, tmp_path_factory):
    """comfy_run(script, load="pack", timeout=300, check=True, env=None) -> CompletedProcess

    Runs `script` (dedented) as __main__ under COMFYUI_PYTHON with cwd COMFYUI_DIR, in a child that
    harness_boot.serve() forks from one booted interpreter per session (a fresh process per snippet,
    without paying for torch's and ComfyUI's imports each time). Before it runs,
    harness_boot.py has put COMFYUI_DIR (then this folder) on sys.path, set args.cpu = True and
    registered comfy_nodes_dir as a custom_nodes folder; then, by `load`:
      "pack": our pack loaded with nodes.load_custom_node (exit 3 if the loader says it failed);
      "all":  nodes.init_extra_nodes() (comfy_extras + all custom_nodes folders, as the server does);
      "none": nothing loaded (call harness_boot.load_pack()/init_nodes() yourself).
    The snippet reaches the pack as `harness_boot.PACK`. stdout/stderr are text; `.result` is the
    last object the snippet passed to harness_boot.emit(), or None. With check=True a non-zero exit
    fails the test, showing the output's tail.
    """
    scripts = tmp_path_factory.mktemp("comfy_run")
    counter = iter(range(1_000_000))
    launcher = "import sys; sys.path.append(sys.argv[1]); import harness_boot; harness_boot.serve()"
    server_log = open(scripts / "fork_server.log", "wb")  # noqa: SIM115 - open for the session
    server = subprocess.Popen([COMFYUI_PYTHON, "-c", launcher, str(HERE)], cwd=COMFYUI_DIR, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=server_log, text=True, bufsize=1,
                              env=_child_env(HARNESS_CUSTOM_NODES=str(comfy_nodes_dir), HARNESS_PACK_NAME=PACK_NAME))

    def answer(timeout: float) -> dict | None:
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        line = server.stdout.readline() if ready else ""
        if ready and not line:
            pytest.fail(f"comfy_run: the fork server exited\n{(scripts / 'fork_server.log').read_text()[-6000:]}")
        return json.loads(line) if line else None

    def run(script: str, load: str = "pack", timeout: float = 300, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        number = next(counter)
        path = scripts / f"snippet_{number}.py"
        path.write_text(textwrap.dedent(script))
        out, err = scripts / f"snippet_{number}.out", scripts / f"snippet_{number}.err"
        request = {"script": str(path), "env": {"HARNESS_LOAD": load, **(env or {})}, "stdout": str(out),
                   "stderr": str(err)}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        child = answer(60)["pid"]  # the server's boot (torch, ComfyUI) is part of the first wait
        done = answer(timeout)
        if done is None:
            os.kill(child, signal.SIGKILL)
            answer(30)
            pytest.fail(f"comfy_run: snippet ran past {timeout}s\n--- output tail ---\n"
                        f"{_tail(out.read_text(errors='replace'), err.read_text(errors='replace'))}")
        proc = subprocess.CompletedProcess(str(path), done["returncode"], out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))
        proc.result = None
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_MARKER):
                proc.result = json.loads(line[len(RESULT_MARKER):])
        if check and proc.returncode != 0:
            pytest.fail(f"comfy_run: exit {proc.returncode}\n--- output tail ---\n{_tail(proc.stdout, proc.stderr)}")
        return proc

    yield run
    server.stdin.close()
    server.wait(timeout=30)
    server_log.close()


def _tail(stdout, stderr, n: int = 6000) -> str:
    def s(x):
        return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
    return ("[stdout]\n" + s(stdout)[-n:] + "\n[stderr]\n" + s(stderr)[-n:]).strip()


# ------------------------------------------------------------------------------------- server

@dataclasses.dataclass
class ComfyServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    run_dir: Path  # yaml, log, user/input/output/temp folders, database
    log_path: Path
    custom_nodes: Path
    models_dir: Path  # models folders registered through the yaml (transcoders/)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 30):
        """(status, body bytes) of GET url+path; HTTP errors are returned, not raised."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 30):
        status, body = self.get(path, timeout)
        assert status == 200, f"GET {path} -> {status}: {body[:500]!r}"
        return json.loads(body)

    def alive(self) -> bool:
        return self.process.poll() is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_START_TIMEOUT = float(os.environ.get("COMFYUI_SERVER_TIMEOUT", "240"))
# Another frontend than the one ComfyUI's requirements install: the `static` folder of an unpacked
# comfyui-frontend-package wheel (e.g. the newest on PyPI).
FRONTEND_ROOT = os.environ.get("COMFYUI_FRONTEND_ROOT")
# What a newer frontend logs against the v0.8.0 backend by itself (no /jobs endpoint; model checks of
# core templates blocked by the page's own CSP): about the pair, never about our pack.
FRONTEND_BACKEND_MISMATCH = ("[Jobs API] Error fetching jobs", "violates the following Content Security Policy",
                             "violates the document's Content Security Policy")


@pytest.fixture
def page(page):  # tests/conftest.py's page, which fails on any error the page logs
    yield page
    if FRONTEND_ROOT:
        page.errors[:] = [e for e in page.errors if not any(m in e for m in FRONTEND_BACKEND_MISMATCH)]


@pytest.fixture(scope="session")
def comfy_server(comfy_nodes_dir):
    """A real ComfyUI server (main.py --cpu) on 127.0.0.1:<free port> with our pack in a custom_nodes
    folder given through --extra-model-paths-config. Yields a ComfyServer once GET /object_info
    answers 200 (at most COMFYUI_SERVER_TIMEOUT s, default 240); SIGTERM (then SIGKILL) at the end."""
    run_dir = Path(tempfile.mkdtemp(prefix="comfyui-server-"))
    for sub in ("user", "input", "output", "temp", "models/transcoders"):
        (run_dir / sub).mkdir(parents=True)
    yaml_path = run_dir / "extra_model_paths.yaml"
    yaml_path.write_text(  # JSON strings are valid YAML scalars
        "diffract_tests:\n"
        f"  custom_nodes: {json.dumps(str(comfy_nodes_dir))}\n"
        f"  transcoders: {json.dumps(str(run_dir / 'models' / 'transcoders'))}\n"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--extra-model-paths-config", str(yaml_path),
           "--output-directory", str(run_dir / "output"), "--input-directory", str(run_dir / "input"),
           "--user-directory", str(run_dir / "user"), "--temp-directory", str(run_dir / "temp"),
           "--database-url", f"sqlite:///{run_dir / 'user' / 'comfyui.db'}",
           "--disable-auto-launch", "--disable-api-nodes"]
    if FRONTEND_ROOT:
        cmd += ["--front-end-root", FRONTEND_ROOT]
    log_path = run_dir / "comfyui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, env=_child_env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = ComfyServer(url, proc, run_dir, log_path, comfy_nodes_dir, run_dir / "models")
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} before answering\n{server.log()[-6000:]}")
            try:
                with urllib.request.urlopen(url + "/object_info", timeout=10) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {url}/object_info after {SERVER_START_TIMEOUT:.0f}s\n"
                            f"{server.log()[-6000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if os.environ.get("COMFYUI_KEEP_RUN_DIR"):
            print(f"\ncomfy_server: kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
