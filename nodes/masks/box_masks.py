"""Boxes -> masks, mask morphology and a coloured preview. Pure torch, never mutates inputs.

Pixel rule (the one every function here follows)
------------------------------------------------
A box ``[x1, y1, x2, y2]`` is in continuous pixel coordinates: pixel ``(row i, column j)`` covers
``[j, j+1) x [i, i+1)``, so ``[0, 0, W, H]`` is the whole image. A pixel belongs to the box when
its centre ``(j + 0.5, i + 0.5)`` lies inside the box, borders included:
``x1 <= j + 0.5 <= x2`` and ``y1 <= i + 0.5 <= y2``. Integer boxes therefore cover exactly
``(x2 - x1) * (y2 - y1)`` pixels. A box with positive width that covers no pixel centre (thinner
than a pixel) still marks the column holding its middle, so no real box vanishes; likewise for
rows. A box with ``x2 <= x1`` or ``y2 <= y1``, or lying outside the image, marks nothing.

Per-instruction masks follow EditPlan's rules: a non-executable ([NEG]) item gives an exactly-zero
mask (CAMILA: [NEG] -> all-black mask), an executable item gives the union of its boxes, and an
executable item with no boxes gives the whole image.
"""

from __future__ import annotations

import colorsys
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError

# matplotlib's tab10: distinct, readable on photos
_PALETTE = (
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
)


