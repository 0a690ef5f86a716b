"""Executability and mask nodes inside ComfyUI (in-process): the real generate path on a tiny
Qwen2-VL-family folder in models/LLM, a tiny SAM in models/sams, and their error messages."""

import shutil

import pytest
import torch

from fixtures.tiny_models import make_tiny_qwen2_vl, make_tiny_sam_checkpoint
from host.inprocess import import_comfy, pack_module


@pytest.fixture(scope="module")
def folders(comfyui_root, generated_dir, tmp_path_factory):
    import_comfy(comfyui_root)
    import folder_paths

    model_folders = pack_module(comfyui_root, "nodes.model_folders")
    model_folders.register_model_folders()
    root = tmp_path_factory.mktemp("models")
    llm, sams = root / "LLM", root / "sams"
    sams.mkdir()
    shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), llm / "tiny-qwen2.5-vl")
    shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_vl"), llm / "tiny-qwen2-vl")
    shutil.copy(make_tiny_sam_checkpoint(generated_dir), sams / "sam_tiny.pth")
    folder_paths.add_model_folder_path("LLM", str(llm))
    folder_paths.add_model_folder_path("sams", str(sams))
    return {"LLM": llm, "sams": sams}


@pytest.fixture(scope="module")
def nodes(comfyui_root):
    return (pack_module(comfyui_root, "nodes.executability.node"), pack_module(comfyui_root, "nodes.masks.node"))


def out(result):
    return result.args if hasattr(result, "args") else result.result


def image(b=1, h=72, w=96):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(3))


INSTRUCTIONS = "make the sky orange\nremove the pancakes from the plate\nmake the car red"


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen2-vl"])
def test_check_instructions_real_generate_path(folders, nodes, name):
    ex, _ = nodes
    assert name in ex.list_models("LLM")
    (vlm,) = out(ex.LoadVLM.execute(model_name=name, dtype="auto"))
    assert next(vlm.engine.model.parameters()).dtype == torch.float32  # CPU
    plans, report, executable, src, tgt = out(ex.CheckInstructions.execute(
        image=image(2), instructions=INSTRUCTIONS, vlm=vlm, max_new_tokens=24))
    assert len(plans) == 2
    for plan in plans:
        assert [i.instruction for i in plan.items] == INSTRUCTIONS.split("\n")
        assert plan.raw_reply is not None  # the tiny model's gibberish is kept for the report
    assert "[image 2]" in report and ("[NEG]" in report or "[MASK]" in report)


def test_missing_vlm_folder_names_the_folders(folders, nodes):
    errors = pack_module(None, "nodes.errors") if False else __import__("contextedit.nodes.errors", fromlist=["x"])
    ex, _ = nodes
    with pytest.raises(errors.ModelNotFoundError) as e:
        ex.LoadVLM.execute(model_name="Qwen2.5-VL-3B-Instruct", dtype="auto")
    assert str(folders["LLM"]) in str(e.value) and "config.json" in str(e.value)


def test_empty_instructions_and_wrong_vlm(folders, nodes):
    errors = __import__("contextedit.nodes.errors", fromlist=["x"])
    ex, _ = nodes
    (vlm,) = out(ex.LoadVLM.execute(model_name="tiny-qwen2.5-vl", dtype="auto"))
    with pytest.raises(errors.InputError) as e:
        ex.CheckInstructions.execute(image=image(), instructions="  \n ", vlm=vlm, max_new_tokens=8)
    assert e.value.input_name == "instructions"
    with pytest.raises(errors.InputError) as e:
        ex.CheckInstructions.execute(image=image(), instructions="a", vlm="not a vlm", max_new_tokens=8)
    assert e.value.input_name == "vlm"


def test_sam_decode_masks_at_input_resolution(folders, nodes):
    ex, mk = nodes
    (sam,) = out(mk.LoadSAM.execute(sam_name="sam_tiny.pth"))
    img = image(1, 72, 96)
    plans, _, _ = out(ex.ManualPlan.execute(image=img, instructions=INSTRUCTIONS,
                                            boxes="[[0,0,96,30], [10,40,40,70], [50,40,90,70]]",
                                            non_executable="2"))
    masks, union, preview = out(mk.DecodeMasks.execute(image=img, plan=plans, dilate=0, feather=0, sam=sam))
    assert masks.shape == (3, 72, 96) and union.shape == (1, 72, 96) and preview.shape == (1, 72, 96, 3)
    assert masks[1].eq(0).all()                      # [NEG]
    assert masks[0].sum() > 0 and masks[2].sum() > 0  # SAM masks (or the box when SAM finds nothing)
    # the union is an elementwise max of the same masks: bit-identical by construction
    assert torch.equal(union[0], torch.maximum(masks[0], masks[2]))


def test_decode_masks_batch_mismatch_and_wrong_plan(folders, nodes):
    errors = __import__("contextedit.nodes.errors", fromlist=["x"])
    ex, mk = nodes
    plans, _, _ = out(ex.ManualPlan.execute(image=image(3), instructions="a\nb", boxes="", non_executable=""))
    with pytest.raises(errors.InputError) as e:
        mk.DecodeMasks.execute(image=image(2), plan=plans, dilate=0, feather=0)
    assert e.value.input_name == "plan"
    with pytest.raises(errors.InputError) as e:
        mk.DecodeMasks.execute(image=image(1), plan="a plan", dilate=0, feather=0)
    assert e.value.input_name == "plan"
