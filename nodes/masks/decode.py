"""Masks for a batch of images and their plans: the engine behind ContextEdit Decode Masks."""

import torch

from ..errors import InputError
from .box_masks import overlay, union_masks
from .sam import masks_for_plan


def decode_batch(images: torch.Tensor, plans: list, sam=None, dilate_px: int = 0, feather_px: int = 0):
    """(masks [B*N, H, W] image-major in instruction order, union [B, H, W], preview [B, H, W, 3]).

    Every image needs its own plan (one plan for a batch is used for every image) and all plans
    the same number of instructions, so mask k of image b sits at b*N + k.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError("image", "must be an IMAGE batch [B, H, W, C].", "Connect an IMAGE output.")
    batch = int(images.shape[0])
    if len(plans) == 1 and batch > 1:
        plans = plans * batch
    if len(plans) != batch:
        raise InputError("plan", f"holds {len(plans)} plans for a batch of {batch} images.",
                         "Check Instructions on the same image batch (it gives one plan per image).")
    counts = {len(p.items) for p in plans}
    if len(counts) != 1:
        raise InputError("plan", f"the plans have different instruction counts {sorted(counts)}.",
                         "Use the same instructions for every image of the batch.")
    per_image = [masks_for_plan(images[b], plans[b], sam=sam, dilate_px=dilate_px, feather_px=feather_px)
                 for b in range(batch)]
    h, w = int(images.shape[1]), int(images.shape[2])
    n = counts.pop()
    if n == 0:
        stacked = torch.zeros(0, h, w)
        union = torch.zeros(batch, h, w)
        return stacked, union, images[..., :3].clone()
    stacked = torch.cat(per_image, dim=0)
    union = torch.stack([union_masks(m) for m in per_image])
    preview = overlay(images[..., :3], torch.stack(per_image))
    return stacked, union, preview
