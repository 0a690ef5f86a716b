"""On a live ComfyUI: "Unload models" (POST /free with unload_models) makes the pack let go of the
metric networks it caches, and POST /interrupt stops Edit Metrics / Rewrite Edit Instruction while
they run (their progress reaches the websocket), after which the next run succeeds.

The cache is observed from outside, without a debug route: a network file is replaced under the
same name; while the pack still holds the network it read, the score does not change."""

import asyncio
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from fixtures.tiny_metrics import make_tiny_metric_models
from fixtures.tiny_models import SEED, make_tiny_qwen2_vl
from PIL import Image

VLM = "tiny-qwen2.5-vl"
DINO = "dino_vitb8.safetensors"  # PIE-Bench's structure distance reads it


@pytest.fixture(scope="module")
def metrics_folder(comfy_server, generated_dir):
    """The tiny networks linked into the server's default models/metrics folder (registered by the pack)."""
    tiny = make_tiny_metric_models(generated_dir)
    folder = Path(comfy_server.base_dir) / "models" / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for item in tiny.iterdir():
        if not (folder / item.name).exists():
            os.symlink(item, folder / item.name)
    return folder


@pytest.fixture(scope="module")
def pair_names(comfy_server):
    rng = np.random.default_rng(11)
    src = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    edited = src.copy()
    edited[10:30, 20:40] = [30, 200, 40]
    return (comfy_server.upload_image(Image.fromarray(src), name="free_src.png"),
            comfy_server.upload_image(Image.fromarray(edited), name="free_edited.png"))


def metrics_graph(src, edited, caption, metric_set="PIE-Bench", repeat=1):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": src}},
        "2": {"class_type": "LoadImage", "inputs": {"image": edited}},
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": repeat}},
        "3": {"class_type": "ContextEditEditMetrics",
              "inputs": {"source": ["4", 0], "edited": ["2", 0], "metric_set": metric_set,
                         "source_caption": "a photo", "target_caption": caption}},
    }


def structure_distance(entry):
    table = entry["outputs"]["3"]["text"][0]
    row = next(line for line in table.splitlines() if line.startswith("| Structure distance"))
    return float(row.split("|")[2])


def free(server, **flags):
    server.http.post(f"{server.url}/free", json=flags, timeout=30).raise_for_status()


def test_unload_models_releases_the_metric_networks(comfy_server, metrics_folder, pair_names, generated_dir):
    src, edited = pair_names
    link = metrics_folder / DINO
    original = Path(os.readlink(link))
    other = make_tiny_metric_models(generated_dir, name="tiny-metrics-reseeded", seed=SEED + 1000) / DINO
    first = structure_distance(comfy_server.run(metrics_graph(src, edited, "a caption"), timeout=600))
    try:
        link.unlink()
        os.symlink(other, link)  # same name, other weights
        # another caption makes ComfyUI run the node again; the pack's cached DINO still scores it
        assert structure_distance(comfy_server.run(metrics_graph(src, edited, "another caption"), timeout=600)) == first
        free(comfy_server, unload_models=True)
        # the server applies the flag between prompts: after this (all cached) prompt it has
        comfy_server.run(metrics_graph(src, edited, "a caption"), timeout=600)
        again = structure_distance(comfy_server.run(metrics_graph(src, edited, "a third caption"), timeout=600))
        # before the fix the cache kept the first network for the process's life: `again == first`
        assert again != first
    finally:
        link.unlink()
        os.symlink(original, link)
        free(comfy_server, unload_models=True)
        comfy_server.run(metrics_graph(src, edited, "a caption"), timeout=600)


class Messages:
    """The server's websocket messages for this client (progress, execution_interrupted, ...)."""

    def __init__(self, server):
        self.url = f"{server.url.replace('http', 'ws', 1)}/ws?clientId={server.client_id}"
        self.queue = queue.Queue()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self):
        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            self.ready.set()
            while not self.stop.is_set():
                try:
                    message = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return
                    continue
                self.queue.put(json.loads(message.data))

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30), "no websocket connection"
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)

    def wait_for(self, predicate, timeout):
        """Messages up to and including the first one ``predicate`` accepts."""
        seen, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                message = self.queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            seen.append(message)
            if predicate(message):
                return seen
        raise AssertionError(f"no such message within {timeout} s; saw {[m.get('type') for m in seen][-20:]}")


def progress_of(node):
    return lambda m: m.get("type") == "progress" and m["data"].get("node") == node


def interrupt_while_running(server, graph, node, after):
    """Queue ``graph``, POST /interrupt once ``node`` reported progress ``after``; returns (progress
    values seen, the value when interrupting, the progress total, the execution_interrupted data)."""
    with Messages(server) as messages:
        prompt_id = server.queue_prompt(graph)

        def ended(m):
            return m.get("type") in ("execution_interrupted", "execution_success", "execution_error") \
                and m["data"].get("prompt_id") == prompt_id

        seen = messages.wait_for(lambda m: ended(m) or progress_of(node)(m) and m["data"]["value"] >= after,
                                 timeout=600)
        assert not ended(seen[-1]), f"the run ended without progress {after} from node {node}: " \
                                    f"{[m.get('type') for m in seen]}"
        at, total = seen[-1]["data"]["value"], seen[-1]["data"]["max"]
        server.interrupt()
        rest = messages.wait_for(ended, timeout=600)
    values = [m["data"]["value"] for m in seen + rest if progress_of(node)(m)]
    return values, at, total, rest[-1]


def test_interrupt_stops_edit_metrics_and_the_next_run_succeeds(comfy_server, metrics_folder, pair_names):
    src, edited = pair_names
    values, at, total, end = interrupt_while_running(
        comfy_server, metrics_graph(src, edited, "interrupted", repeat=40), node="3", after=2)
    assert end["type"] == "execution_interrupted" and end["data"]["node_id"] == "3", end
    # stopped inside the node, long before its 40 pairs (the in-process test pins "within one pair")
    assert total == 40 and max(values) < total // 2, (at, values)
    entry = comfy_server.run(metrics_graph(src, edited, "after the interrupt", repeat=2), timeout=600)
    assert structure_distance(entry) > 0


def test_interrupt_stops_rewrite_and_the_next_run_succeeds(comfy_server, generated_dir, pair_names):
    llm = Path(comfy_server.model_dirs["LLM"]) / VLM
    if not llm.exists():
        shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), llm)
    src, edited = pair_names

    def graph(instruction):
        return {
            "1": {"class_type": "LoadImage", "inputs": {"image": src}},
            "2": {"class_type": "LoadImage", "inputs": {"image": edited}},
            "5": {"class_type": "ContextEditLoadVLM", "inputs": {"model_name": VLM, "dtype": "auto"}},
            "6": {"class_type": "ContextEditRewriteEditInstruction",
                  "inputs": {"vlm": ["5", 0], "source": ["1", 0], "edited": ["2", 0], "instruction": instruction,
                             "task_type": "remove", "score": True, "threshold": 6.0}},
            "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 5]}},
        }

    values, at, total, end = interrupt_while_running(comfy_server, graph("remove the car"), node="6", after=3)
    assert end["type"] == "execution_interrupted" and end["data"]["node_id"] == "6", end
    # 512 tokens of budget (256 rewrite + 2 x 128 score): stopped inside the first reply
    assert total == 512 and max(values) < 256, (at, values)
    after = graph("remove the red car")
    after["6"]["inputs"]["score"] = False  # the rewrite alone: a shorter run
    entry = comfy_server.run(after, timeout=600)
    assert "simple: remove the red car" in "\n".join(entry["outputs"]["7"]["text"])
