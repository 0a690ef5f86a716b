"""The Attention Mask node's path for DiT editing models: FLUX.1 (Kontext) and Qwen-Image(-Edit).

The node calls :func:`dit_family` on its MODEL; for these models it hands over to
:func:`patch_dit_model`, which pairs instructions with masks exactly as the SD path does (prompt
lines or an EDIT_PLAN), encodes the segment conditioning (dit_conditioning.py) with the given
CLIP and installs the joint-attention confinement (attention_patches/comfy_dit_adapter.py) on a
clone of the model. The SD-only inputs (mode, resolutions) do not apply: every joint-attention
block is confined unless ``dit_blocks`` names some (:func:`parse_dit_blocks`), and masks are hard
at each token (a token belongs to a mask covering at least half of it).

Qwen-Image-Edit with an ``image``: every segment is encoded as TextEncodeQwenImageEditPlus encodes
its prompt with one picture (``Picture 1: <picture tokens>`` + the text, the VL copy of the image
scaled to ~384 x 384 pixels, the edit template of ComfyUI's Qwen-Image tokenizer), and the picture
rows are shared (dit_conditioning.encode_prefixed_segments).
"""

import logging
import math

import torch

from ...attention_patches.comfy_dit_adapter import (
    QWEN_IMAGE,
    DiTConfinement,
    UnsupportedModelError,
    detect_family,
    joint_block_counts,
)
from ...attention_patches.masked_attention import TEXT_BRANCH
from ..comfy_model import sigma_window
from ..errors import InputError
from .dit_conditioning import encode_prefixed_segments, encode_segments
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


def parse_dit_blocks(spec, counts):
    """``dit_blocks`` text -> None (every block) or a frozenset of ``(block_type, index)``.

    Comma-separated items: ``double`` / ``single`` (every block of that type), ``double:3`` (one),
    ``single:0-9`` (a range, both ends included). Empty or ``all``: every block. ``counts`` are the
    model's blocks per type (``comfy_dit_adapter.joint_block_counts``); indices are checked against them."""
    text = (spec or "").strip().lower()
    if text in ("", "all"):
        return None
    names = ", ".join(f"{k} 0-{n - 1}" for k, n in counts.items())
    chosen = set()
    for item in (t.strip() for t in text.split(",")):
        kind, _, rng = item.partition(":")
        kind = kind.strip()
        if kind not in counts:
            raise InputError("dit_blocks", f"'{item}' names no block type of this model (it has {names}).",
                             "Write e.g. 'double', 'single:0-9' or 'double:3, double:5'; leave it empty for every block.")
        n = counts[kind]
        if not rng.strip():
            chosen.update((kind, i) for i in range(n))
            continue
        lo, _, hi = rng.partition("-")
        try:
            lo_i = int(lo)
            hi_i = int(hi) if hi.strip() else lo_i
        except ValueError:
            raise InputError("dit_blocks", f"'{item}': '{rng.strip()}' is not an index or a range like 0-9.",
                             "Write block indices as numbers, e.g. 'double:0-9'.") from None
        if not 0 <= lo_i <= hi_i < n:
            raise InputError("dit_blocks", f"'{item}' is outside this model's {kind} blocks 0-{n - 1}.",
                             f"Use indices from 0 to {n - 1}.")
        chosen.update((kind, i) for i in range(lo_i, hi_i + 1))
    return frozenset(chosen)


def _clip_encoder(clip):
    def encode(text):
        out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
        out = dict(out)
        return out.pop("cond"), out
    return encode


VL_PIXELS = 384 * 384     # the area TextEncodeQwenImageEditPlus gives the VL encoder's copy of a picture


def _edit_template(clip):
    """(template, picture marker) of TextEncodeQwenImageEditPlus, derived from ComfyUI's Qwen-Image
    tokenizer at run time: its one-image template ends the user turn's head with the picture marker
    right before the text; the Plus node's template is the same without it (the marker goes into
    the text as 'Picture 1: <marker>')."""
    tokenizer = getattr(clip, "tokenizer", None)
    template = getattr(tokenizer, "llama_template_images", None)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InputError("clip", "is not a Qwen-Image text encoder (it has no image prompt template), so it cannot "
                         "read the image.",
                         "Load the text encoder with CLIPLoader type qwen_image (qwen_2.5_vl_7b), or leave 'image' "
                         "unconnected.")
    head, tail = template.split("{}")
    marker = head[head.rfind("\n") + 1:]
    if not marker:
        raise InputError("clip", "has an image prompt template without a picture marker before the text.",
                         "Use ComfyUI's Qwen-Image text encoder (CLIPLoader type qwen_image).")
    return head[:len(head) - len(marker)] + "{}" + tail, marker


