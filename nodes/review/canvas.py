"""What the canvas is sent by Review Plan (its UI output); Decode Masks' is in masks/canvas.py.

ComfyUI hands a node's UI output to the frontend (the ``executed`` message, and /history); the
pack's extension (web/js/) draws it. Both messages are lists with one entry per image and carry
each instruction's colour, so the plan editor and the mask view colour an instruction alike
(the colour Decode Masks tints its mask with). Keys are the pack's own, so the frontend's stock
image preview does not draw the images a second time.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..masks.canvas import colour_hex

REVIEW_KEY = "contextedit_review"


def review_message(review, model_plans: Sequence, image_refs: Sequence[dict], images: torch.Tensor) -> dict:
    """The Review Plan node's UI output: per image its preview file, size, fingerprint, the plan
    after the corrections, the model's plan before them, and what was applied or dropped."""
    height, width = int(images.shape[1]), int(images.shape[2])
    model_plans = list(model_plans)
    if len(model_plans) == 1 and len(review.plans) > 1:
        model_plans = model_plans * len(review.plans)
    entries = []
    for b, plan in enumerate(review.plans):
        entries.append({
            "image": dict(image_refs[b]),
            "width": width,
            "height": height,
            "plan_size": list(plan.image_size or (width, height)),
            "fingerprint": review.fingerprints[b],
            "colours": [colour_hex(i) for i in range(len(plan.items))],
            "plan": plan.to_dict(),
            "model_plan": model_plans[b].to_dict(),
            "applied": list(review.applied),
            "dropped": list(review.dropped),
        })
    return {REVIEW_KEY: entries}
