"""An artist's first run, through POST /prompt on a live server with empty model folders.

A workflow whose model is absent must be rejected by the server's validation (before anything
runs) with an error that names the file or folder expected, every folder searched and where to
download it (the pack's model catalogue), not ComfyUI's bare "Value not in list". A name that is
there still validates and runs, and a loader's list shows something readable when its folder is
empty. The server here is started for this module, so no other test's models are in its folders.
"""

import shutil
from pathlib import Path

import pytest
from fixtures.tiny_models import make_tiny_qwen2_vl, make_tiny_sam_checkpoint
from host.graphs import ApiGraph, txt2img_graph
from host.server import ComfyServer, PromptRejected

REGISTERED_OWN_FOLDERS = ("LLM", "sams", "contextedit", "ipadapter", "metrics")


@pytest.fixture(scope="module")
def first_run_server(comfyui_root, tiny_checkpoints, tmp_path_factory):
    server = ComfyServer(comfyui_root, tmp_path_factory.mktemp("comfy_first_run"),
                         checkpoints_dir=tiny_checkpoints.folder, name="comfy_first_run")
    server.start()
    server.initial_object_info = server.object_info()  # before any test adds a file
    try:
        yield server
    finally:
        server.stop()


def searched_folders(server, kind):
    """The folders ComfyUI searches for ``kind`` in this server: the YAML path (when the harness
    sets one) and the pack's default models/<kind> under the base directory."""
    folders = [str(server.base_dir / "models" / kind)]
    if kind in server.model_dirs:
        folders.insert(0, str(server.model_dirs[kind]))
    return folders


def rejection(server, graph, node_id):
    """POST the graph, expect a 400, and return the text of ``node_id``'s errors (all of them)."""
    with pytest.raises(PromptRejected) as caught:
        server.queue_prompt(graph)
    node_errors = caught.value.node_errors
    assert str(node_id) in node_errors, f"no error for node {node_id}: {caught.value}"
    errors = node_errors[str(node_id)]["errors"]
    return errors, "\n".join(f"{e['type']}: {e['message']}: {e['details']}" for e in errors)


def assert_actionable(errors, text, expected_name, folders, sources):
    assert all(e["type"] != "value_not_in_list" for e in errors), text
    assert expected_name in text, text
    for folder in folders:
        assert folder in text, f"folder {folder} not named:\n{text}"
    for source in sources:
        assert source in text, f"source {source} not named:\n{text}"


def image(g, size=64):
    return g.add("EmptyImage", width=size, height=size, batch_size=1, color=0x5080C0)


def vlm_graph(model_name):
    g = ApiGraph()
    img = image(g)
    vlm = g.add("ContextEditLoadVLM", name="vlm", model_name=model_name, dtype="auto")
    check = g.add("ContextEditCheckInstructions", name="check", image=img[0], instructions="remove the cup",
                  vlm=vlm[0], max_new_tokens=16)
    g.add("PreviewAny", name="report", source=check[1])
    return g


def sam_graph(sam_name):
    g = ApiGraph()
    img = image(g)
    plan = g.add("ContextEditManualPlan", image=img[0], instructions="remove the cup", boxes="[[8, 8, 40, 40]]",
                 non_executable="")
    sam = g.add("ContextEditLoadSAM", name="sam", sam_name=sam_name)
    masks = g.add("ContextEditDecodeMasks", name="masks", image=img[0], plan=plan[0], dilate=0, feather=0, sam=sam[0])
    g.add("PreviewImage", name="preview", images=masks[2])
    return g


def test_missing_vlm_folder_is_rejected_with_its_source(first_run_server):
    g = vlm_graph("Qwen2.5-VL-3B-Instruct")
    errors, text = rejection(first_run_server, g, g.refs["vlm"])
    assert_actionable(errors, text, "Qwen2.5-VL-3B-Instruct", searched_folders(first_run_server, "LLM"),
                      ["https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct"])
    print("\nmissing VLM, as POST /prompt answers:\n" + text)


def test_missing_sam_file_is_rejected_with_its_source(first_run_server):
    g = sam_graph("sam_vit_b_01ec64.pth")
    errors, text = rejection(first_run_server, g, g.refs["sam"])
    assert_actionable(errors, text, "sam_vit_b_01ec64.pth", searched_folders(first_run_server, "sams"),
                      ["https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"])
    print("\nmissing SAM, as POST /prompt answers:\n" + text)


def test_missing_region_head_says_how_to_train_one(first_run_server):
    g = ApiGraph()
    img = image(g)
    loader = g.add("ContextEditLoadRegionPredictor", name="loader", region_predictor="region_predictor.safetensors",
                   clip_vision="clip_vit_large_patch14.safetensors", text_encoder="flan-t5-base", clip_text="none")
    predict = g.add("ContextEditPredictEditRegion", image=img[0], region_predictor=loader[0],
                    instruction="make the car red", threshold=0.5, test_time_steps=0, learning_rate=0.01, seed=0)
    g.add("PreviewImage", images=predict[2])
    errors, text = rejection(first_run_server, g, loader)
    assert_actionable(errors, text, "region_predictor.safetensors",
                      searched_folders(first_run_server, "contextedit"), ["nodes/regions/train.py"])
    # the encoders it also needs are named with their sources in the same answer
    assert_actionable(errors, text, "clip_vit_large_patch14.safetensors",
                      searched_folders(first_run_server, "clip_vision"),
                      ["https://huggingface.co/openai/clip-vit-large-patch14"])
    assert_actionable(errors, text, "flan-t5-base", searched_folders(first_run_server, "text_encoders"),
                      ["https://huggingface.co/google/flan-t5-base"])
    print("\nmissing region head, as POST /prompt answers:\n" + text)


