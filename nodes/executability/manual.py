"""EDIT_PLAN without a VLM: the user's instructions plus boxes or masks from any pack."""

import json
from typing import List, Optional

import torch

from ..errors import InputError
from .box_coords import to_source_pixels, SOURCE_PIXELS
from .instructions import split_instructions
from .plan import EditItem, EditPlan

USER_NEG_REASON = "marked non-executable by the user"
EMPTY_MASK_REASON = "its mask is empty"


def _parse_indices(text: str, count: int) -> set:
    out = set()
    for part in str(text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= count:
            raise InputError("non_executable", f"'{part}' is not an instruction number between 1 and {count}.",
                             "List 1-based instruction numbers separated by commas, e.g. '2' or '1, 3'.")
        out.add(int(part) - 1)
    return out


def _boxes_per_item(value, count: int, input_name: str) -> List[Optional[list]]:
    """One entry per instruction: None (no box given) or a list of [x1,y1,x2,y2] boxes."""
    if value is None:
        return [None] * count
    if isinstance(value, str):
        if not value.strip():
            return [None] * count
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InputError(input_name, f"is not valid JSON ({e.msg} at position {e.pos}).",
                             "Write e.g. [[10, 20, 200, 180], null] (one entry per instruction).") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError(input_name, f"must be a list, got {type(value).__name__}.", "Give one box per instruction.")
    value = list(value)

    def is_box(v):
        return isinstance(v, (list, tuple)) and len(v) == 4 and all(isinstance(c, (int, float)) for c in v)

    if count == 1 and is_box(value):
        value = [value]
    if len(value) != count:
        raise InputError(input_name, f"has {len(value)} entries for {count} instructions.",
                         "Give exactly one entry (a box, a list of boxes, or null) per instruction, in order.")
    out = []
    for i, entry in enumerate(value):
        if entry is None:
            out.append(None)
        elif is_box(entry):
            out.append([list(map(float, entry))])
        elif isinstance(entry, (list, tuple)) and all(is_box(b) for b in entry):
            out.append([list(map(float, b)) for b in entry])
        else:
            raise InputError(input_name, f"entry {i + 1} ({entry!r}) is not a box [x1,y1,x2,y2] or a list of boxes.",
                             "Use pixel coordinates: [x1, y1, x2, y2].")
    return out


def _mask_box(mask: torch.Tensor, width: int, height: int):
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        return None
    sx, sy = width / mask.shape[-1], height / mask.shape[-2]
    return [float(xs.min()) * sx, float(ys.min()) * sy, float(xs.max() + 1) * sx, float(ys.max() + 1) * sy]


def manual_plans(image, instructions_text, boxes_json="", non_executable="", masks=None, bboxes=None) -> list:
    """One EditPlan per image of the IMAGE batch [B,H,W,C]."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise InputError("image", "must be an IMAGE batch [B, H, W, C].", "Connect an IMAGE output.")
    instructions = split_instructions(instructions_text or "")
    if not instructions:
        raise InputError("instructions", "is empty.", "Write at least one edit instruction, one per line.")
    height, width = int(image.shape[1]), int(image.shape[2])
    count = len(instructions)
    neg = _parse_indices(non_executable, count)
    if bboxes is not None and boxes_json and str(boxes_json).strip():
        raise InputError("boxes", "and 'bboxes' are both given.", "Use one source of boxes.")
    per_item = _boxes_per_item(bboxes if bboxes is not None else boxes_json, count,
                               "bboxes" if bboxes is not None else "boxes")
    if masks is not None:
        if masks.dim() == 2:
            masks = masks.unsqueeze(0)
        if masks.shape[0] != count:
            raise InputError("masks", f"has {masks.shape[0]} masks for {count} instructions.",
                             "Give one mask per instruction, in order.")
    items = []
    for i, instruction in enumerate(instructions):
        executable, reason, boxes = True, "given by the user", []
        if masks is not None:
            box = _mask_box(masks[i], width, height)
            if box is None:
                executable, reason = False, EMPTY_MASK_REASON
            else:
                boxes = [box]
        if per_item[i] is not None:
            boxes = []
            for b in per_item[i]:
                px = to_source_pixels(b, SOURCE_PIXELS, (width, height))
                if px is None:
                    raise InputError("boxes", f"box {b} of instruction {i + 1} has no area inside the "
                                     f"{width}x{height} image.", "Use pixel coordinates inside the image.")
                boxes.append(list(px))
        if i in neg:
            executable, reason = False, USER_NEG_REASON
        items.append(EditItem(instruction=instruction, executable=executable, reason=reason,
                              target="", boxes=tuple(tuple(b) for b in boxes)))
    plan = EditPlan(items=tuple(items), image_size=(width, height))
    return [plan for _ in range(int(image.shape[0]))]
