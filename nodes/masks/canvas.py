"""What the canvas is sent by Decode Masks: its UI output, drawn by the pack's web extension.

ComfyUI hands a node's UI output to the frontend (the ``executed`` message, and /history). The
message is a list with one entry per image and carries each instruction's colour, the one
:func:`overlay` tints its mask with, which the plan editor (Review Plan) uses too. The key is the
pack's own, so the frontend's stock image preview does not draw the image a second time.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .box_masks import palette_color

MASKS_KEY = "contextedit_masks"


PREVIEW_MAX_SIDE = 1024  # the canvas shows the picture in a node: no need to send more pixels


def preview_pixels(images: torch.Tensor, max_side: int = PREVIEW_MAX_SIDE) -> torch.Tensor:
    """IMAGE [B, H, W, C] for the canvas: as given when its longer side is at most ``max_side``,
    else shrunk (area average) to fit. Coordinates sent beside it stay in full-size pixels."""
    height, width = int(images.shape[1]), int(images.shape[2])
    scale = max_side / max(height, width)
    if scale >= 1:
        return images
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    shrunk = torch.nn.functional.interpolate(images.movedim(-1, 1).float(), size=size, mode="area")
    return shrunk.movedim(1, -1).clamp(0, 1)


def colour_hex(index: int) -> str:
    """Instruction ``index``'s colour (box_masks.palette_color) as ``#rrggbb``."""
    return "#" + "".join(f"{round(c * 255):02x}" for c in palette_color(index))


def _mask_stats(mask: torch.Tensor) -> dict:
    """Pixel count, bounding box (continuous pixel edges) and centroid of one mask (> 0.5)."""
    on = mask > 0.5
    area = int(on.sum())
    if area == 0:
        return {"area": 0, "bbox": None, "centroid": None}
    ys, xs = torch.nonzero(on, as_tuple=True)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    centroid = [float(xs.double().mean()) + 0.5, float(ys.double().mean()) + 0.5]
    return {"area": area, "bbox": bbox, "centroid": centroid}


def masks_message(plans: Sequence, masks: torch.Tensor, overlay_refs: Sequence[dict],
                  images: torch.Tensor, sam_used: bool, dilate: int = 0, feather: int = 0) -> dict:
    """Decode Masks' UI output: per image the tinted preview file and, per instruction, its
    colour, verdict, text, the plan's boxes (image pixels) and the mask's area, box and centroid
    (an empty [NEG] mask: area 0, no box)."""
    batch, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    plans = list(plans)
    if len(plans) == 1 and batch > 1:
        plans = plans * batch
    count = len(plans[0].items) if plans else 0
    entries = []
    for b in range(batch):
        items = []
        plan_w, plan_h = plans[b].image_size or (width, height)
        sx, sy = width / plan_w, height / plan_h
        for k, item in enumerate(plans[b].items):
            stats = _mask_stats(masks[b * count + k])
            boxes = [[x1 * sx, y1 * sy, x2 * sx, y2 * sy] for x1, y1, x2, y2 in item.boxes]
            items.append({"number": k + 1, "instruction": item.instruction, "resolved": item.resolved,
                          "executable": item.executable, "colour": colour_hex(k), "plan_boxes": boxes,
                          "fraction": stats["area"] / float(width * height), **stats})
        entries.append({"image": dict(overlay_refs[b]), "width": width, "height": height,
                        "source": "SAM" if sam_used else "boxes", "dilate": dilate, "feather": feather,
                        "items": items})
    return {MASKS_KEY: entries}
