"""ContextEdit Load SAM / Decode Masks nodes (ComfyUI V3 schema)."""

from comfy_api.latest import io, ui

from ..errors import InputError
from ..managed import ManagedModel, devices
from ..executability.plan import as_plan_list
from ..model_folders import check_model, combo_options, list_models, resolve_model
from .canvas import masks_message, preview_pixels
from .decode import decode_batch
from .sam import load_sam

EditPlan = io.Custom("EDIT_PLAN")
SamType = io.Custom("CONTEXTEDIT_SAM")
CATEGORY = "ContextEdit/masks"


class LoadSAM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        models = combo_options("sams", list_models("sams"))  # a default: the frontend shows no "undefined"
        return io.Schema(
            node_id="ContextEditLoadSAM",
            display_name="ContextEdit Load SAM",
            category=CATEGORY,
            description="Loads a segment-anything checkpoint from models/sams (vit_b / vit_l / vit_h recognised from "
                        "the weights; safe loading, no download).",
            inputs=[io.Combo.Input("sam_name", options=models, default=models[0],
                                   tooltip="e.g. sam_vit_b_01ec64.pth in models/sams.")],
            outputs=[SamType.Output(display_name="sam", tooltip="The SAM model, for ContextEdit Decode Masks.")],
        )

    @classmethod
    def validate_inputs(cls, sam_name):
        # replaces ComfyUI's "Value not in list" with the folders searched and the download source
        return check_model("sams", sam_name)

    @classmethod
    def execute(cls, sam_name) -> io.NodeOutput:
        path = resolve_model("sams", sam_name)
        decoder = load_sam(path, device=devices()[1], input_name="sam_name")
        return io.NodeOutput(ManagedModel(decoder, decoder.model, "sam"))


class DecodeMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditDecodeMasks",
            display_name="ContextEdit Decode Masks",
            category=CATEGORY,
            description="Turns an EDIT_PLAN's boxes into masks, one per instruction in instruction order: SAM masks "
                        "when a SAM model is connected, box masks otherwise. [NEG] instructions give all-black masks. "
                        "After a run the node shows the masks over the image, one colour per instruction, [NEG] empty.",
            inputs=[
                io.Image.Input("image", tooltip="The image(s) the plan was made for."),
                EditPlan.Input("plan", tooltip="From Check Instructions or Manual Plan."),
                io.Int.Input("dilate", default=0, min=-256, max=256,
                             tooltip="Grow (or, negative, shrink) each mask by this many pixels."),
                io.Int.Input("feather", default=0, min=0, max=256, tooltip="Soften mask edges over this many pixels."),
                SamType.Input("sam", optional=True, tooltip="Optional SAM from ContextEdit Load SAM; without it, box masks."),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="[N,H,W] one mask per instruction (per image, image-major for batches)."),
                io.Mask.Output(display_name="union", tooltip="[B,H,W] union of each image's masks."),
                io.Image.Output(display_name="preview", tooltip="The image with each instruction's mask tinted in its colour."),
            ],
        )

    @classmethod
    def execute(cls, image, plan, dilate, feather, sam=None) -> io.NodeOutput:
        plans = as_plan_list(plan, "plan")
        decoder = None
        if sam is not None:
            if not isinstance(sam, ManagedModel) or sam.kind != "sam":
                raise InputError("sam", f"is a {type(sam).__name__}, not a loaded SAM.", "Connect ContextEdit Load SAM.")
            decoder = sam.load()
        masks, union, preview = decode_batch(image, plans, sam=decoder, dilate_px=dilate, feather_px=feather)
        # the canvas shows the masks over the image (web/js/mask_view.js), coloured as in the plan editor
        refs = ui.ImageSaveHelper.save_images(preview_pixels(preview), filename_prefix="contextedit_masks",
                                              folder_type=io.FolderType.temp, cls=None, compress_level=1)
        message = masks_message(plans, masks, refs, image, sam_used=decoder is not None, dilate=dilate, feather=feather)
        return io.NodeOutput(masks, union, preview, ui=message)


NODES = [LoadSAM, DecodeMasks]
