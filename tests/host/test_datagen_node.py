"""ContextEdit Rewrite Edit Instruction in a real ComfyUI: the editing-pair workflow (ground with
the VLM, SAM mask, stock inpainting, rewrite + score) runs headless on tiny models, and the node's
report reaches the graph's outputs even when the tiny VLM's replies are unreadable."""

import json
import shutil
from pathlib import Path

from fixtures.tiny_models import make_tiny_qwen2_vl, make_tiny_sam_checkpoint
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
VLM, SAM = "tiny-qwen2.5-vl", "sam_tiny.pth"


def test_editing_pair_workflow_runs_and_reports(comfy_server, tiny_checkpoints, generated_dir):
    llm = Path(comfy_server.model_dirs["LLM"]) / VLM
    if not llm.exists():
        shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), llm)
    shutil.copy(make_tiny_sam_checkpoint(generated_dir), Path(comfy_server.model_dirs["sams"]) / SAM)
    name = comfy_server.upload_image(Image.new("RGB", (96, 64), (90, 140, 60)), name="datagen_pair.png")
    graph = json.loads((REPO / "workflows" / "api" / "editing_pair.json").read_text())
    graph["1"]["inputs"]["image"] = name
    graph["2"]["inputs"]["model_name"] = VLM
    graph["3"]["inputs"]["max_new_tokens"] = 16
    graph["4"]["inputs"]["sam_name"] = SAM
    graph["6"]["inputs"]["ckpt_name"] = tiny_checkpoints.sd15_name
    graph["10"]["inputs"]["steps"] = 2
    entry = comfy_server.run(graph, timeout=600)
    saved = comfy_server.output_images(entry, "12")
    assert len(saved) == 1 and comfy_server.get_image(**saved[0]).size == (96, 64)
    report = "\n".join(entry["outputs"]["14"]["text"])
    # a random-weight VLM writes no JSON: the node keeps the given instruction and says why
    assert "simple: remove the car" in report and "could not read the rewrite reply" in report, report
    info = comfy_server.object_info("ContextEditRewriteEditInstruction")["ContextEditRewriteEditInstruction"]
    assert info["category"] == "ContextEdit/datagen"
    assert [o for o in info["output_name"]] == ["simple_instruction", "reasoning_instruction", "source_caption",
                                                "target_caption", "overall", "report"]
