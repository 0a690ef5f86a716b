"""Every shipped workflow runs headless (API twin via POST /prompt), and every UI-format file
converts (with comfy-cli's own converter) to exactly its API twin."""

import json
import shutil
from pathlib import Path

import pytest
from fixtures.tiny_ipadapter import (
    SD15_CONTEXT,
    TINY_SD15_WIDTHS,
    VITL_PROJECTION,
    make_vitl_clip_vision_standin,
    write_ipadapter,
)
from fixtures.tiny_models import (
    make_tiny_clip_vision,
    make_tiny_qwen2_vl,
    make_tiny_sam_checkpoint,
    make_tiny_t5_encoder,
)
from fixtures.tiny_regions import make_tiny_region_predictor
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
API_FILES = sorted((REPO / "workflows" / "api").glob("*.json"))
UI_FILES = sorted((REPO / "workflows").glob("*.json"))


def test_every_ui_workflow_has_an_api_twin_and_back():
    assert UI_FILES and API_FILES
    assert {p.name for p in UI_FILES} == {p.name for p in API_FILES}
    assert all(p.with_suffix(".jpg").is_file() for p in UI_FILES), "tools/make_thumbnails.py writes them"


TINY_VLM, TINY_SAM = "tiny-qwen2.5-vl", "sam_tiny.pth"


@pytest.fixture(scope="module")
def tiny_foreign_models(comfy_server, generated_dir):
    """The tiny VLM in the server's models/LLM and the tiny SAM in its models/sams."""
    llm = Path(comfy_server.model_dirs["LLM"]) / TINY_VLM
    if not llm.exists():
        shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), llm)
    shutil.copy(make_tiny_sam_checkpoint(generated_dir), Path(comfy_server.model_dirs["sams"]) / TINY_SAM)


TINY_REGION = {"region_predictor": "tiny-region-predictor.safetensors",
               "clip_vision": "tiny-clip-vision.safetensors", "text_encoder": "tiny-flan-t5-encoder"}


@pytest.fixture(scope="module")
def tiny_region_models(comfy_server, generated_dir):
    """A tiny fitted region head in models/contextedit, the tiny CLIP vision file (+ its config as
    <name>.json) in models/clip_vision and the tiny FLAN-T5 folder in models/text_encoders."""
    dirs = {k: Path(v) for k, v in comfy_server.model_dirs.items()}
    shutil.copy(make_tiny_region_predictor(generated_dir), dirs["contextedit"] / TINY_REGION["region_predictor"])
    clip = make_tiny_clip_vision(generated_dir)
    shutil.copy(clip.single_file, dirs["clip_vision"] / TINY_REGION["clip_vision"])
    shutil.copy(clip.folder / "config.json", dirs["clip_vision"] / "tiny-clip-vision.json")
    t5 = dirs["text_encoders"] / TINY_REGION["text_encoder"]
    if not t5.exists():
        shutil.copytree(make_tiny_t5_encoder(generated_dir), t5)


STREAM_MODELS = {"clip_vision": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "ipadapter": "ip-adapter_sd15.safetensors"}


@pytest.fixture(scope="module")
def tiny_stream_models(comfy_server, generated_dir):
    """Image Stream's models under the names insight_edit.json uses: a random ViT-L/14-shaped CLIP
    vision (the smallest Load CLIP Vision recognises) in models/clip_vision and an IP-Adapter-format
    file for the tiny SD1.5 widths and that CLIP's 768-wide embeddings in models/ipadapter."""
    dirs = {k: Path(v) for k, v in comfy_server.model_dirs.items()}
    link = dirs["clip_vision"] / STREAM_MODELS["clip_vision"]
    if not link.exists():
        link.symlink_to(make_vitl_clip_vision_standin(generated_dir))
    write_ipadapter(dirs["ipadapter"] / STREAM_MODELS["ipadapter"], TINY_SD15_WIDTHS, SD15_CONTEXT, VITL_PROJECTION)


