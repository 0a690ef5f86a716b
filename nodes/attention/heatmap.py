"""Turn captured attention shares into an IMAGE heat-map (people would rather look than read)."""

from typing import List, Optional

import torch
import torch.nn.functional as F

from ...attention_patches.capture import CapturedMap

# a perceptually ordered dark-blue -> teal -> yellow ramp (viridis-like anchor points)
_RAMP = torch.tensor([
    [0.267, 0.005, 0.329],
    [0.230, 0.322, 0.546],
    [0.128, 0.567, 0.551],
    [0.369, 0.789, 0.383],
    [0.993, 0.906, 0.144],
])


def colorize(values: torch.Tensor) -> torch.Tensor:
    """[..., H, W] in [0, 1] -> [..., H, W, 3]"""
    v = values.clamp(0, 1) * (len(_RAMP) - 1)
    lo = v.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (v - lo).unsqueeze(-1)
    return _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac


def average_maps(maps: List[CapturedMap], branch: Optional[int] = None) -> torch.Tensor:
    """Mean share over layers, each upsampled to the finest captured grid: [b, h, w]."""
    chosen = [m for m in maps if branch is None or m.branch == branch]
    if not chosen:
        raise ValueError("no attention was captured for this branch")
    h = max(m.height for m in chosen)
    w = max(m.width for m in chosen)
    acc = None
    for m in chosen:
        grid = m.share.reshape(-1, 1, m.height, m.width)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        acc = grid if acc is None else acc + grid
    return acc / len(chosen)


def render(maps: List[CapturedMap], out_h: int, out_w: int, branch: Optional[int] = None,
           normalize: bool = True, background: Optional[torch.Tensor] = None, alpha: float = 0.6) -> torch.Tensor:
    """IMAGE [b, out_h, out_w, 3]. ``normalize`` stretches each map to its own max; otherwise the
    absolute share (0..1) is shown, which keeps before/after comparisons honest."""
    share = average_maps(maps, branch)
    if normalize:
        peak = share.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
        share = share / peak
    up = F.interpolate(share.unsqueeze(1), size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]
    img = colorize(up)
    if background is not None:
        bg = background[..., :3].float().cpu()
        if bg.shape[1:3] != (out_h, out_w):
            bg = F.interpolate(bg.movedim(-1, 1), size=(out_h, out_w), mode="bilinear", align_corners=False).movedim(1, -1)
        if bg.shape[0] != img.shape[0]:
            bg = bg[:1].expand(img.shape[0], -1, -1, -1)
        img = alpha * img + (1 - alpha) * bg
    return img.clamp(0, 1)
