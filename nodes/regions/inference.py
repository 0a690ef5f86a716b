"""Region prediction for the ComfyUI nodes: ComfyUI-layout tensors in, masks and an overlay out.

:class:`RegionModels` is the one module the loader node hands to ComfyUI's memory manager (the
frozen encoders plus the optional trained head). :func:`predict_masks` runs either the trained
head (checkpoint mode) or, per image, the test-time optimisation of a fresh head
(:func:`objective.optimize_region`, same losses as training). Plain torch; no ComfyUI import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .losses import LossWeights
from .model import RegionPredictor
from .objective import (
    DEFAULT_TEST_TIME_LR,
    RegionEncoders,
    check_images,
    optimize_region,
    predict_region,
)

OVERLAY_COLOR = (1.0, 0.15, 0.1)
OVERLAY_ALPHA = 0.5


class RegionModels(torch.nn.Module):
    """CLIP vision + instruction encoder (+ CLIP text) (+ trained head), as one module."""

    def __init__(self, vision, instruction, text=None, predictor: RegionPredictor | None = None):
        super().__init__()
        self.vision = vision
        self.instruction = instruction
        self.text = text
        self.predictor = predictor

    @property
    def encoders(self) -> RegionEncoders:
        return RegionEncoders(self.vision, self.instruction, self.text)

    @property
    def device(self):
        return next(self.vision.parameters()).device

    def check(self) -> None:
        """InputError naming ``region_predictor`` (or ``clip_text``) when the sizes do not fit."""
        if self.predictor is not None:
            self.encoders.check(self.predictor, input_name="region_predictor")
        elif self.text is not None:
            text_dim = getattr(self.text, "projection_dim", None)
            if text_dim is not None and text_dim != self.vision.projection_dim:
                raise InputError("clip_text", f"embeds text in {text_dim} dimensions but the CLIP vision model in "
                                 f"{self.vision.projection_dim}.", "Use the text tower of the same CLIP model.")


@dataclass
class MaskResult:
    soft: torch.Tensor        # [B, H, W] P_region upsampled to the image
    mask: torch.Tensor        # [B, H, W] 0/1, soft >= threshold
    overlay: torch.Tensor     # [B, H, W, 3] the image with the mask tinted
    test_time: bool = False
    losses: list = field(default_factory=list)          # per image: L_total per step, then the final value
    initial_soft: torch.Tensor | None = None            # test-time mode: the fresh head's map before any step


def overlay(images: torch.Tensor, mask: torch.Tensor, color=OVERLAY_COLOR, alpha: float = OVERLAY_ALPHA):
    """images [B, H, W, 3], mask [B, H, W] -> a new [B, H, W, 3] with the mask tinted."""
    m = (alpha * mask.to(images.dtype))[..., None]
    tint = torch.tensor(color, dtype=images.dtype, device=images.device)
    return (images * (1.0 - m) + tint * m).clamp(0.0, 1.0)


def _texts_given(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def is_test_time(models: RegionModels, steps: int) -> bool:
    return models.predictor is None or steps > 0


def predict_masks(models: RegionModels, image: torch.Tensor, instruction: str, threshold: float = 0.5,
                  steps: int = 0, lr: float = DEFAULT_TEST_TIME_LR, seed: int = 0,
                  edited: torch.Tensor | None = None, source_caption: str | None = None,
                  target_caption: str | None = None, weights: LossWeights | None = None,
                  on_step=None) -> MaskResult:
    """``image`` [B, H, W, 3] (ComfyUI IMAGE, 0..1) -> soft map, binary mask, overlay at the image size.

    ``steps`` 0 uses the trained head; ``steps`` > 0 (required when no head is loaded) fits a
    fresh head (the loaded head's sizes, else the paper's) to each image with the training losses,
    which needs ``edited`` (G(X, t_e), e.g. a global edit of the image), ``source_caption`` (t_o),
    ``target_caption`` (t_e) and a CLIP text model; ``weights`` are the loss weights of eq. 10/11
    (default: LossWeights()). ``on_step(done, total)`` reports progress over
    the whole batch. Inputs are never modified; outputs are on the CPU."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] < 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError("image", f"must be an IMAGE [B, H, W, 3], got {shape}.", "Connect an image.")
    if not _texts_given(instruction):
        raise InputError("instruction", "is empty.", "Write what to edit, e.g. 'make the car red'.")
    if not 0.0 < float(threshold) < 1.0:
        raise InputError("threshold", f"must be in (0, 1), got {threshold!r}.", "Use e.g. 0.5.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError("test_time_steps", f"must be a non-negative integer, got {steps!r}.", "Use 0 or e.g. 50.")
    device = models.device
    source = image[..., :3].movedim(-1, 1).to(device=device, dtype=torch.float32, copy=True)
    check_images(source, "image")
    b, _, h, w = source.shape
    initial = None
    losses = []
    test_time = is_test_time(models, steps)
    if not test_time:
        models.check()
        region = predict_region(models.predictor, models.encoders, source, [instruction] * b)
        soft = region.soft_at(h, w)
    else:
        if steps < 1:
            raise InputError("test_time_steps", "is 0, but no trained region predictor is loaded (test-time mode).",
                             "Set test_time_steps to e.g. 50, or load a region_predictor checkpoint.")
        if edited is None:
            raise InputError("edited", "is required in test-time mode (no checkpoint, or test_time_steps > 0).",
                             "Connect an edited version of the image (e.g. a global edit with the target "
                             "caption), or use a trained checkpoint with test_time_steps 0.")
        if not _texts_given(source_caption):
            raise InputError("source_caption", "is empty; test-time mode needs the description of the image (t_o).",
                             "Describe the image as it is, e.g. 'a red car on a street'.")
        if not _texts_given(target_caption):
            raise InputError("target_caption", "is empty; test-time mode needs the description after the edit (t_e).",
                             "Describe the edited image, e.g. 'a blue car on a street'.")
        if models.text is None:
            raise InputError("region_predictor", "was loaded without a CLIP text model, which test-time mode needs "
                             "for L_CLIP.", "Pick a clip_text model in ContextEdit Load Region Predictor.")
        if not isinstance(edited, torch.Tensor) or edited.dim() != 4 or edited.shape[-1] < 3:
            raise InputError("edited", "must be an IMAGE [B, H, W, 3].", "Connect an image.")
        if edited.shape[0] not in (1, b):
            raise InputError("edited", f"has {edited.shape[0]} images for {b} source images.",
                             "Pass one edited image, or one per source image.")
        models.check()
        generated = edited[..., :3].movedim(-1, 1).to(device=device, dtype=torch.float32, copy=True)
        config = models.predictor.config if models.predictor is not None else None
        softs, initials = [], []
        for i in range(b):
            def step(done, total, i=i):
                if on_step is not None:
                    on_step(i * steps + done, b * steps)

            result = optimize_region(models.encoders, source[i:i + 1], instruction, source_caption, target_caption,
                                     generated[min(i, generated.shape[0] - 1)][None], steps=steps, lr=float(lr),
                                     config=config, weights=weights, seed=int(seed), on_step=step)
            softs.append(result.region.soft_at(h, w).detach())
            initials.append(result.initial_region.soft_at(h, w).detach())
            losses.append(result.losses)
        soft, initial = torch.cat(softs), torch.cat(initials)[:, 0].float().cpu()
    soft = soft.detach()[:, 0].float().cpu()
    mask = (soft >= float(threshold)).float()
    picture = image[..., :3].detach().float().cpu()
    return MaskResult(soft=soft, mask=mask, overlay=overlay(picture, mask), test_time=test_time, losses=losses,
                      initial_soft=initial)

