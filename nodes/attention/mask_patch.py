"""Engine of the Attention Mask node: from prompt/plan + masks to a MaskModulation controller.

Kept free of ComfyUI imports: the node passes ``tokenize(text)`` (ComfyUI's CLIP.tokenize with
word ids) and ``encode(text)`` (returns the [1, T, C] cross-attention conditioning).

[NEG] instructions: CAMILA maps a non-executable instruction to an all-black mask, i.e. it must
act nowhere. With a plan connected the prompt that is encoded is built from the plan's executable
instructions only, so a [NEG] instruction's words are in no token at all -- neither its own
tokens nor, through CLIP's causal attention, the end/padding tokens after them (which per-token
routing lets act inside every mask). Setting M = 0 on its own words alone would leave those.
"""

import logging
from dataclasses import dataclass
from typing import Callable, List

import torch

from ...attention_patches import LayerSelector, MaskEdges, MaskModulation, ModulationMode, TokenRouting
from ...attention_patches.masked_attention import TEXT_BRANCH
from ..errors import InputError
from ..executability.instructions import split_instructions
from ..masks.token_broadcaster import locate_phrases

ROUTING_CAMILA = "per token (CAMILA)"     # M[p, j] = mask of token j's instruction
ROUTING_SEGMENT = "per segment (encoded apart)"   # each instruction encoded alone; mask k sees segment k
ROUTING_FOI = "per instruction (FoI)"     # one M per pixel; other instructions' tokens hidden
ROUTING_SINGLE = "whole prompt"           # every token follows the union of the masks
ROUTINGS = (ROUTING_SEGMENT, ROUTING_CAMILA, ROUTING_FOI, ROUTING_SINGLE)
# per segment by measurement (README, "Instructions that cannot hear each other"): changing one
# instruction leaves another's mask bit-identical in a patched layer, where per token moves it
# as much as the changed instruction's own mask (CLIP's causal end/padding tokens)
DEFAULT_ROUTING = ROUTING_SEGMENT

MASK_EDGES = {"binary": MaskEdges.BINARY, "soft": MaskEdges.SOFT}
DEFAULT_MASK_EDGES = "binary"

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
        # the plan's executable instructions replace the prompt text: a [NEG] instruction's words
        # must not be encoded at all (module docstring)
        text = join_instructions(instructions)
        if prompt and prompt.strip() and prompt.strip() != text:
            logging.info("ContextEdit Attention Mask: a plan is connected, so the prompt is its executable "
                         "instructions (%r); the prompt text is not encoded.", text)
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


def mask_edges_of(name: str) -> MaskEdges:
    if name not in MASK_EDGES:
        raise InputError("mask_edges", f"'{name}' is not one of {tuple(MASK_EDGES)}.", "Pick one from the list.")
    return MASK_EDGES[name]


def encode_segments(encode: Callable, instructions: List[str]):
    """Each instruction encoded on its own (its own start/end/padding) and concatenated along the
    token axis: (context [1, sum T_k, C], token positions of each segment)."""
    parts, sets, start = [], [], 0
    for k, text in enumerate(instructions):
        part = encode(text)
        if parts and part.shape[-1] != parts[0].shape[-1]:
            raise InputError("clip", f"encoded instruction {k + 1} to {part.shape[-1]}-wide features, not "
                             f"{parts[0].shape[-1]}.", "Use one text encoder for every instruction.")
        parts.append(part)
        sets.append(list(range(start, start + part.shape[1])))
        start += part.shape[1]
    return torch.cat(parts, dim=1), sets


def build_mask_modulation(
    tokenize: Callable,
    encode: Callable,
    spec: PromptSpec,
    *,
    mode: str = ModulationMode.LOGITS.value,
    routing: str = DEFAULT_ROUTING,
    downscales=(32,),
    sigma_max: float = float("inf"),
    sigma_min: float = 0.0,
    strength: float = 1.0,
    branch: str = "text branch (auto)",
    mask_edges: str = DEFAULT_MASK_EDGES,
) -> MaskModulation:
    """The controller for ``spec``. Its ``prompt_context`` is the conditioning to sample with: the
    prompt's encoding, or (per-segment routing) the instructions' encodings concatenated."""
    if routing not in ROUTINGS:
        raise InputError("routing", f"'{routing}' is not one of {ROUTINGS}.", "Pick one from the list.")
    if branch not in BRANCH_CHOICES:
        raise InputError("apply_to", f"'{branch}' is not one of {tuple(BRANCH_CHOICES)}.", "Pick one from the list.")
    edges = mask_edges_of(mask_edges)
    empty_context = encode("")
    common = dict(branches=BRANCH_CHOICES[branch], strength=strength, edges=edges,
                  selector=LayerSelector(downscales=tuple(downscales), sigma_max=sigma_max, sigma_min=sigma_min))
    if routing == ROUTING_SEGMENT:
        if edges is not MaskEdges.BINARY:
            raise InputError("mask_edges", f"'{mask_edges}' cannot be used with routing '{ROUTING_SEGMENT}': a pixel "
                             "attends to an instruction's segment or it does not.",
                             f"Use mask_edges 'binary', or routing '{ROUTING_CAMILA}'.")
        context, sets = encode_segments(encode, spec.instructions)
        return MaskModulation(spec.masks.float(), empty_context, token_sets=sets, routing=TokenRouting.PER_SEGMENT,
                              prompt_context=context, prompt_length=context.shape[1], **common)
    positions, lay = locate_phrases(tokenize, spec.prompt, spec.instructions)
    prompt_context = encode(spec.prompt)
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
        mode=ModulationMode(mode),
        **common,
    )
