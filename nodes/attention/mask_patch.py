"""Engine of the Attention Mask node: from prompt/plan + masks to a MaskModulation controller.

Kept free of ComfyUI imports: the node passes ``tokenize(text)`` (ComfyUI's CLIP.tokenize with
word ids) and ``encode(text)`` (returns the [1, T, C] cross-attention conditioning).
"""

from dataclasses import dataclass
from typing import Callable, List

import torch

from ...attention_patches import LayerSelector, MaskModulation, ModulationMode, TokenRouting
from ...attention_patches.masked_attention import TEXT_BRANCH
from ..errors import InputError
from ..executability.instructions import split_instructions
from ..masks.token_broadcaster import locate_phrases

ROUTING_CAMILA = "per token (CAMILA)"     # M[p, j] = mask of token j's instruction (the default)
ROUTING_FOI = "per instruction (FoI)"     # one M per pixel; other instructions' tokens hidden
ROUTING_SINGLE = "whole prompt"           # every token follows the union of the masks
ROUTINGS = (ROUTING_CAMILA, ROUTING_FOI, ROUTING_SINGLE)

BRANCH_CHOICES = {
    "text branch (auto)": TEXT_BRANCH,
    "KSampler positive (0)": (0,),
    "DualCFGGuider cond1 (2)": (2,),
}

DOWNSCALE_CHOICES = (8, 16, 32, 64)


def split_prompt(prompt: str) -> List[str]:
    """Instructions of a prompt (one per line, ';', numbered lists...): the pack's one splitter."""
    return split_instructions(prompt)


def join_instructions(instructions: List[str]) -> str:
    return ", ".join(instructions)


def parse_downscales(text: str) -> tuple:
    """'32' or '16, 32' -> (16, 32): image-downscale factors of the layers to patch."""
    try:
        values = tuple(sorted({int(v) for v in str(text).replace(";", ",").split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or any(v not in DOWNSCALE_CHOICES for v in values):
        raise InputError("resolutions", f"'{text}' is not a list of downscale factors.",
                         "Use comma-separated values from 8, 16, 32, 64 (32 = 16x16 layers at 512 px, the default).")
    return values


@dataclass
class PromptSpec:
    prompt: str                    # the text the model is conditioned on
    instructions: List[str]        # one per mask, in mask order
    masks: torch.Tensor            # [N, H, W], NEG/dropped instructions removed


def instructions_from(prompt: str, plan, masks: torch.Tensor) -> PromptSpec:
    """Pair masks with instructions, from an EDIT_PLAN (its items, in order) or the prompt."""
    if masks is None or masks.dim() not in (2, 3):
        raise InputError("masks", f"expected a MASK batch [N, H, W], got {None if masks is None else tuple(masks.shape)}.",
                         "Connect one mask per instruction (e.g. from ContextEdit Decode Masks).")
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if plan is not None:
        items = list(getattr(plan, "items", []))
        if not items:
            raise InputError("plan", "has no instructions.", "Check the plan's instructions input.")
        if masks.shape[0] != len(items):
            raise InputError("masks", f"has {masks.shape[0]} masks but the plan has {len(items)} instructions.",
                             "Give one mask per plan instruction, in the plan's order (ContextEdit Decode Masks does).")
        keep = [i for i, it in enumerate(items) if it.executable]
        if not keep:
            # nothing may be edited: an empty prompt everywhere (the image-only path)
            return PromptSpec("", [], masks[:0])
        instructions = [items[i].resolved.strip() for i in keep]
        text = prompt.strip() if prompt and prompt.strip() else join_instructions(instructions)
        return PromptSpec(text, instructions, masks[keep])
    if not prompt or not prompt.strip():
        raise InputError("prompt", "is empty.", "Write the edit instruction(s), one per line, or connect an EDIT_PLAN.")
    # the prompt is kept verbatim, so a CLIPTextEncode of the same text matches the patch
    text = prompt.strip()
    instructions = split_prompt(text)
    if masks.shape[0] == 1 and len(instructions) > 1:
        return PromptSpec(text, [text], masks)  # one mask: one region for the whole prompt
    if masks.shape[0] != len(instructions):
        raise InputError("masks", f"has {masks.shape[0]} masks but the prompt has {len(instructions)} instructions "
                         f"({instructions}).",
                         "Write one instruction per line and give one mask per instruction, in the same order.")
    return PromptSpec(text, instructions, masks)


def build_mask_modulation(
    tokenize: Callable,
    encode: Callable,
    spec: PromptSpec,
    *,
    mode: str = ModulationMode.LOGITS.value,
    routing: str = ROUTING_CAMILA,
    downscales=(32,),
    sigma_max: float = float("inf"),
    sigma_min: float = 0.0,
    strength: float = 1.0,
    branch: str = "text branch (auto)",
) -> MaskModulation:
    if routing not in ROUTINGS:
        raise InputError("routing", f"'{routing}' is not one of {ROUTINGS}.", "Pick one from the list.")
    if branch not in BRANCH_CHOICES:
        raise InputError("apply_to", f"'{branch}' is not one of {tuple(BRANCH_CHOICES)}.", "Pick one from the list.")
    positions, lay = locate_phrases(tokenize, spec.prompt, spec.instructions)
    prompt_context = encode(spec.prompt)
    empty_context = encode("")
    if prompt_context.shape[1] != lay.length:
        raise InputError("clip", f"encodes {prompt_context.shape[1]} tokens but tokenizes {lay.length}.",
                         "Use the CLIP that belongs to the model.")
    multi = routing != ROUTING_SINGLE and len(spec.instructions) > 0
    if mode == ModulationMode.OUTPUT.value and routing == ROUTING_CAMILA and len(spec.instructions) > 1:
        raise InputError("mode", "'output' blends two whole attentions per pixel, so it cannot follow CAMILA's "
                                 "per-token mask of several instructions.",
                         f"Use mode 'logits' (CAMILA's formula), or routing '{ROUTING_FOI}' / '{ROUTING_SINGLE}'.")
    return MaskModulation(
        spec.masks.float(),
        empty_context,
        token_sets=positions if multi else None,
        routing=TokenRouting.FOI if routing == ROUTING_FOI else TokenRouting.PER_TOKEN,
        special_tokens=lay.special,
        prompt_context=prompt_context,
        prompt_length=lay.length,
        branches=BRANCH_CHOICES[branch],
        mode=ModulationMode(mode),
        strength=strength,
        selector=LayerSelector(downscales=tuple(downscales), sigma_max=sigma_max, sigma_min=sigma_min),
    )
