"""ContextEdit Load VLM / Check Instructions / Manual Plan nodes (ComfyUI V3 schema).

The VLM is a Hugging Face module wrapped in ComfyUI's ModelPatcher, so ComfyUI's memory manager
loads it to the GPU when a check runs and can offload it for the diffusion model afterwards.
"""

import torch
from comfy_api.latest import io

from ..errors import InputError
from ..managed import ManagedModel, compute_dtype, devices
from ..model_folders import check_model, combo_options, list_models, resolve_model
from .checker import check_batch
from .manual import manual_plans
from .plan import as_plan_list
from .vlm_runtime import load_vlm

EditPlan = io.Custom("EDIT_PLAN")
VLMType = io.Custom("CONTEXTEDIT_VLM")
CATEGORY = "ContextEdit/executability"
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def plan_strings(plans):
    """(report, executable instructions, source captions, target captions) for a plan list."""
    many = len(plans) > 1

    def join(parts):
        if not many:
            return parts[0] if parts else ""
        return "\n\n".join(f"[image {i + 1}]\n{p}" for i, p in enumerate(parts))

    return (join([p.report() for p in plans]), join([p.executable_instructions() for p in plans]),
            join([p.source_caption for p in plans]), join([p.target_caption for p in plans]))


class LoadVLM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        models = combo_options("LLM", list_models("LLM"))  # a default: the frontend shows no "undefined"
        return io.Schema(
            node_id="ContextEditLoadVLM",
            display_name="ContextEdit Load VLM",
            category=CATEGORY,
            description="Loads a local vision-language model (Qwen2.5-VL, Qwen2-VL, Qwen3-VL or another chat VLM) "
                        "from models/LLM/<folder>. Local files only, no remote code; managed by ComfyUI's memory manager.",
            inputs=[
                io.Combo.Input("model_name", options=models, default=models[0],
                               tooltip="A Hugging Face folder in models/LLM (config.json, processor and tokenizer files, *.safetensors)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="auto: ComfyUI's choice for this device: --bf16-text-enc / --fp16-text-enc / "
                                       "--fp32-text-enc when given, else bf16 (or fp16) on a GPU that computes in "
                                       "it, fp32 on the CPU or with --force-fp32. The others override it."),
            ],
            outputs=[VLMType.Output(display_name="vlm", tooltip="The loaded VLM, for ContextEdit Check Instructions.")],
        )

    @classmethod
    def validate_inputs(cls, model_name):
        # Naming model_name here replaces ComfyUI's "Value not in list" with the pack's error: the
        # folders searched and where to download the model (POST /prompt answers with it).
        return check_model("LLM", model_name)

    @classmethod
    def execute(cls, model_name, dtype) -> io.NodeOutput:
        if dtype not in DTYPES:
            raise InputError("dtype", f"'{dtype}' is not one of {list(DTYPES)}.", "Pick one from the list.")
        path = resolve_model("LLM", model_name)
        load_device, offload_device = devices()
        chosen = DTYPES[dtype] or compute_dtype("vlm", load_device)
        vlm = load_vlm(path, device=offload_device, dtype=chosen)
        return io.NodeOutput(ManagedModel(vlm, vlm.model, "vlm", dtype=chosen))


class CheckInstructions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditCheckInstructions",
            display_name="ContextEdit Check Instructions",
            category=CATEGORY,
            description="CAMILA's executability check, zero-shot: the VLM reads the image and the instructions, and "
                        "decides per instruction whether it can be carried out ([MASK], with a box) or not ([NEG]: the "
                        "object is absent, the request contradicts the image), with a reason. Never fails on a bad "
                        "reply: unreadable answers make every instruction non-executable, with the raw reply in the report.",
            inputs=[
                io.Image.Input("image", tooltip="The image(s) to edit; a batch gives one plan per image."),
                io.String.Input("instructions", multiline=True, default="",
                                tooltip="Edit instructions, one per line (also split at ';', 'and then', numbered lists)."),
                VLMType.Input("vlm", tooltip="From ContextEdit Load VLM."),
                io.Int.Input("max_new_tokens", default=512, min=16, max=4096,
                             tooltip="Longest reply the VLM may write (greedy decoding)."),
            ],
            outputs=[
                EditPlan.Output(display_name="plan", tooltip="The EDIT_PLAN (one per image) for Decode Masks / Attention Mask."),
                io.String.Output(display_name="report", tooltip="Readable verdict per instruction: [MASK]/[NEG], reason, boxes, captions."),
                io.String.Output(display_name="executable", tooltip="The executable instructions, one per line."),
                io.String.Output(display_name="source_caption", tooltip="Caption of the image as it is (t_o)."),
                io.String.Output(display_name="target_caption", tooltip="Caption after all executable edits (t_e)."),
            ],
        )

    @classmethod
    def execute(cls, image, instructions, vlm, max_new_tokens) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        if not isinstance(vlm, ManagedModel) or vlm.kind != "vlm":
            raise InputError("vlm", f"is a {type(vlm).__name__}, not a loaded VLM.", "Connect ContextEdit Load VLM.")
        engine = vlm.load()
        pbar = comfy.utils.ProgressBar(max_new_tokens * int(image.shape[0]))
        plans = check_batch(engine, image, instructions, max_new_tokens=max_new_tokens,
                            should_stop=mm.throw_exception_if_processing_interrupted,
                            on_token=lambda done, total: pbar.update_absolute(done, total))
        return io.NodeOutput(plans, *plan_strings(plans))


class ManualPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditManualPlan",
            display_name="ContextEdit Manual Plan",
            category=CATEGORY,
            description="Builds an EDIT_PLAN without a VLM: your instructions plus boxes (JSON or another pack's BBOX) "
                        "or masks from any pack. Instructions listed in 'non_executable' (or whose mask is empty) "
                        "become [NEG]: dropped from the prompt, their regions untouched.",
            inputs=[
                io.Image.Input("image", tooltip="The image(s) the plan is for (sets the pixel size; a batch gives one plan per image)."),
                io.String.Input("instructions", multiline=True, default="", tooltip="Edit instructions, one per line."),
                io.String.Input("boxes", multiline=True, default="",
                                tooltip="Optional JSON, one entry per instruction: [x1,y1,x2,y2] in pixels, a list of such boxes, or null (whole image)."),
                io.String.Input("non_executable", default="",
                                tooltip="Instruction numbers (1-based, comma-separated) to mark [NEG], e.g. '2'."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Optional masks [N,H,W], one per instruction: an empty mask marks [NEG], otherwise its bounding box is the region."),
                io.Custom("BBOX").Input("bboxes", optional=True,
                                        tooltip="Optional boxes from another pack (BBOX: a list of [x1,y1,x2,y2] pixel boxes, one per instruction)."),
            ],
            outputs=[
                EditPlan.Output(display_name="plan", tooltip="The EDIT_PLAN (one per image)."),
                io.String.Output(display_name="report", tooltip="Readable summary of the plan."),
                io.String.Output(display_name="executable", tooltip="The executable instructions, one per line."),
            ],
        )

    @classmethod
    def execute(cls, image, instructions, boxes, non_executable, masks=None, bboxes=None) -> io.NodeOutput:
        plans = manual_plans(image, instructions, boxes_json=boxes, non_executable=non_executable, masks=masks,
                             bboxes=bboxes)
        report, executable, _, _ = plan_strings(plans)
        return io.NodeOutput(plans, report, executable)


NODES = [LoadVLM, CheckInstructions, ManualPlan]
