"""The prompt that asks a vision-language model for an executability verdict per instruction.

CAMILA trains a model to emit [MASK] / [NEG] per instruction; we ask an off-the-shelf VLM for the
same decision as strict JSON, with InsightEdit's comprehension step first (a reasoning
instruction resolved into an explicit one, kept next to the user's words), plus a box per executable instruction (notes/algorithms.md section
7: grounding replaces the untrained mask decoder) and the two captions t_o / t_e. The answer is
read by reply_parser, which tolerates the ways models deviate from what we ask here.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import InputError
from .box_coords import ABSOLUTE, RELATIVE_1000, check_convention, check_size
from .plan import EDIT_TYPES


def coordinate_rule(convention: str, model_input_size=None) -> str:
    """One sentence telling the model how to write box coordinates."""
    check_convention(convention)
    if convention == RELATIVE_1000:
        return ("Coordinates are relative to the image on a 0-1000 scale: (0, 0) is the top-left "
                "corner and (1000, 1000) the bottom-right corner, whatever the image size.")
    if model_input_size is not None:
        width, height = check_size(model_input_size, "model_input_size")
        size = f" The image is {width} pixels wide and {height} pixels high."
    else:
        size = ""
    what = "the image as you see it" if convention == ABSOLUTE else "the image"
    return (f"Coordinates are absolute pixel positions in {what}: x to the right, y down, "
            f"(0, 0) is the top-left corner.{size}")


def build_prompt(instructions: Sequence[str], convention: str,
                 model_input_size: Optional[tuple] = None) -> str:
    """The user-turn text (the image goes alongside it in the chat message).

    ``model_input_size`` is ``(width, height)`` of the image as the model sees it; for absolute
    pixel models it lets the prompt state the size the coordinates refer to.
    """
    if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
        raise InputError("instructions", "must be a list of instruction strings.",
                         "Split the prompt with split_instructions() first.")
    if not instructions:
        raise InputError("instructions", "is empty.", "Type at least one edit instruction.")
    numbered = "\n".join(f"{i}. {text}" for i, text in enumerate(instructions, start=1))
    types = " | ".join(f'"{t}"' for t in EDIT_TYPES)
    return f"""You check whether image-editing instructions can be carried out on this image.

Instructions:
{numbered}

Some instructions describe their object indirectly and need understanding (for example "remove \
the thing that keeps food cold" means "remove the refrigerator"). For each instruction first \
resolve it into an explicit instruction that names the object it acts on, using what the image \
shows; when it is already explicit, repeat it unchanged. Then decide if it is executable on this image. It is NOT executable when the \
object or region it refers to is not in the image (for example "remove the pancakes" when there \
are no pancakes), when it contradicts what the image shows, or when it contradicts an earlier \
instruction. For an executable instruction give the box of the region the edit changes; for an \
"add" instruction give the box where the new object should be placed; for a style or \
whole-image edit give null.
{coordinate_rule(convention, model_input_size)}

Answer with strict JSON only (double quotes, no comments, no trailing commas, no text before or \
after it), exactly one entry per instruction, in the same order:
{{"source_caption": "<one sentence describing the image as it is>",
 "edits": [
  {{"index": <the instruction's number>, "executable": true or false, \
"resolved": "<the explicit instruction>", "reason": "<short reason>", \
"target": "<the object or region the edit acts on, as a short noun phrase>", \
"box": [x1, y1, x2, y2] or null, "edit_type": {types}}}
 ],
 "target_caption": "<one sentence describing the image after every executable edit>"}}"""