def test_missing_ipadapter_is_rejected_with_its_source(first_run_server, tiny_checkpoints):
    info = first_run_server.initial_object_info["ContextEditImageStream"]["input"]["required"]
    stub = Path(first_run_server.model_dirs["clip_vision"]) / "contextedit_stub_clip_vision.safetensors"
    stub.write_bytes(b"")  # only listed, never loaded: the prompt is rejected before anything runs
    g = txt2img_graph(tiny_checkpoints.sd15_name)
    clip_vision = g.add("CLIPVisionLoader", clip_name=stub.name)
    stream = g.add("ContextEditImageStream", name="stream", model=g.refs["ckpt"][0], clip_vision=clip_vision[0],
                   ipadapter="ip-adapter_sd15.safetensors", image=image(g)[0], weight=1.0, start_percent=0.0,
                   end_percent=1.0, block_weights="input:1, middle:1, output:1",
                   mask_mode=info["mask_mode"][1]["options"][0], unconditional=info["unconditional"][1]["options"][0])
    g.set_input(g.refs["sampler"], "model", stream[0])
    errors, text = rejection(first_run_server, g, stream)
    assert_actionable(errors, text, "ip-adapter_sd15.safetensors", searched_folders(first_run_server, "ipadapter"),
                      ["https://huggingface.co/h94/IP-Adapter/resolve/main/models/ip-adapter_sd15.safetensors"])
    print("\nmissing IP-Adapter, as POST /prompt answers:\n" + text)


def metrics_graph(metric_set):
    g = ApiGraph()
    img = image(g)
    g.add("ContextEditEditMetrics", name="metrics", source=img[0], edited=img[0], metric_set=metric_set,
          source_caption="a cup", target_caption="a table")
    return g


def test_missing_metric_network_is_rejected_with_its_source(first_run_server):
    options = first_run_server.initial_object_info["ContextEditEditMetrics"]["input"]["required"]["metric_set"][1]["options"]
    pie = next(o for o in options if o.startswith("PIE"))
    g = metrics_graph(pie)
    errors, text = rejection(first_run_server, g, g.refs["metrics"])
    assert_actionable(errors, text, "clip-vit-large-patch14", searched_folders(first_run_server, "metrics"),
                      ["https://huggingface.co/openai/clip-vit-large-patch14",
                       "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
                       "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"])
    print("\nmissing metric networks, as POST /prompt answers:\n" + text)
    # the set that needs no network still validates and runs
    pixel = next(o for o in options if o.startswith("Pixel"))
    entry = first_run_server.run(metrics_graph(pixel), timeout=300)
    assert "PSNR" in "".join(entry["outputs"][str(g.refs["metrics"])]["text"])


def test_present_models_validate_and_run(first_run_server, generated_dir):
    """Names that exist pass the pack's validation (also when added after the server started) and run."""
    shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"),
                    Path(first_run_server.model_dirs["LLM"]) / "tiny-vlm-added-late")
    shutil.copy(make_tiny_sam_checkpoint(generated_dir), Path(first_run_server.model_dirs["sams"]) / "sam_added_late.pth")
    g = vlm_graph("tiny-vlm-added-late")
    sam = sam_graph("sam_added_late.pth")
    offset = max(int(k) for k in g)
    for node_id, node in sam.items():  # one prompt with both chains
        node = {"class_type": node["class_type"], "inputs": {
            k: ([str(int(v[0]) + offset), v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}}
        g[str(int(node_id) + offset)] = node
    entry = first_run_server.run(g, timeout=300)
    assert entry["outputs"][str(g.refs["report"])]["text"], entry["outputs"]
    assert first_run_server.output_images(entry, str(int(sam.refs["preview"]) + offset))


def test_empty_model_lists_show_a_readable_placeholder_that_explains_itself(first_run_server):
    info = first_run_server.initial_object_info
    combos = {("ContextEditLoadVLM", "model_name"): "LLM", ("ContextEditLoadSAM", "sam_name"): "sams",
              ("ContextEditImageStream", "ipadapter"): "ipadapter",
              ("ContextEditLoadRegionPredictor", "text_encoder"): "text_encoders"}
    for (node, name), kind in combos.items():
        spec = info[node]["input"]["required"][name]
        options = spec[1]["options"]
        assert len(options) == 1 and kind in options[0], (node, name, spec)  # not an empty list
        assert spec[1].get("default") == options[0], spec  # the search preview shows it, not "undefined"
    placeholder = info["ContextEditLoadVLM"]["input"]["required"]["model_name"][1]["options"][0]
    g = vlm_graph(placeholder)
    errors, text = rejection(first_run_server, g, g.refs["vlm"])
    assert_actionable(errors, text, "No LLM model is installed", searched_folders(first_run_server, "LLM"),
                      ["https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct"])
    print(f"\nLoad VLM with an empty models/LLM lists {placeholder!r}; queued, POST /prompt answers:\n" + text)
