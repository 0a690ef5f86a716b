"""workflows/context_aware_edit_qwen.json (Qwen-Image-Edit 2509) against a live ComfyUI, and its
chain of nodes run in-process on tiny models.

Its stock text encoder (Qwen2.5-VL 7B through CLIPLoader type qwen_image) cannot run here, so the
shipped files are checked against the server's /object_info: every node class exists, every input
name exists for its class and every required one is given, every link joins an output to an input
of the same type (or an any-type '*' input, PreviewAny's), and every widget value is one the input accepts. The model files themselves are
user-supplied: for the loaders' file-name inputs only the file type is checked. The nodes after
the loaders then run in-process in the workflow's order and with its settings, on the tiny
Qwen-Image DiT and the tiny Qwen-Image text encoder of tests/fixtures/tiny_dit.py.
"""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from host.inprocess import dit_confinement_of, import_comfy, pack_module

REPO = Path(__file__).resolve().parents[2]
NAME = "context_aware_edit_qwen.json"
API = json.loads((REPO / "workflows" / "api" / NAME).read_text())
UI = json.loads((REPO / "workflows" / NAME).read_text())

# the files a user puts in models/ (README, "Qwen-Image-Edit"): not on the test server
FILE_INPUTS = {("UNETLoader", "unet_name"): ".safetensors", ("CLIPLoader", "clip_name"): ".safetensors",
               ("VAELoader", "vae_name"): ".safetensors", ("LoadImage", "image"): ".png",
               ("ContextEditLoadVLM", "model_name"): "", ("ContextEditLoadSAM", "sam_name"): ".pth"}


@pytest.fixture(scope="module")
def info(comfy_server):
    return comfy_server.initial_object_info


def is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def inputs_of(schema):
    return {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}


