"""A real ComfyUI server for host tests, and a small HTTP client for it.

``ComfyServer`` starts ``main.py`` from a ComfyUI checkout on 127.0.0.1 (a free port, CPU only,
no API nodes, in-memory database) with every directory it writes to under a temp folder, and
an extra_model_paths YAML that
- points ``checkpoints:`` at the generated tiny checkpoints,
- points ``sams``, ``LLM``, ``contextedit``, ``clip_vision``, ``text_encoders``, ``ipadapter``,
  ``diffusion_models``, ``vae`` and ``vae_approx`` at temp folders tests can fill
  (``server.model_dirs[name]``),
- points ``custom_nodes:`` at a temp folder holding a symlink to this checkout, so ComfyUI loads
  the pack exactly as it would from ``ComfyUI/custom_nodes/comfyui-contextedit``.

The server's stdout/stderr go to ``server.log_path``; errors raised here quote its tail.

    with ComfyServer(comfyui_path, workdir, checkpoints_dir=...) as server:
        entry = server.run(graph)              # queue + wait; the /history entry
        image = server.get_image(**server.output_images(entry)[0])
"""

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_LINK_NAME = "comfyui-contextedit"
MODEL_FOLDERS = ("sams", "LLM", "contextedit", "clip_vision", "text_encoders", "ipadapter",
                 "diffusion_models", "vae", "vae_approx")


class ComfyServerError(RuntimeError):
    """The server failed to start, rejected a prompt, or a prompt failed / timed out."""


class PromptRejected(ComfyServerError):
    """POST /prompt answered 400; ``.error`` and ``.node_errors`` hold the server's JSON."""

    def __init__(self, message, error=None, node_errors=None):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors or {}


