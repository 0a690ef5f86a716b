"""Engine of the Image Stream node: IP-Adapter weights + CLIP vision embeddings -> ImageStream.

No ComfyUI imports: the node hands over the UNet's cross-attention places (in IP-Adapter order)
with their widths, and the CLIP vision ``image_embeds``.
"""

import re
from collections.abc import Sequence

import torch

from ...attention_patches.image_stream import GateMode, ImageStream, block_group
from ..errors import InputError
from .ipadapter_format import IPAdapterWeights, match_layers

# InsightEdit states no default for lambda ("adjusted during inference"). IP-Adapter's own scale is
# 1.0, the value its weights are trained at. Measured with benchmarks/image_stream_overhead.py,
# ||lambda * Attn(Q,K_img,V_img)|| / ||Attn(Q,K_txt,V_txt)|| at lambda = 1, mean over layers: 0.56
# (0.49-0.63) on the tiny SD1.5 checkpoint through ComfyUI (IP-Adapter file drawn like the
# checkpoint's weights), 2.56 (1.87-3.24) on the tiny diffusers UNet with to_k_ip/to_v_ip copied
# from to_k/to_v (IP-Adapter's training init) and random text context. Equal magnitude would be
# lambda ~1.8 and ~0.4; 1.0 sits within a factor of 2.6 of both, so the term is comparable to the
# text term there and the default stays IP-Adapter's 1.0.
DEFAULT_LAMBDA = 1.0
DEFAULT_BLOCK_WEIGHTS = "input:1, middle:1, output:1"

UNCOND_CHOICES = {
    "KSampler negative (1)": (1,),
    "DualCFGGuider negative (0)": (0,),
    "none (image on every branch)": (),
}

_ENTRY = re.compile(r"^(input|middle|output)(?:[ _]?(\d+))?\s*[:=]\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)$")
_NUMBER = re.compile(r"^[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?$")


def parse_block_weights(text: str, places: Sequence) -> dict:
    """{place: weight} from "input:1, middle:0.5, output:1" (groups), "output 3: 0" (one ComfyUI
    block id; later entries override earlier ones), or a plain list of numbers, one per
    cross-attention layer in the IP-Adapter file's order. Empty = every layer 1."""
    text = (text or "").strip()
    weights = {p: 1.0 for p in places}
    if not text:
        return weights
    items = [t.strip() for t in re.split(r"[,;\n]", text) if t.strip()]
    if all(_NUMBER.match(t) for t in items):
        if len(items) != len(places):
            raise InputError("block_weights", f"lists {len(items)} numbers but the model has {len(places)} "
                             "cross-attention layers.", "Give one number per layer, or use 'input:1, middle:1, "
                             "output:1'.")
        return {p: float(t) for p, t in zip(places, items)}
    for item in items:
        m = _ENTRY.match(item)
        if m is None:
            raise InputError("block_weights", f"cannot read '{item}'.",
                             "Write 'input:1, middle:1, output:1' (optionally 'output 3: 0' for one block) or "
                             "one number per cross-attention layer.")
        group, block_id, value = m.group(1), m.group(2), float(m.group(3))
        hit = [p for p in places if block_group(p) == group
               and (block_id is None or (isinstance(p, tuple) and p[1] == int(block_id)))]
        if not hit:
            raise InputError("block_weights", f"'{item}' matches no cross-attention layer of this model.",
                             "Check the block id (SD1.5: input 1,2,4,5,7,8; middle 0; output 3-11).")
        for p in hit:
            weights[p] = value
    return weights


def build_image_stream(weights: IPAdapterWeights, places: Sequence, widths: Sequence[tuple[int, int]],
                       image_embeds: torch.Tensor, *, scale: float = DEFAULT_LAMBDA,
                       block_weights: str = DEFAULT_BLOCK_WEIGHTS, mask: torch.Tensor | None = None,
                       gate: str = GateMode.EVERYWHERE.value, unconditional: str = next(iter(UNCOND_CHOICES)),
                       sigma_max: float = float("inf"), sigma_min: float = 0.0) -> ImageStream:
    """places/widths: the model's cross-attention layers in IP-Adapter order and their
    (inner, context) widths. image_embeds: [B, E] CLIP vision embeddings of the image(s)."""
    if unconditional not in UNCOND_CHOICES:
        raise InputError("unconditional", f"'{unconditional}' is not one of {tuple(UNCOND_CHOICES)}.",
                         "Pick one from the list.")
    try:
        gate_mode = GateMode(gate)
    except ValueError:
        raise InputError("mask_mode", f"'{gate}' is not one of {[g.value for g in GateMode]}.",
                         "Pick one from the list.") from None
    layers = match_layers(weights, places, widths)
    if gate_mode is not GateMode.EVERYWHERE:
        if mask is None:
            raise InputError("masks", f"mask_mode '{gate}' needs the edit masks.",
                             "Connect the masks (e.g. from Decode Masks) or set mask_mode to 'everywhere'.")
        if mask.dim() == 3:
            mask = mask.float().amax(dim=0)  # the union of the edit masks
        if mask.dim() != 2:
            raise InputError("masks", f"has shape {tuple(mask.shape)}; expected [N, H, W] or [H, W].",
                             "Connect a MASK.")
    tokens = weights.image_tokens(image_embeds)
    uncond = weights.image_tokens(torch.zeros(1, weights.embed_dim))  # IP-Adapter's unconditional image
    return ImageStream(
        layers, tokens, scale=scale, uncond_tokens=uncond, uncond_branches=UNCOND_CHOICES[unconditional],
        block_weights=parse_block_weights(block_weights, places), mask=mask, gate=gate_mode,
        sigma_max=sigma_max, sigma_min=sigma_min,
    )