def input_type(spec):
    """(type, choices or None) of an /object_info input spec (V1 [choices] or V3 'COMBO' + options)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        return "COMBO", kind
    if kind == "COMBO":
        return "COMBO", options.get("options", [])
    return kind, None


def check_widget(cls, name, spec, value):
    kind, choices = input_type(spec)
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    where = f"{cls}.{name} = {value!r}"
    if (cls, name) in FILE_INPUTS:
        assert isinstance(value, str) and value.endswith(FILE_INPUTS[(cls, name)]) and value, where
    elif kind == "COMBO":
        assert value in choices, f"{where} not in {choices}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    else:
        pytest.fail(f"{where}: a value for a {kind} input, which only a link can give")
    if kind in ("INT", "FLOAT"):
        assert options.get("min", value) <= value <= options.get("max", value), f"{where} outside its range"


def test_the_api_workflow_matches_the_live_object_info(info):
    for nid, node in API.items():
        cls = node["class_type"]
        assert cls in info, f"node {nid}: no class {cls} on the server"
        schema = info[cls]
        specs = inputs_of(schema)
        for name, value in node["inputs"].items():
            assert name in specs, f"node {nid} ({cls}): no input {name!r}"
            if is_link(value):
                src, slot = value
                assert src in API, f"node {nid}.{name}: link from missing node {src}"
                out_types = info[API[src]["class_type"]]["output"]
                assert slot < len(out_types), f"node {nid}.{name}: {API[src]['class_type']} has no output {slot}"
                kind, _ = input_type(specs[name])
                assert kind in (out_types[slot], "*"), (f"node {nid}.{name} ({kind}) is fed "
                                                 f"{out_types[slot]} by {API[src]['class_type']}")
            else:
                check_widget(cls, name, specs[name], value)
        missing = set(schema["input"].get("required", {})) - set(node["inputs"])
        assert not missing, f"node {nid} ({cls}) lacks required inputs {missing}"


def test_the_ui_workflow_is_the_api_one_laid_out_from_the_live_object_info(info):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        build_ui = importlib.import_module("api_to_ui").build_ui
    finally:
        sys.path.remove(str(REPO / "tools"))
    assert build_ui(REPO / "workflows" / "api" / NAME, info) == UI
    # and its links' types agree with both ends on this server
    nodes = {n["id"]: n for n in UI["nodes"]}
    for _lid, src, slot, dst, dslot, kind in UI["links"]:
        assert info[nodes[src]["type"]]["output"][slot] == kind
        entry = nodes[dst]["inputs"][dslot]
        assert entry["type"] in (kind, "*") and entry["name"] in inputs_of(info[nodes[dst]["type"]])


def test_the_graph_is_the_qwen_image_edit_path_with_our_node_in_front():
    by_class = {}
    for nid, node in API.items():
        by_class.setdefault(node["class_type"], []).append(nid)

    def src(nid, name):
        return API[nid]["inputs"][name]

    (mask,) = by_class["ContextEditAttentionMask"]
    (sampler,) = by_class["KSampler"]
    (encode_plus,) = by_class["TextEncodeQwenImageEditPlus"]
    (scaled,) = by_class["ImageScaleToTotalPixels"]
    assert API[src(mask, "model")[0]]["class_type"] == "UNETLoader"
    assert API[src(mask, "clip")[0]]["inputs"]["type"] == "qwen_image"
    assert src(mask, "image") == [scaled, 0] and src(encode_plus, "image1") == [scaled, 0]
    norm = src(sampler, "model")[0]     # as in ComfyUI's own Qwen-Image-Edit 2509 template
    assert API[norm]["class_type"] == "CFGNorm"
    aura = src(norm, "model")[0]
    assert API[aura]["class_type"] == "ModelSamplingAuraFlow" and src(aura, "model") == [mask, 0]
    pos, neg = src(sampler, "positive")[0], src(sampler, "negative")[0]
    assert src(pos, "conditioning") == [mask, 1] and src(neg, "conditioning") == [encode_plus, 0]
    assert API[encode_plus]["inputs"]["prompt"] == ""
    assert src(pos, "latent") == src(neg, "latent") == src(sampler, "latent_image")
    # the masks and the plan come from the VLM check and SAM on the same scaled image
    masks = src(mask, "masks")[0]
    assert API[masks]["class_type"] == "ContextEditDecodeMasks" and src(masks, "image") == [scaled, 0]
    assert src(mask, "plan") == src(masks, "plan")


def test_the_nodes_after_the_loaders_run_in_process_on_tiny_models(comfyui_root):
    """The workflow's chain with its own settings: Attention Mask (the tiny Qwen-Image DiT, the tiny
    Qwen-Image text encoder, two masks, the image) -> ReferenceLatent; TextEncodeQwenImageEditPlus
    with the empty prompt -> ReferenceLatent; ModelSamplingAuraFlow -> CFGNorm -> KSampler. The confinement
    runs inside that sampler (cfg > 1, so the negative is batched alongside and left alone)."""
    from fixtures import tiny_dit

    import_comfy(comfyui_root)
    node = pack_module(None, "nodes.attention.node")
    nodes_qwen = importlib.import_module("comfy_extras.nodes_qwen")
    edit_model = importlib.import_module("comfy_extras.nodes_edit_model")
    import nodes as comfy_nodes

    def result(out):
        return out.args if hasattr(out, "args") else (out.result if hasattr(out, "result") else out)

    by_class = {n["class_type"]: n["inputs"] for n in API.values()}
    model, clip = tiny_dit.tiny_qwen_image(), tiny_dit.tiny_qwen_vl_clip()
    image = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(2))
    latent = {"samples": torch.randn(1, 16, 1, 12, 16, generator=torch.Generator().manual_seed(3))}
    m = torch.zeros(2, 96, 128)
    m[0, :, :64] = 1.0
    m[1, :48, 64:] = 1.0
    widgets = {k: v for k, v in by_class["ContextEditAttentionMask"].items() if not is_link(v)}
    widgets["prompt"] = "make the hat red\nadd a dog"
    patched, positive, _ = result(node.AttentionMask.execute(model=model, clip=clip, masks=m, image=image, **widgets))
    positive = result(edit_model.ReferenceLatent.execute(positive, latent))[0]
    negative = result(nodes_qwen.TextEncodeQwenImageEditPlus.execute(
        clip, by_class["TextEncodeQwenImageEditPlus"]["prompt"], image1=image))[0]
    negative = result(edit_model.ReferenceLatent.execute(negative, latent))[0]
    aura = importlib.import_module("comfy_extras.nodes_model_advanced").ModelSamplingAuraFlow()
    shifted = aura.patch_aura(patched, by_class["ModelSamplingAuraFlow"]["shift"])[0]
    normed = result(importlib.import_module("comfy_extras.nodes_cfg").CFGNorm.execute(
        shifted, by_class["CFGNorm"]["strength"]))[0]
    conf = dit_confinement_of(shifted)
    ks = {k: v for k, v in by_class["KSampler"].items() if not is_link(v)}
    out = comfy_nodes.common_ksampler(normed, ks["seed"], ks["steps"], ks["cfg"], ks["sampler_name"],
                                      ks["scheduler"], positive, negative, latent, denoise=ks["denoise"])[0]
    assert out["samples"].shape == latent["samples"].shape and torch.isfinite(out["samples"]).all()
    assert conf.calls > 0 and conf.last_layout.refs_hw == ((6, 8),)
    assert conf.segments.offsets and conf.segments.shared   # the picture rows are the shared part
