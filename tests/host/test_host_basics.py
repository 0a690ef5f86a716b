"""The harness itself, and the pack's good manners inside a real ComfyUI.

- the tiny checkpoints are detected as SD15 / SD15_instructpix2pix, with SD1.5's block ids;
- the server starts with the pack, and every ContextEdit node is listed with a description and a
  tooltip on every input and output;
- stock txt2img and InstructPix2Pix graphs run on the tiny checkpoints;
- loading the pack changes no core node, and does not fail to import.
"""

import re

import contextedit
import numpy as np
import pytest
from host.graphs import ip2p_graph, txt2img_graph
from host.server import PACK_LINK_NAME, ComfyServer
from host.tiny_checkpoints import IP2P_NAME, SD15_NAME, detect_model_types
from PIL import Image

NODE_PREFIX = "ContextEdit"


def _pack_nodes(object_info):
    return {k: v for k, v in object_info.items() if k.startswith(NODE_PREFIX)}


def _declared_node_count():
    return sum(len(class_names) for _, class_names in contextedit.NODE_MODULES)


# ----------------------------------------------------------------------------- checkpoints


def test_tiny_checkpoints_are_detected_as_sd15(comfyui_root, tiny_checkpoints):
    detected = detect_model_types([tiny_checkpoints.sd15, tiny_checkpoints.ip2p], comfyui_root)
    assert detected[SD15_NAME] == {"model": "SD15", "in_channels": 4, "clip": True, "vae": "TAESD"}
    assert detected[IP2P_NAME] == {"model": "SD15_instructpix2pix", "in_channels": 8,
                                   "clip": True, "vae": "TAESD"}


def test_tiny_checkpoints_have_sd15_attention_block_ids(tiny_checkpoints):
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoints.sd15), "pt") as f:
        keys = list(f.keys())
    pattern = re.compile(r"model\.diffusion_model\.(input_blocks\.\d+|middle_block|output_blocks\.\d+)"
                         r"\.1\.transformer_blocks\.0\.attn2\.to_k\.weight$")
    blocks = {m.group(1) for m in map(pattern.match, keys) if m}
    expected = ({f"input_blocks.{i}" for i in (1, 2, 4, 5, 7, 8)} | {"middle_block"}
                | {f"output_blocks.{i}" for i in range(3, 12)})
    assert blocks == expected


# ----------------------------------------------------------------------------- the pack's nodes


def test_pack_loads_without_import_failure(comfy_server):
    failures = [line for line in comfy_server.log_text().splitlines()
                if PACK_LINK_NAME in line
                and any(m in line for m in ("IMPORT FAILED", "Cannot import", "Error while", "Traceback"))]
    assert not failures, "\n".join(failures) + "\n--- server log tail ---\n" + comfy_server.log_tail(80)


def test_every_declared_node_is_listed(comfy_server):
    info = comfy_server.initial_object_info
    ours = _pack_nodes(info)
    from_pack = {k for k, v in info.items() if PACK_LINK_NAME in str(v.get("python_module", ""))}
    assert from_pack == set(ours), "pack nodes must all (and only) use the ContextEdit prefix"
    assert len(ours) == _declared_node_count(), (
        f"NODE_MODULES declares {_declared_node_count()} nodes, /object_info lists {sorted(ours)}\n"
        f"--- server log tail ---\n{comfy_server.log_tail(40)}")


def test_every_pack_node_is_documented(comfy_server):
    problems = []
    for node_id, node in _pack_nodes(comfy_server.initial_object_info).items():
        if not str(node.get("description") or "").strip():
            problems.append(f"{node_id}: no description")
        if not str(node.get("category", "")).startswith(NODE_PREFIX):
            problems.append(f"{node_id}: category {node.get('category')!r} is not under ContextEdit/")
        for section in ("required", "optional"):
            for name, spec in (node.get("input", {}).get(section) or {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(opts.get("tooltip") or "").strip():
                    problems.append(f"{node_id}: input {name!r} has no tooltip")
        outputs = node.get("output", [])
        tooltips = list(node.get("output_tooltips") or [])
        names = node.get("output_name", outputs)
        for i, name in enumerate(names):
            if i >= len(tooltips) or not str(tooltips[i] or "").strip():
                problems.append(f"{node_id}: output {i} ({name}) has no tooltip")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- stock graphs


def test_stock_txt2img_runs(comfy_server, tiny_checkpoints):
    graph = txt2img_graph(tiny_checkpoints.sd15_name, width=64, height=64, steps=2)
    entry = comfy_server.run(graph, timeout=300)
    images = comfy_server.output_images(entry, graph.refs["save"])
    assert len(images) == 1
    image = comfy_server.get_image(**images[0])
    assert image.size == (64, 64)


def test_stock_instructpix2pix_runs(comfy_server, tiny_checkpoints):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    name = comfy_server.upload_image(source, name="contextedit_ip2p_source.png")
    graph = ip2p_graph(tiny_checkpoints.ip2p_name, name, steps=2)
    entry = comfy_server.run(graph, timeout=300)
    images = comfy_server.output_images(entry, graph.refs["save"])
    assert len(images) == 1
    pixels = comfy_server.get_image(**images[0], as_array=True)
    assert pixels.shape == (64, 96, 3)


# ----------------------------------------------------------------------------- no harm to core


@pytest.mark.slow
def test_pack_changes_no_core_node(comfy_server, comfyui_root, tiny_checkpoints, tmp_path_factory):
    """Every node of a pack-less server exists, identically defined, in the server with the pack."""
    with ComfyServer(comfyui_root, tmp_path_factory.mktemp("comfy_no_pack"),
                     checkpoints_dir=tiny_checkpoints.folder, custom_nodes={},
                     model_dirs=comfy_server.model_dirs, input_dir=comfy_server.input_dir,
                     output_dir=comfy_server.output_dir, name="comfy_without_pack") as bare:
        core = bare.object_info()
        with_pack = comfy_server.object_info()  # same folders, same moment: same file lists
    assert "KSampler" in core and not _pack_nodes(core)
    missing = sorted(set(core) - set(with_pack))
    changed = sorted(k for k in core if k in with_pack and core[k] != with_pack[k])
    assert not missing, f"core nodes missing once the pack is loaded: {missing}"
    assert not changed, f"core node definitions changed by the pack: {changed}"
