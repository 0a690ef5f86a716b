"""ContextEdit Edit Metrics inside a real ComfyUI server: runs headless in a workflow with the tiny
metric networks in models/metrics, reports what the engine computes, and returns a plot image."""

import os
from pathlib import Path

import numpy as np
import pytest
from contextedit.nodes.metrics.models import MetricModels
from contextedit.nodes.metrics.report import to_table
from contextedit.nodes.metrics.suites import compute
from fixtures.tiny_metrics import make_tiny_metric_models
from PIL import Image

SRC_CAPTION, TGT_CAPTION = "a cat on the red sofa", "a dog on the red sofa"


@pytest.fixture(scope="module")
def metric_models(comfy_server, generated_dir):
    """The tiny networks linked into the server's default models/metrics folder (registered by the pack)."""
    tiny = make_tiny_metric_models(generated_dir)
    folder = Path(comfy_server.base_dir) / "models" / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for item in tiny.iterdir():
        link = folder / item.name
        if not link.exists():
            os.symlink(item, link)
    return tiny


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(5)
    src = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    edited = src.copy()
    edited[10:30, 20:40] = [30, 200, 40]
    edited[40:44, 0:10] = 0  # a small change outside the mask too
    mask = np.zeros((48, 64), np.float32)
    mask[8:32, 18:42] = 1
    return src, edited, mask


def graph(src_name, edited_name, metric_set, source_caption=SRC_CAPTION):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": src_name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": edited_name}},
        "3": {"class_type": "ContextEditEditMetrics",
              "inputs": {"source": ["1", 0], "edited": ["2", 0], "mask": ["1", 1], "metric_set": metric_set,
                         "source_caption": source_caption, "target_caption": TGT_CAPTION}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 2], "filename_prefix": "metrics_plot"}},
    }


def upload(server, pair):
    src, edited, mask = pair
    rgba = np.dstack([src, np.where(mask > 0, 0, 255).astype(np.uint8)])  # LoadImage: MASK = 1 - alpha
    return (server.upload_image(Image.fromarray(rgba, "RGBA"), name="metrics_src.png"),
            server.upload_image(Image.fromarray(edited), name="metrics_edited.png"))


def test_edit_metrics_node_runs_headless_and_plots(comfy_server, metric_models, pair):
    names = upload(comfy_server, pair)
    entry = comfy_server.run(graph(*names, "PIE-Bench"), timeout=300)
    table = entry["outputs"]["3"]["text"][0]
    src, edited, mask = pair
    expected = to_table({"pie": compute("pie", src, edited, MetricModels.from_dirs([metric_models]), mask=mask,
                                        source_caption=SRC_CAPTION, target_caption=TGT_CAPTION)})
    assert table == expected  # same engine, same CPU, same 8-bit inputs: the same printed digits
    assert "| PSNR background (dB) |" in table and "DirectInversion+P2P 27.22" in table
    plot = comfy_server.get_image(**comfy_server.output_images(entry, "4")[0], as_array=True)
    assert plot.ndim == 3 and plot.shape[2] == 3 and min(plot.shape[:2]) > 100
    assert plot.std() > 10  # bars, text and axes drawn, not a blank canvas


def test_all_sets_run_and_a_missing_caption_names_the_input(comfy_server, metric_models, pair):
    names = upload(comfy_server, pair)
    entry = comfy_server.run(graph(*names, "All (PIE-Bench + MagicBrush + Emu Edit)"), timeout=300)
    table = entry["outputs"]["3"]["text"][0]
    assert "### PIE-Bench" in table and "### MagicBrush" in table and "### Emu Edit" in table
    from host.server import PromptFailed

    with pytest.raises(PromptFailed, match="source_caption"):
        comfy_server.run(graph(*names, "Emu Edit", source_caption=""), timeout=300)
