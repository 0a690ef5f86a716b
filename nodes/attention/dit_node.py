"""The Attention Mask node's path for DiT editing models: FLUX.1 (Kontext) and Qwen-Image(-Edit).

The node calls :func:`dit_family` on its MODEL; for these models it hands over to
:func:`patch_dit_model`, which pairs instructions with masks exactly as the SD path does (prompt
lines or an EDIT_PLAN), encodes the segment conditioning (dit_conditioning.py) with the given
CLIP and installs the joint-attention confinement (attention_patches/comfy_dit_adapter.py) on a
clone of the model. The SD-only inputs (mode, resolutions) do not apply: every joint-attention
block is confined, and masks are hard at each token (a token belongs to a mask covering at least
half of it).
"""

import logging

from ...attention_patches.comfy_dit_adapter import (
    DiTConfinement,
    UnsupportedModelError,
    detect_family,
)
from ...attention_patches.masked_attention import TEXT_BRANCH
from ..comfy_model import sigma_window
from ..errors import InputError
from .dit_conditioning import encode_segments
from .mask_patch import BRANCH_CHOICES, ROUTING_SINGLE, ROUTINGS, instructions_from

log = logging.getLogger(__name__)


def dit_family(model):
    """'flux' / 'qwen_image' for a DiT the confinement supports, None for a UNet (the SD path) or
    something that is not a ComfyUI MODEL; an InputError for other DiTs (e.g. Flux.2)."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if dm is None or not hasattr(model, "get_model_object"):
        return None
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    if isinstance(dm, UNetModel):
        return None
    try:
        return detect_family(model)
    except UnsupportedModelError as e:
        raise InputError("model", str(e), "Connect a FLUX.1 Kontext, Qwen-Image-Edit or SD1.x/SDXL model.") from e


def _text_width(model, family):
    dm = model.get_model_object("diffusion_model")
    return int(dm.txt_in.weight.shape[1])


def _clip_encoder(clip):
    def encode(text):
        out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
        out = dict(out)
        return out.pop("cond"), out
    return encode


def patch_dit_model(model, clip, masks, prompt, plan, routing, start_percent, end_percent, strength, apply_to):
    """(patched MODEL clone, positive CONDITIONING, prompt text) for a FLUX.1 / Qwen-Image model."""
    family = dit_family(model)
    if clip is None or not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens"):
        raise InputError("clip", "is not a CLIP.", "Connect the text encoder of the model (DualCLIPLoader / CLIPLoader).")
    if routing not in ROUTINGS:
        raise InputError("routing", f"'{routing}' is not one of {ROUTINGS}.", "Pick one from the list.")
    if apply_to not in BRANCH_CHOICES:
        raise InputError("apply_to", f"'{apply_to}' is not one of {tuple(BRANCH_CHOICES)}.", "Pick one from the list.")
    sigma_max, sigma_min = sigma_window(model, start_percent, end_percent)
    spec = instructions_from(prompt, plan, masks)
    encode = _clip_encoder(clip)
    if not spec.instructions:
        log.warning("ContextEdit Attention Mask: the plan has no executable instruction; the model is left "
                        "unpatched and the prompt is empty, so nothing is edited.")
        cond, extras = encode("")
        return model.clone(), [[cond, extras]], ""
    instructions, region_masks = spec.instructions, spec.masks.float()
    if routing == ROUTING_SINGLE and len(instructions) > 1:
        # every masked pixel sees the whole prompt: one segment, one region (the masks' union)
        instructions, region_masks = [spec.prompt], region_masks.amax(dim=0, keepdim=True)
    seg = encode_segments(encode, instructions)
    width = _text_width(model, family)
    if seg.context.shape[-1] != width:
        raise InputError("clip", f"produces {seg.context.shape[-1]}-wide text features but the model expects {width}.",
                         "Use the text encoder that belongs to the model (T5-XXL + CLIP-L for FLUX.1, "
                         "Qwen2.5-VL for Qwen-Image).")
    branches = BRANCH_CHOICES[apply_to]
    confinement = DiTConfinement(
        seg.segments, region_masks,
        branches=(0,) if branches == TEXT_BRANCH else tuple(branches),
        sigma_max=sigma_max, sigma_min=sigma_min,
        strength=float(strength),
    )
    patched = confinement.install(model)
    return patched, [[seg.context, seg.extras]], spec.prompt

