"""A small client for a running ComfyUI's HTTP API (standard library only).

Routes used: ``POST /upload/image`` (multipart), ``POST /prompt``, ``GET /history/{id}``,
``GET /view``, ``POST /interrupt``, ``POST /queue`` (delete a pending prompt).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


class ComfyError(RuntimeError):
    """The server refused or failed a request, a prompt failed, or it did not finish in time."""


def _status_text(status: dict) -> str:
    lines = []
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            lines.append(f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_type')}: "
                         f"{data.get('exception_message')}".strip())
        elif kind == "execution_interrupted":
            lines.append("interrupted")
    return "; ".join(lines) or str(status.get("status_str"))


class ComfyClient:
    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, route, data=None, headers=None, method=None):
        request = urllib.request.Request(self.url + route, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            raise ComfyError(f"{method or ('POST' if data else 'GET')} {route}: HTTP {error.code} {body[:2000]}") from None
        except urllib.error.URLError as error:
            raise ComfyError(f"cannot reach ComfyUI at {self.url} ({error.reason}); is the server running?") from None

    def _json(self, route, payload=None):
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        return json.loads(self._request(route, data, headers) or b"null")

    def upload_image(self, data: bytes, name: str, subfolder: str = "") -> str:
        """Upload PNG bytes to the input folder (overwriting); returns the LoadImage value."""
        boundary = uuid.uuid4().hex
        parts = []
        for field, value in (("overwrite", "true"), ("type", "input"), ("subfolder", subfolder)):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        info = json.loads(self._request("/upload/image", b"".join(parts),
                                        {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue(self, graph: dict) -> str:
        try:
            return self._json("/prompt", {"prompt": graph, "client_id": self.client_id})["prompt_id"]
        except ComfyError as error:
            raise ComfyError(f"prompt rejected: {error}") from None

    def history(self, prompt_id: str):
        return self._json(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float, poll: float = 0.2) -> dict:
        """The history entry once the prompt finished; ComfyError when it failed or timed out
        (a timed-out prompt is removed from the queue or interrupted, so the next one can run)."""
        t0 = time.monotonic()
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or not status.get("completed", False):
                    raise ComfyError(f"prompt failed: {_status_text(status)}")
                return entry
            if time.monotonic() - t0 > timeout:
                self.cancel(prompt_id)
                raise ComfyError(f"timed out after {timeout:g} s (prompt {prompt_id} cancelled)")
            time.sleep(poll)

    def cancel(self, prompt_id: str) -> None:
        try:
            self._json("/queue", {"delete": [prompt_id]})
            self._json("/interrupt", {"prompt_id": prompt_id})
        except ComfyError:
            pass

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self._request(f"/view?{query}")


def output_images(entry: dict, node_id=None) -> list:
    """Image references of a history entry (of one node when given), in node order."""
    outputs = entry.get("outputs") or {}
    nodes = [str(node_id)] if node_id is not None else sorted(outputs, key=lambda k: (len(k), k))
    return [img for n in nodes for img in (outputs.get(n) or {}).get("images", [])]