def _vl_image(image):
    """The VL encoder's copy of the picture, scaled as TextEncodeQwenImageEditPlus scales it."""
    import comfy.utils

    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] < 3:
        raise InputError("image", f"is not an IMAGE ([B, H, W, C]); got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}.",
                         "Connect the image being edited (e.g. LoadImage).")
    if image.shape[0] != 1:
        raise InputError("image", f"holds {image.shape[0]} images; the text encoder reads one picture per edit.",
                         "Edit one image at a time (the plan and masks belong to one image).")
    samples = image[..., :3].movedim(-1, 1)
    scale = math.sqrt(VL_PIXELS / (samples.shape[3] * samples.shape[2]))
    width, height = round(samples.shape[3] * scale), round(samples.shape[2] * scale)
    return comfy.utils.common_upscale(samples, width, height, "area", "disabled").movedim(1, -1)


def qwen_edit_encoder(clip, image):
    """``encode(text) -> (tokens, extras, input ids)`` encoding 'Picture 1: <picture>' + text with the
    picture, as TextEncodeQwenImageEditPlus does for one image."""
    template, marker = _edit_template(clip)
    vl = _vl_image(image)
    picture = f"Picture 1: {marker}"

    def encode(text):
        tokens = clip.tokenize(picture + text, images=[vl], llama_template=template)
        ids = [t[0] if isinstance(t[0], int) else "picture" for chunk in next(iter(tokens.values())) for t in chunk]
        out = dict(clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True))
        return out.pop("cond"), out, ids
    return encode


def patch_dit_model(model, clip, masks, prompt, plan, routing, start_percent, end_percent, strength, apply_to,
                    image=None, dit_blocks="", mask_edges="binary"):
    """(patched MODEL clone, positive CONDITIONING, prompt text) for a FLUX.1 / Qwen-Image model.
    ``image`` (Qwen-Image only): the picture the text encoder reads with every segment.
    ``dit_blocks``: which joint-attention blocks are confined (:func:`parse_dit_blocks`).
    Every routing but 'whole prompt' is the per-segment confinement here (the instructions are
    always encoded apart); ``mask_edges`` does not apply (a token is in a mask or not)."""
    family = dit_family(model)
    if mask_edges and mask_edges != "binary":
        log.info("ContextEdit Attention Mask: mask_edges '%s' applies to SD models only; FLUX.1 / Qwen-Image tokens "
                 "belong to a mask covering at least half of them.", mask_edges)
    blocks = parse_dit_blocks(dit_blocks, joint_block_counts(model, family))
    if image is not None and family != QWEN_IMAGE:
        log.info("ContextEdit Attention Mask: 'image' is used only with Qwen-Image(-Edit) (its text encoder reads "
                 "the picture); ignored for this %s model.", family)
        image = None
    if clip is None or not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens"):
        raise InputError("clip", "is not a CLIP.", "Connect the text encoder of the model (DualCLIPLoader / CLIPLoader).")
    if routing not in ROUTINGS:
        raise InputError("routing", f"'{routing}' is not one of {ROUTINGS}.", "Pick one from the list.")
    if apply_to not in BRANCH_CHOICES:
        raise InputError("apply_to", f"'{apply_to}' is not one of {tuple(BRANCH_CHOICES)}.", "Pick one from the list.")
    sigma_max, sigma_min = sigma_window(model, start_percent, end_percent)
    spec = instructions_from(prompt, plan, masks)
    encode = _clip_encoder(clip) if image is None else qwen_edit_encoder(clip, image)
    if not spec.instructions:
        log.warning("ContextEdit Attention Mask: the plan has no executable instruction; the model is left "
                        "unpatched and the prompt is empty, so nothing is edited.")
        cond, extras = encode("")[:2]
        return model.clone(), [[cond, extras]], ""
    instructions, region_masks = spec.instructions, spec.masks.float()
    if routing == ROUTING_SINGLE and len(instructions) > 1:
        # every masked pixel sees the whole prompt: one segment, one region (the masks' union)
        instructions, region_masks = [spec.prompt], region_masks.amax(dim=0, keepdim=True)
    seg = encode_segments(encode, instructions) if image is None else encode_prefixed_segments(encode, instructions)
    width = _text_width(model, family)
    if seg.context.shape[-1] != width:
        raise InputError("clip", f"produces {seg.context.shape[-1]}-wide text features but the model expects {width}.",
                         "Use the text encoder that belongs to the model (T5-XXL + CLIP-L for FLUX.1, "
                         "Qwen2.5-VL for Qwen-Image).")
    branches = BRANCH_CHOICES[apply_to]
    confinement = DiTConfinement(
        seg.segments, region_masks,
        branches=(0,) if branches == TEXT_BRANCH else tuple(branches),
        blocks=blocks, sigma_max=sigma_max, sigma_min=sigma_min,
        strength=float(strength),
    )
    patched = confinement.install(model)
    return patched, [[seg.context, seg.extras]], spec.prompt