def palette_color(index: int) -> tuple:
    """A distinct RGB colour (0..1) for instruction ``index``: tab10, then golden-ratio hues."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.85, 0.95)


def _check_hw(height, width):
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(name, f"must be a positive integer, got {value!r}.",
                             "Pass the image size in pixels.")


def _box_values(box) -> tuple:
    if isinstance(box, torch.Tensor):
        box = box.detach().flatten().tolist()
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise InputError("boxes", f"each box must be [x1, y1, x2, y2], got {box!r}.",
                         "Give boxes as four pixel coordinates.")
    values = []
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError("boxes", f"box {list(box)!r} must hold four finite numbers.",
                             "Give boxes as four pixel coordinates.")
        values.append(float(v))
    return tuple(values)


def _axis(lo: float, hi: float, size: int, device) -> torch.Tensor:
    """Boolean [size]: which pixel centres lie in [lo, hi] (see the module's pixel rule)."""
    centres = torch.arange(size, dtype=torch.float64, device=device) + 0.5
    inside = (centres >= lo) & (centres <= hi)
    if hi > lo and hi > 0 and lo < size and not bool(inside.any()):
        inside[min(max(int(math.floor((lo + hi) / 2)), 0), size - 1)] = True
    return inside


def box_to_mask(box, height: int, width: int, device=None) -> torch.Tensor:
    """Binary float32 mask [height, width] of one box (pixel rule in the module docstring)."""
    _check_hw(height, width)
    x1, y1, x2, y2 = _box_values(box)
    if not (x2 > x1 and y2 > y1):
        return torch.zeros(height, width, dtype=torch.float32, device=device)
    rows = _axis(y1, y2, height, device)
    cols = _axis(x1, x2, width, device)
    return (rows[:, None] & cols[None, :]).to(torch.float32)


def boxes_to_mask(boxes: Sequence, height: int, width: int, device=None) -> torch.Tensor:
    """Union of the boxes' masks, [height, width] float32 (zeros for no boxes)."""
    _check_hw(height, width)
    mask = torch.zeros(height, width, dtype=torch.float32, device=device)
    for box in boxes:
        mask = torch.maximum(mask, box_to_mask(box, height, width, device))
    return mask


def union_masks(masks) -> torch.Tensor:
    """Pixel-wise maximum over masks: a tensor [N, H, W] or a sequence of [H, W] tensors."""
    if isinstance(masks, torch.Tensor):
        if masks.dim() != 3:
            raise InputError("masks", f"must be [N, H, W], got shape {tuple(masks.shape)}.",
                             "Stack the masks first.")
        if masks.shape[0] == 0:
            return torch.zeros(masks.shape[1:], dtype=masks.dtype, device=masks.device)
        return masks.amax(dim=0)
    masks = list(masks)
    if not masks:
        raise InputError("masks", "is empty, so the mask size is unknown.",
                         "Pass at least one mask (or an [0, H, W] tensor).")
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError("masks", f"must all be [H, W] of one size, got {sorted(shapes)}.",
                         "Resize the masks to one size.")
    return torch.stack(masks).amax(dim=0)


def _as_nchw(mask: torch.Tensor):
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
        raise InputError("mask", "must be a tensor with at least 2 dimensions [..., H, W].",
                         "Pass a ComfyUI MASK.")
    shape = mask.shape
    flat = mask.reshape(-1, 1, shape[-2], shape[-1])
    if not flat.is_floating_point():
        flat = flat.to(torch.float32)
    return flat, shape


def _check_pixels(pixels) -> int:
    if isinstance(pixels, bool) or not isinstance(pixels, int):
        raise InputError("pixels", f"must be an integer, got {pixels!r}.", "Use whole pixels.")
    return pixels


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow the mask by ``pixels`` (max-pool with a (2p+1)-square window; same shape out).

    Negative ``pixels`` erodes (min-pool); the image border does not erode the mask.
    ``pixels == 0`` returns a copy.
    """
    pixels = _check_pixels(pixels)
    flat, shape = _as_nchw(mask)
    if pixels == 0:
        return flat.reshape(shape).clone()
    p = abs(pixels)
    if pixels > 0:
        out = F.max_pool2d(flat, kernel_size=2 * p + 1, stride=1, padding=p)
    else:
        out = -F.max_pool2d(-flat, kernel_size=2 * p + 1, stride=1, padding=p)
    return out.reshape(shape)


def gaussian_kernel(pixels: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D normalised Gaussian of radius ``pixels`` and sigma ``pixels / 3`` (+-3 sigma)."""
    pixels = _check_pixels(pixels)
    if pixels <= 0:
        return torch.ones(1, dtype=dtype, device=device)
    sigma = pixels / 3.0
    x = torch.arange(-pixels, pixels + 1, dtype=torch.float64)
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def feather_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften the mask edge over ``pixels`` each side: a separable Gaussian blur with radius
    ``pixels`` and sigma ``pixels / 3``, edges replicated, result clamped to 0..1.

    A zero mask stays exactly zero. ``pixels <= 0`` returns a copy.
    """
    pixels = _check_pixels(pixels)
    flat, shape = _as_nchw(mask)
    if pixels <= 0:
        return flat.reshape(shape).clone()
    kernel = gaussian_kernel(pixels, dtype=flat.dtype, device=flat.device)
    k = kernel.numel()
    x = F.pad(flat, (pixels, pixels, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, k))
    x = F.pad(x, (0, 0, pixels, pixels), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, k, 1))
    return x.clamp(0.0, 1.0).reshape(shape)


def item_masks(boxes_per_item: Sequence[Optional[Sequence]], height: int, width: int,
               source_size: Optional[tuple] = None, dilate: int = 0, feather: int = 0,
               device=None) -> torch.Tensor:
    """[N, height, width] float32, one mask per item in order.

    ``None`` -> exactly-zero mask (a [NEG] item); ``[]`` -> the whole image; boxes -> their
    union, grown by ``dilate`` then softened by ``feather`` pixels. Boxes are in pixels of
    ``source_size`` = (width, height) and are rescaled to this size (default: the same size).
    """
    _check_hw(height, width)
    _check_pixels(dilate)
    _check_pixels(feather)
    if source_size is None:
        sx = sy = 1.0
    else:
        if (not isinstance(source_size, (list, tuple)) or len(source_size) != 2
                or not all(isinstance(v, (int, float)) and v > 0 for v in source_size)):
            raise InputError("source_size", f"must be (width, height), got {source_size!r}.",
                             "Pass the size the boxes were measured on.")
        sx, sy = width / source_size[0], height / source_size[1]
    masks = []
    for boxes in boxes_per_item:
        if boxes is None:
            masks.append(torch.zeros(height, width, dtype=torch.float32, device=device))
            continue
        boxes = list(boxes)
        if not boxes:
            mask = torch.ones(height, width, dtype=torch.float32, device=device)
        else:
            scaled = []
            for box in boxes:
                x1, y1, x2, y2 = _box_values(box)
                scaled.append((x1 * sx, y1 * sy, x2 * sx, y2 * sy))
            mask = boxes_to_mask(scaled, height, width, device)
        if dilate:
            mask = dilate_mask(mask, dilate)
        if feather:
            mask = feather_mask(mask, feather)
        masks.append(mask)
    if not masks:
        return torch.zeros(0, height, width, dtype=torch.float32, device=device)
    return torch.stack(masks)


def plan_masks(plan, height: Optional[int] = None, width: Optional[int] = None, dilate: int = 0,
               feather: int = 0, device=None) -> torch.Tensor:
    """[N, H, W] masks of an EditPlan, in instruction order ([NEG] items exactly zero).

    ``height``/``width`` default to the plan's image size; when they differ from it the boxes
    are rescaled. Works with any object with ``items`` (each ``executable`` and ``boxes``) and
    ``image_size``.
    """
    plan_size = getattr(plan, "image_size", None)
    if height is None or width is None:
        if plan_size is None:
            raise InputError("plan", "has no image size, so the mask size is unknown.",
                             "Pass height and width.")
        width = plan_size[0] if width is None else width
        height = plan_size[1] if height is None else height
    boxes_per_item = [list(item.boxes) if item.executable else None for item in plan.items]
    return item_masks(boxes_per_item, height, width, source_size=plan_size, dilate=dilate,
                      feather=feather, device=device)


def overlay(image: torch.Tensor, masks: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Preview: tint each mask's pixels with its instruction's colour (``palette_color(n)``).

    ``image`` is a ComfyUI IMAGE [B, H, W, C] (C = 3, or 4 with alpha left untouched);
    ``masks`` is [N, H, W] (the same masks on every image) or [B, N, H, W] (per image). Masks
    are blended in order: ``out = out * (1 - alpha*m) + colour * alpha*m``. Returns a new image.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise InputError("image", "must be an IMAGE tensor [B, H, W, 3 or 4].",
                         "Connect an IMAGE output.")
    if not isinstance(masks, torch.Tensor) or masks.dim() not in (2, 3, 4):
        raise InputError("masks", "must be [N, H, W] or [B, N, H, W].", "Connect a MASK batch.")
    b, h, w, c = image.shape
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if masks.dim() == 3:
        masks = masks.unsqueeze(0).expand(b, -1, -1, -1)
    if masks.shape[0] != b or tuple(masks.shape[-2:]) != (h, w):
        raise InputError(
            "masks", f"shape {tuple(masks.shape)} does not fit the {b}x{h}x{w} image batch.",
            "Make the masks the image's size (and batch) first.",
        )
    alpha = float(alpha)
    out = image.to(torch.float32)
    rgb = out[..., :3]
    weights = masks.to(device=image.device, dtype=torch.float32).clamp(0.0, 1.0) * alpha
    for n in range(masks.shape[1]):
        colour = torch.tensor(palette_color(n), dtype=torch.float32, device=image.device)
        weight = weights[:, n, :, :, None]
        rgb = rgb * (1 - weight) + colour * weight
    if c == 4:
        out = torch.cat([rgb, out[..., 3:]], dim=-1)
    else:
        out = rgb
    return out.clamp(0.0, 1.0).to(image.dtype)
