"""ContextEdit Rewrite Edit Instruction: the pipeline's rewrite (and score) step for one pair.

Shows an artist what the data pipeline does with their own source/edited pair: the VLM writes a
simple and a reasoning instruction and a caption of each image, and rates the pair VIEScore-style
(instruct.describe_pair; an unreadable reply never fails the graph, the report says so).
"""

from comfy_api.latest import io

from ..errors import InputError
from ..managed import ManagedModel
from .instruct import THRESHOLD, describe_pair, pair_report

VLMType = io.Custom("CONTEXTEDIT_VLM")


class RewriteEditInstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditRewriteEditInstruction",
            display_name="ContextEdit Rewrite Edit Instruction",
            category="ContextEdit/datagen",
            description="The data pipeline's rewrite step (InsightEdit) on one pair: the VLM sees the source and the "
                        "edited image and writes a simple and a reasoning instruction plus a caption of each image; "
                        "optionally it rates the pair as VIEScore does (overall = sqrt(min SC * min PQ)), the judge "
                        "checking the given instruction as InsightEdit's scorer does. The 0-10 scale and the "
                        "6.0 threshold are ours (InsightEdit asks for 0-5 and sets no threshold).",
            inputs=[
                VLMType.Input("vlm", tooltip="From ContextEdit Load VLM."),
                io.Image.Input("source", tooltip="The image before the edit (first of a batch)."),
                io.Image.Input("edited", tooltip="The image after the edit (first of a batch)."),
                io.String.Input("instruction", default="remove the object",
                                tooltip="What was done, e.g. 'remove the red car' (the template instruction)."),
                io.Combo.Input("task_type", options=["remove", "add", "replace"], default="remove",
                               tooltip="The kind of edit, told to the VLM."),
                io.Boolean.Input("score", default=True, tooltip="Also rate the pair (two more VLM calls)."),
                io.Float.Input("threshold", default=THRESHOLD, min=0.0, max=10.0, step=0.1,
                               tooltip="Overall score (0-10) a pair needs to be kept (our choice: 6.0; "
                                       "InsightEdit's code applies none)."),
            ],
            outputs=[
                io.String.Output(display_name="simple_instruction", tooltip="Short, direct instruction."),
                io.String.Output(display_name="reasoning_instruction", tooltip="Instruction that needs reasoning to locate the object."),
                io.String.Output(display_name="source_caption", tooltip="One sentence about the source image."),
                io.String.Output(display_name="target_caption", tooltip="One sentence about the edited image."),
                io.Float.Output(display_name="overall", tooltip="VIEScore overall 0-10; -1 when not scored."),
                io.String.Output(display_name="report", tooltip="Everything above, readable, with notes."),
            ],
        )

    @classmethod
    def execute(cls, vlm, source, edited, instruction, task_type, score, threshold) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        if not isinstance(vlm, ManagedModel) or vlm.kind != "vlm":
            raise InputError("vlm", f"is a {type(vlm).__name__}, not a loaded VLM.", "Connect ContextEdit Load VLM.")
        from ..executability.vlm_runtime import to_pil

        engine = vlm.load()
        pbar = comfy.utils.ProgressBar(1)  # as Check Instructions: progress per token, Cancel within one token
        result = describe_pair(engine, to_pil(source[0]), to_pil(edited[0]), instruction, task_type, score, threshold,
                               should_stop=mm.throw_exception_if_processing_interrupted,
                               on_token=lambda done, total: pbar.update_absolute(done, total))
        overall = float(result["scores"]["overall"]) if result.get("scores") else -1.0
        return io.NodeOutput(result["simple_instruction"], result["reasoning_instruction"], result["source_caption"],
                             result["target_caption"], overall, pair_report(result))


NODES = [RewriteEditInstruction]
