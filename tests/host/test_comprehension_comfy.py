"""A reasoning instruction, resolved by a scripted VLM reply, flows end to end in ComfyUI
(in-process): Check Instructions' report shows "user -> resolved", its instructions output and the
prompt the Attention Mask patch encodes hold the resolved text (not the user's words), and the
resolved instruction's tokens are driven by its own mask."""

import json
import shutil

import pytest
import torch

from fixtures.tiny_models import make_tiny_qwen2_vl
from host.inprocess import import_comfy, load_checkpoint, pack_module

REASONING = "remove the thing that keeps food cold"
RESOLVED = "remove the refrigerator"
OTHER = "make the sky blue"
# what the VLM answers (Qwen2-VL family: boxes 0-1000): the first instruction resolved, left half;
# the second already explicit, right half
REPLY = json.dumps({"source_caption": "a kitchen", "target_caption": "a kitchen, blue sky", "edits": [
    {"index": 1, "executable": True, "resolved": RESOLVED, "reason": "the fridge keeps food cold",
     "target": "refrigerator", "box": [0, 0, 500, 1000], "edit_type": "remove"},
    {"index": 2, "executable": True, "resolved": OTHER, "reason": "sky visible", "target": "sky",
     "box": [500, 0, 1000, 1000], "edit_type": "attribute"}]})


@pytest.fixture(scope="module")
def vlm(comfyui_root, generated_dir, tmp_path_factory):
    import_comfy(comfyui_root)
    import folder_paths

    pack_module(comfyui_root, "nodes.model_folders").register_model_folders()
    llm = tmp_path_factory.mktemp("models") / "LLM"
    shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_vl"), llm / "tiny-qwen2-vl")
    folder_paths.add_model_folder_path("LLM", str(llm))
    ex = pack_module(comfyui_root, "nodes.executability.node")
    out = ex.LoadVLM.execute(model_name="tiny-qwen2-vl", dtype="auto")
    (managed,) = out.args if hasattr(out, "args") else out.result
    engine = managed.load()
    real = engine.generate
    prompts = []

    def scripted(image, prompt, max_new_tokens=512, should_stop=None, on_token=None):
        prompts.append(prompt)
        result = real(image, prompt, max_new_tokens=1)  # the real path, then the scripted text
        return result._replace(text=REPLY)

    engine.generate = scripted
    yield ex, managed, prompts
    del engine.generate


def test_reasoning_instruction_flows_to_the_patch(comfyui_root, tiny_checkpoints, vlm):
    ex, managed, prompts = vlm
    image = torch.rand(1, 72, 96, 3, generator=torch.Generator().manual_seed(1))
    out = ex.CheckInstructions.execute(image=image, instructions=f"{REASONING}\n{OTHER}", vlm=managed,
                                       max_new_tokens=8)
    plans, report, executable, _, target = out.args if hasattr(out, "args") else out.result
    assert '"resolved"' in prompts[-1]  # the VLM was asked for the resolution
    assert f"1. [MASK] {REASONING} -> {RESOLVED}" in report.splitlines()
    assert f"2. [MASK] {OTHER}" in report.splitlines()
    assert executable.splitlines() == [RESOLVED, OTHER]
    assert plans[0].items[0].instruction == REASONING

    masks = pack_module(comfyui_root, "nodes.masks.box_masks").plan_masks(plans[0], 64, 64)
    assert float(masks[0, :, :32].min()) == 1.0 and float(masks[0, :, 32:].max()) == 0.0

    node = pack_module(comfyui_root, "nodes.attention.node")
    defaults = {i.id: i.default for i in node.AttentionMask.define_schema().inputs
                if getattr(i, "default", None) is not None}
    options = ("mode", "routing", "resolutions", "start_percent", "end_percent", "strength", "apply_to")
    model, clip, _ = load_checkpoint(comfyui_root, tiny_checkpoints.sd15)
    from comfy.patcher_extension import WrappersMP

    def controller_for(**overrides):
        options_ = {k: v for k, v in defaults.items() if k in options}
        options_.update(overrides)
        result = node.AttentionMask.execute(model=model, clip=clip, masks=masks, prompt="", plan=plans, **options_)
        patched, positive, prompt = result.args if hasattr(result, "args") else result.result
        assert RESOLVED in prompt and OTHER in prompt and "keeps food cold" not in prompt
        wrappers = patched.wrappers[WrappersMP.DIFFUSION_MODEL]
        (key,) = [k for k in wrappers if k.startswith("contextedit_attention")]
        cells = [c.cell_contents for c in wrappers[key][0].__closure__ or ()]
        return next(c for c in cells if hasattr(c, "places_modified")), positive, prompt

    # the shipped default, per segment: the first segment of the conditioning is the resolved
    # instruction encoded on its own (ComfyUI's CLIP called here directly), driven by the left mask
    ctrl, positive, prompt = controller_for()
    assert defaults["routing"] == "per segment (encoded apart)"
    alone = clip.encode_from_tokens(clip.tokenize(RESOLVED))
    user = clip.encode_from_tokens(clip.tokenize(REASONING))
    first = positive[0][0][:, ctrl.token_sets[0]]
    assert ctrl.token_sets[0] == list(range(alone.shape[1]))
    # the same tokens through the same fp32 CLIP, once inside the node and once here: equal up to
    # float32 reassociation (1e-5 of features of order 1); the user's words encode differently by far
    # more than 1e-3, so the second check cannot pass by rounding
    assert torch.allclose(first, alone, atol=1e-5) and not torch.allclose(first, user, atol=1e-3)
    assert torch.equal(ctrl.masks[0], masks[0]) and torch.equal(ctrl.masks[1], masks[1])

    # per-token routing (CAMILA): the resolved instruction's tokens, found independently with
    # ComfyUI's own tokenizer: the prompt's token ids at the controller's first token set are those
    # of RESOLVED alone ...
    ctrl, _, prompt = controller_for(routing="per token (CAMILA)")
    ids = [t[0] for t in clip.tokenize(prompt)["l"][0]]
    alone_ids = [t[0] for t in clip.tokenize(RESOLVED)["l"][0]]
    end = alone_ids.index(alone_ids[-1])  # first end/pad token after the words
    words = alone_ids[1:end]
    assert [ids[p] for p in ctrl.token_sets[0]] == words
    # ... and the mask that drives them is the refrigerator's (left half), not the sky's
    assert torch.equal(ctrl.masks[0], masks[0]) and torch.equal(ctrl.masks[1], masks[1])