class PromptFailed(ComfyServerError):
    """The prompt ran and ended in an error (or did not finish in time)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status or {}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frontend_package_available():
    return importlib.util.find_spec("comfyui_frontend_package") is not None


def format_status_messages(messages):
    """History status messages, one line each; an execution_error in full (node, exception, traceback)."""
    lines = []
    for kind, data in messages or []:
        if kind == "execution_error":
            lines.append(f"execution_error in node {data.get('node_id')} ({data.get('node_type')}): "
                         f"{data.get('exception_type')}: {data.get('exception_message')}")
            lines.extend("    " + line.rstrip() for line in "".join(data.get("traceback") or []).splitlines())
        elif kind == "execution_interrupted":
            lines.append(f"execution_interrupted in node {data.get('node_id')} ({data.get('node_type')})")
        else:
            lines.append(kind)
    return "\n".join(lines) or "<no status messages>"


class ComfyServer:
    """A ComfyUI process plus client helpers. Use as a context manager (or start()/stop()).

    workdir: a fresh folder for everything the server writes (base/input/output/user/temp dirs,
        model folders, the YAML, the log).
    checkpoints_dir: folder listed under ``checkpoints:``.
    custom_nodes: {link name: target folder} linked into the custom_nodes folder; default links
        this checkout as ``comfyui-contextedit``. Pass ``{}`` for a server without the pack.
    model_dirs / input_dir / output_dir: reuse another server's folders (so two servers list
        the same files), instead of creating new ones under workdir.
    extra_args: more ComfyUI command-line flags.
    """

    def __init__(self, comfyui_path, workdir, *, checkpoints_dir=None, custom_nodes=None,
                 model_dirs=None, input_dir=None, output_dir=None, extra_args=(),
                 startup_timeout=120.0, name="comfy"):
        self.comfyui_path = Path(comfyui_path)
        self.workdir = Path(workdir)
        self.name = name
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else self.workdir / "checkpoints"
        self.custom_nodes = {PACK_LINK_NAME: REPO_ROOT} if custom_nodes is None else dict(custom_nodes)
        self.base_dir = self.workdir / "base"
        self.input_dir = Path(input_dir) if input_dir else self.workdir / "input"
        self.output_dir = Path(output_dir) if output_dir else self.workdir / "output"
        self.user_dir = self.workdir / "user"
        self.temp_dir = self.workdir / "temp"
        self.custom_nodes_dir = self.workdir / "custom_nodes"
        self.model_dirs = ({k: Path(v) for k, v in model_dirs.items()} if model_dirs
                           else {k: self.workdir / "models" / k for k in MODEL_FOLDERS})
        self.yaml_path = self.workdir / "extra_model_paths.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.port = None
        self.process = None
        self._log_file = None
        self.http = requests.Session()
        self.client_id = uuid.uuid4().hex

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _prepare_dirs(self):
        # main.py lists <base>/custom_nodes (prestartup scripts) and fails if it is missing
        for d in (self.base_dir / "custom_nodes", self.input_dir, self.output_dir, self.user_dir, self.temp_dir,
                  self.custom_nodes_dir, self.checkpoints_dir, *self.model_dirs.values()):
            d.mkdir(parents=True, exist_ok=True)
        for link_name, target in self.custom_nodes.items():
            link = self.custom_nodes_dir / link_name
            if not link.is_symlink():
                link.symlink_to(Path(target).resolve(), target_is_directory=True)
        section = {"checkpoints": str(self.checkpoints_dir)}
        section.update({k: str(v) for k, v in self.model_dirs.items()})
        section["custom_nodes"] = str(self.custom_nodes_dir)
        # absolute paths, no base_path: written by hand to avoid a yaml dependency in the writer
        lines = ["contextedit_tests:"] + [f"    {k}: {json.dumps(v)}" for k, v in section.items()]
        self.yaml_path.write_text("\n".join(lines) + "\n")

    def command(self):
        cmd = [
            sys.executable, "main.py",
            "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-api-nodes", "--dont-print-server",
            "--database-url", "sqlite:///:memory:",
            "--base-directory", str(self.base_dir),
            "--input-directory", str(self.input_dir),
            "--output-directory", str(self.output_dir),
            "--user-directory", str(self.user_dir),
            "--temp-directory", str(self.temp_dir),
            "--extra-model-paths-config", str(self.yaml_path),
        ]
        if not frontend_package_available():
            empty = self.workdir / "frontend"
            empty.mkdir(exist_ok=True)
            cmd += ["--front-end-root", str(empty)]
        return cmd + self.extra_args

    def start(self):
        self._prepare_dirs()
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - open for the process's lifetime
        self.process = subprocess.Popen(
            self.command(), cwd=str(self.comfyui_path), env=env, stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.started_in = self._wait_ready()
        return self

    def _wait_ready(self):
        t0 = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {self.process.returncode} during startup; "
                    f"log tail:\n{self.log_tail(80)}")
            try:
                if self.http.get(f"{self.url}/system_stats", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            if time.monotonic() - t0 > self.startup_timeout:
                self.stop()
                raise ComfyServerError(
                    f"ComfyUI did not answer on {self.url} within {self.startup_timeout:.0f} s; "
                    f"log tail:\n{self.log_tail(80)}")
            time.sleep(0.5)

    def stop(self):
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            # the process leads its own session (start_new_session): signal only that group
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.http.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n=80):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no server log>"
        return "\n".join(text.splitlines()[-n:])

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ client

    def _get(self, route, **kw):
        r = self.http.get(f"{self.url}{route}", timeout=kw.pop("timeout", 60), **kw)
        r.raise_for_status()
        return r

    def object_info(self, node_class=None):
        route = "/object_info" if node_class is None else f"/object_info/{node_class}"
        return self._get(route).json()

    def upload_image(self, image, name=None, subfolder="", overwrite=True):
        """Upload a file path or PIL image to the input folder; returns the LoadImage value."""
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            data, name = path.read_bytes(), name or path.name
        else:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data, name = buf.getvalue(), name or f"upload_{uuid.uuid4().hex[:8]}.png"
        r = self.http.post(
            f"{self.url}/upload/image",
            files={"image": (name, data, "image/png")},
            data={"overwrite": "true" if overwrite else "false", "type": "input", "subfolder": subfolder},
            timeout=60,
        )
        if r.status_code != 200:
            raise ComfyServerError(f"upload of {name} failed: HTTP {r.status_code} {r.text[:500]}")
        info = r.json()
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue_prompt(self, graph, extra_data=None, prompt_id=None):
        """POST /prompt; returns the prompt id. Raises PromptRejected (with node_errors) on 400."""
        body = {"prompt": graph, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        r = self.http.post(f"{self.url}/prompt", json=body, timeout=60)
        if r.status_code == 400:
            payload = r.json()
            raise PromptRejected(
                f"prompt rejected: {json.dumps(payload.get('error'), indent=1)}\n"
                f"node_errors: {json.dumps(payload.get('node_errors'), indent=1)}",
                payload.get("error"), payload.get("node_errors"))
        r.raise_for_status()
        return r.json()["prompt_id"]

    def wait(self, prompt_id, timeout=300.0, poll=0.25):
        """Poll /history/{id} until the prompt finished; returns its history entry.

        Raises PromptFailed with the status messages and the server log tail when it ended in
        an error, did not finish within ``timeout`` seconds, or the server died.
        """
        t0 = time.monotonic()
        while True:
            entry = self._get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry is not None:
                status = entry.get("status", {})
                if status.get("status_str") == "error" or not status.get("completed", False):
                    raise PromptFailed(
                        f"prompt {prompt_id} failed ({status.get('status_str')}):\n"
                        f"{format_status_messages(status.get('messages'))}\n"
                        f"--- server log tail ---\n{self.log_tail(80)}", status)
                return entry
            if not self.alive():
                raise PromptFailed(f"ComfyUI died while running {prompt_id}; log tail:\n{self.log_tail(80)}")
            if time.monotonic() - t0 > timeout:
                queue = self._get("/queue").json()
                raise PromptFailed(
                    f"prompt {prompt_id} did not finish within {timeout:.0f} s; "
                    f"queue: running={len(queue.get('queue_running', []))} "
                    f"pending={len(queue.get('queue_pending', []))}\n"
                    f"server log tail:\n{self.log_tail(80)}")
            time.sleep(poll)

    def run(self, graph, timeout=300.0, extra_data=None):
        """Queue ``graph`` and wait for it; returns the /history entry (outputs, status)."""
        return self.wait(self.queue_prompt(graph, extra_data=extra_data), timeout=timeout)

    def interrupt(self, prompt_id=None):
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self.http.post(f"{self.url}/interrupt", json=body, timeout=30).raise_for_status()

    @staticmethod
    def output_images(entry, node_id=None):
        """Image references ({filename, subfolder, type}) in a history entry, optionally of one node."""
        outputs = entry.get("outputs", {})
        nodes = [str(node_id)] if node_id is not None else list(outputs)
        return [{"filename": i["filename"], "subfolder": i.get("subfolder", ""), "type": i.get("type", "output")}
                for n in nodes for i in outputs.get(n, {}).get("images", [])]

    def get_image(self, filename, subfolder="", type="output", as_array=False):
        """GET /view; a PIL image (RGB/RGBA as saved) or, with as_array, a uint8 numpy array."""
        from PIL import Image

        r = self._get("/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        image = Image.open(io.BytesIO(r.content))
        image.load()
        if as_array:
            import numpy as np

            return np.asarray(image)
        return image
