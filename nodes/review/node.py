"""ContextEdit Review Plan node (ComfyUI V3 schema): the plan on the canvas, corrected by the artist.

The node applies the ``corrections`` widget (JSON, see corrections.py) to the plan and sends the
canvas the image and the corrected plan; the frontend extension (web/js/review_plan.js) draws the
editor and writes the artist's edits back into that widget. A corrections-only change re-runs
this node and the ones after it; the VLM upstream stays cached.
"""

from comfy_api.latest import io, ui

from ..executability.node import plan_strings
from ..executability.plan import as_plan_list
from ..masks.canvas import preview_pixels
from .canvas import review_message
from .corrections import review_plans, validate_corrections

EditPlan = io.Custom("EDIT_PLAN")
CATEGORY = "ContextEdit/executability"


class ReviewPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditReviewPlan",
            display_name="ContextEdit Review Plan",
            category=CATEGORY,
            description="Shows the plan on the image in the node: each instruction's boxes, numbered, [MASK] solid in "
                        "the instruction's colour, [NEG] dashed, the reason on hover. Drag, resize, add or delete boxes, "
                        "flip [MASK]/[NEG] and edit the resolved text; the edits are stored in 'corrections' and applied "
                        "on the next run, which re-runs only this node and what follows (the VLM stays cached). "
                        "Corrections are keyed by instruction number, instruction text and image fingerprint: one that "
                        "no longer fits is dropped with a note, never applied to another instruction.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="The image(s) the plan was made for (shown in the editor)."),
                EditPlan.Input("plan", tooltip="From Check Instructions or Manual Plan."),
                io.String.Input("corrections", default="", optional=True,
                                tooltip="Written by the canvas editor: JSON {\"images\": [{\"image\": fingerprint, "
                                        "\"items\": [{\"number\", \"instruction\", \"executable\", \"resolved\", "
                                        "\"boxes\"}]}]} (README: Review and correct the plan). Empty: the plan as it came."),
            ],
            outputs=[
                EditPlan.Output(display_name="plan", tooltip="The plan with the corrections applied, for Decode Masks / Attention Mask."),
                io.String.Output(display_name="report", tooltip="The corrected plan per instruction, the image fingerprint(s) and "
                                                                "which corrections were applied or dropped."),
                io.String.Output(display_name="executable", tooltip="The executable instructions (resolved text) after the corrections, one per line."),
            ],
        )

    @classmethod
    def validate_inputs(cls, corrections=None):
        # malformed JSON is refused by POST /prompt, before anything runs (a linked value is None here)
        return True if corrections is None else validate_corrections(corrections)

    @classmethod
    def execute(cls, image, plan, corrections="") -> io.NodeOutput:
        plans = as_plan_list(plan, "plan")
        review = review_plans(plans, image, corrections)
        refs = ui.ImageSaveHelper.save_images(preview_pixels(image), filename_prefix="contextedit_review",
                                              folder_type=io.FolderType.temp, cls=None, compress_level=1)
        report, executable, _, _ = plan_strings(review.plans)
        report = f"{report}\n\n{review.summary()}"
        return io.NodeOutput(review.plans, report, executable, ui=review_message(review, plans, refs, image))


NODES = [ReviewPlan]