def adapt_for_tiny_models(graph, tiny_checkpoints, image_name, steps=2):
    """Point the graph at the generated models and the uploaded image; fewer steps and tokens."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "ContextEditLoadVLM":
            inputs["model_name"] = TINY_VLM
        elif node["class_type"] == "ContextEditLoadSAM":
            inputs["sam_name"] = TINY_SAM
        elif node["class_type"] == "ContextEditLoadRegionPredictor":
            inputs.update(TINY_REGION)
        elif "max_new_tokens" in inputs:
            inputs["max_new_tokens"] = 32
        elif node["class_type"] == "ContextEditManualPlan" and inputs.get("boxes"):
            count = len(json.loads(inputs["boxes"]))  # the shipped boxes are for a 512 px image
            inputs["boxes"] = json.dumps([[8 * i, 8 * i, 60 + 8 * i, 50 + 8 * i] for i in range(count)])
        if node["class_type"] == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"].lower()
            inputs["ckpt_name"] = tiny_checkpoints.ip2p_name if "pix2pix" in name else tiny_checkpoints.sd15_name
        elif node["class_type"] == "LoadImage":
            inputs["image"] = image_name
        elif node["class_type"] in ("BasicScheduler", "KSampler", "KSamplerAdvanced") and "steps" in inputs:
            inputs["steps"] = steps
        if node["class_type"] == "ContextEditMAGEdit":  # a few UNet passes, one optimised step
            inputs.update(steps=steps, iterations=1, optimize_until=0.5)
    if any(n["class_type"] == "ContextEditMAGEdit" for n in graph.values()):
        fit_masks_to_uploaded_image(graph)
    return graph


def fit_masks_to_uploaded_image(graph, shipped=(512, 512), uploaded=(128, 96)):
    """MAG Edit refuses masks of another aspect ratio than the image: scale the stock mask nodes'
    sizes and offsets (made for the shipped 512 px image) to the uploaded one."""
    fx, fy = uploaded[0] / shipped[0], uploaded[1] / shipped[1]
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "SolidMask":
            inputs.update(width=round(inputs["width"] * fx), height=round(inputs["height"] * fy))
        elif node["class_type"] == "MaskComposite":
            inputs.update(x=round(inputs["x"] * fx), y=round(inputs["y"] * fy))


def expected_image_size(graph, node_id, size=(128, 96)):
    """Saved/previewed images have the uploaded image's size, except MAG Edit's attention output
    (before | after side by side, with a 4 px bar)."""
    source = graph[node_id]["inputs"].get("images")
    if isinstance(source, list) and graph[source[0]]["class_type"] == "ContextEditMAGEdit" and source[1] == 1:
        return (2 * size[0] + 4, size[1])
    return size


@pytest.mark.parametrize("path", API_FILES, ids=[p.stem for p in API_FILES])
def test_api_workflow_runs_headless(comfy_server, tiny_checkpoints, tiny_foreign_models, tiny_region_models,
                                    tiny_stream_models, path):
    image = Image.new("RGB", (128, 96), (120, 160, 200))
    name = comfy_server.upload_image(image, name=f"wf_{path.stem}.png")
    graph = adapt_for_tiny_models(json.loads(path.read_text()), tiny_checkpoints, name)
    entry = comfy_server.run(graph, timeout=600)
    refs = comfy_server.output_images(entry)
    assert refs, f"{path.name} produced no image"
    for node_id in entry["outputs"]:
        for ref in comfy_server.output_images(entry, node_id):
            assert comfy_server.get_image(**ref).size == expected_image_size(graph, node_id)
    texts = [t for o in entry["outputs"].values() for t in o.get("text", [])]
    if "ContextEditCheckInstructions" in {n["class_type"] for n in graph.values()}:
        assert any("[NEG]" in t or "[MASK]" in t for t in texts), texts


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_converts_to_its_api_twin(comfy_server, path):
    from comfy_cli.workflow_to_api import convert_ui_to_api

    ui = json.loads(path.read_text())
    api = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    converted = convert_ui_to_api(ui, comfy_server.initial_object_info)
    assert set(converted) == set(api)
    for node_id, node in api.items():
        assert converted[node_id]["class_type"] == node["class_type"], node_id
        assert converted[node_id]["inputs"] == node["inputs"], node_id


# ----------------------------------------------------------------------------- the flagship graph

SHIPPED = {"ckpt": "instruct-pix2pix-00-22000.safetensors", "vlm": "Qwen2.5-VL-3B-Instruct",
           "sam": "sam_vit_b_01ec64.pth", "image": "example.png"}


@pytest.fixture(scope="module")
def shipped_names(comfy_server, tiny_checkpoints, generated_dir):
    """The tiny models under the names the shipped workflows use, so the files run unmodified."""
    ckpt = Path(tiny_checkpoints.folder) / SHIPPED["ckpt"]
    if not ckpt.exists():
        ckpt.symlink_to(tiny_checkpoints.ip2p)
    llm = Path(comfy_server.model_dirs["LLM"]) / SHIPPED["vlm"]
    if not llm.exists():
        shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), llm)
    shutil.copy(make_tiny_sam_checkpoint(generated_dir), Path(comfy_server.model_dirs["sams"]) / SHIPPED["sam"])
    comfy_server.upload_image(Image.new("RGB", (128, 96), (70, 120, 180)), name=SHIPPED["image"])
    return SHIPPED


def comfy_run_ui_workflow(comfy_server, name, prefix):
    """`comfy run --workflow` on workflows/<name>.json (comfy-cli converts the UI file with
    /object_info); returns the one new output image whose name starts with ``prefix``."""
    import subprocess
    import sys
    from urllib.parse import urlparse

    url = urlparse(comfy_server.url)
    before = set(Path(comfy_server.output_dir).glob(f"{prefix}*.png"))
    cmd = [sys.executable, "-m", "comfy_cli", "--skip-prompt", "run", "--workflow",
           str(REPO / "workflows" / f"{name}.json"), "--wait", "--host", url.hostname,
           "--port", str(url.port), "--timeout", "600"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{comfy_server.log_tail()}"
    new = set(Path(comfy_server.output_dir).glob(f"{prefix}*.png")) - before
    assert len(new) == 1
    return Image.open(next(iter(new)))


def test_flagship_ui_workflow_through_comfy_run(comfy_server, shipped_names):
    """`comfy run --workflow` on the UI-format file (comfy-cli converts it with /object_info)."""
    image = comfy_run_ui_workflow(comfy_server, "context_aware_edit", "contextedit_context_aware")
    assert image.size == (128, 96)


def test_insight_edit_ui_workflow_through_comfy_run(comfy_server, shipped_names, tiny_stream_models):
    """`comfy run --workflow` on insight_edit.json: comprehension check, masks, Attention Mask, Image
    Stream (source image, outside the masks) and InstructPix2Pix DualCFGGuider sampling, unmodified."""
    image = comfy_run_ui_workflow(comfy_server, "insight_edit", "contextedit_insight_edit")
    assert image.size == (128, 96)


def test_forced_non_executable_equals_never_written(comfy_server, shipped_names, tiny_checkpoints):
    """Manual Plan variant: an instruction marked [NEG] changes nothing compared with leaving it out."""
    graph = json.loads((REPO / "workflows" / "api" / "context_aware_edit_manual.json").read_text())
    graph = adapt_for_tiny_models(graph, tiny_checkpoints, SHIPPED["image"], steps=3)
    plan_id = next(k for k, n in graph.items() if n["class_type"] == "ContextEditManualPlan")
    save_id = next(k for k, n in graph.items() if n["class_type"] == "SaveImage")

    def run(instructions, boxes, neg, prefix):
        g = json.loads(json.dumps(graph))
        g[plan_id]["inputs"].update(instructions=instructions, boxes=boxes, non_executable=neg)
        g[save_id]["inputs"]["filename_prefix"] = prefix
        entry = comfy_server.run(g, timeout=600)
        ref = comfy_server.output_images(entry, save_id)[0]
        return comfy_server.get_image(**ref, as_array=True), entry

    forced, entry = run("make the sky orange\nmake the car red", "[[0, 0, 128, 40], [20, 50, 100, 90]]", "2", "forced")
    never, _ = run("make the sky orange", "[[0, 0, 128, 40]]", "", "never")
    both, _ = run("make the sky orange\nmake the car red", "[[0, 0, 128, 40], [20, 50, 100, 90]]", "", "both")
    assert (forced == never).all()
    assert not (both == never).all()  # the second instruction does act when it is executable
    report = [t for o in entry["outputs"].values() for t in o.get("text", [])]
    assert any("[NEG] make the car red" in t for t in report), report
