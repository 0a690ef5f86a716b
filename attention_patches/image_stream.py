"""InsightEdit's decoupled image stream as an attention controller.

In every cross-attention layer it has weights for:

    Z = Attn(Q, K_txt, V_txt) + lambda * w_block * g(p) * Attn(Q, K_img, V_img)

``Attn(Q, K_txt, V_txt)`` is whatever the host would have computed (``call.attend``: the stock
attention, CAMILA's mask modulation, or another pack's replace), so the image term is *added* to
it and every other patch keeps its effect. K_img = T W_k^T, V_img = T W_v^T with T the image
tokens (IP-Adapter's image projection of a CLIP vision embedding) and W_k/W_v the layer's
``to_k_ip``/``to_v_ip``. ``g(p)`` gates the term per query pixel (a mask resized to the layer's
grid); ``w_block`` weighs input / middle / output blocks.

Branches: chunks whose conditioning id is in ``uncond_branches`` get IP-Adapter's unconditional
image tokens (the projection of a zero embedding) instead, as IP-Adapter does for CFG.

Layer order (which file layer goes to which host layer) is IP-Adapter's: diffusers'
``attn_processors`` order (down, up, mid), given for both hosts by the helpers at the bottom.
"""

import enum
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .controller import (
    AttentionCall,
    AttentionController,
    chunk_branches,
    merge_heads,
    split_heads,
)


class GateMode(str, enum.Enum):
    EVERYWHERE = "everywhere"
    OUTSIDE = "outside the edit masks"
    INSIDE = "inside the edit masks"


def gate_grid(mask: torch.Tensor, mode: GateMode, h: int, w: int) -> torch.Tensor:
    """Per-query gate [h*w] for a mask [H, W] in [0, 1]: each cell takes the covered fraction
    (area average), then 'outside' flips it."""
    m = mask.float().reshape(1, 1, *mask.shape[-2:])
    if m.shape[-2:] != (h, w):
        m = F.adaptive_avg_pool2d(m, (h, w))
    m = m.reshape(h * w).clamp(0.0, 1.0)
    return 1.0 - m if mode is GateMode.OUTSIDE else m


class ImageStream(AttentionController):
    """Adds lambda * Attn(Q, K_img, V_img) to the cross-attention of the layers in ``layers``.

    layers: {place: (to_k_ip [inner, C], to_v_ip [inner, C])}, places as the host labels them.
    image_tokens: [B_img, c, C] (B_img = 1, or one per sample of each conditioning chunk).
    uncond_tokens: [1, c, C] for the ``uncond_branches`` chunks (None: they get ``image_tokens``).
    block_weights: {place: weight}; missing places weigh 1.
    mask: [H, W] or None; ``gate`` says where the term acts (EVERYWHERE ignores the mask).
    sigma_max / sigma_min: act only while the call's sigma is in [sigma_min, sigma_max].
    """

    def __init__(self, layers: dict, image_tokens: torch.Tensor, *, scale: float = 1.0,
                 uncond_tokens: torch.Tensor | None = None, uncond_branches: Sequence[int] = (1,),
                 block_weights: dict | None = None, mask: torch.Tensor | None = None,
                 gate: GateMode = GateMode.EVERYWHERE, sigma_max: float = float("inf"), sigma_min: float = 0.0):
        if image_tokens.dim() != 3:
            raise ValueError(f"image_tokens must be [B, c, C], got {tuple(image_tokens.shape)}")
        self.layers = dict(layers)
        self.image_tokens = image_tokens.detach().float()
        self.uncond_tokens = uncond_tokens.detach().float() if uncond_tokens is not None else None
        self.uncond_branches = {int(b) for b in uncond_branches}
        self.scale = float(scale)
        self.block_weights = dict(block_weights or {})
        self.gate = GateMode(gate)
        if self.gate is not GateMode.EVERYWHERE and mask is None:
            raise ValueError(f"gate '{self.gate.value}' needs a mask")
        self.mask = mask.detach().float().cpu() if mask is not None else None
        self.sigma_max, self.sigma_min = float(sigma_max), float(sigma_min)
        self._kv_cache = {}
        self._gate_cache = {}
        # diagnostics: where the term was added
        self.calls_modified = 0
        self.places_modified = set()

    # -- when -----------------------------------------------------------------------------------
    def weight_at(self, place) -> float:
        return self.scale * float(self.block_weights.get(place, 1.0))

    def acts_on(self, call: AttentionCall) -> bool:
        if not call.is_cross or call.place not in self.layers or self.weight_at(call.place) == 0.0:
            return False
        if call.sigma is None:
            return True
        s = float(call.sigma.reshape(-1)[0])
        # percent_to_sigma and the sampler's schedule round differently: a relative 1e-5 slack
        return self.sigma_min * (1 - 1e-5) <= s <= self.sigma_max * (1 + 1e-5)

    # -- the term -------------------------------------------------------------------------------
    def _kv(self, place, tokens_key: str, tokens: torch.Tensor, like: torch.Tensor):
        key = (place, tokens_key, like.device, like.dtype)
        if key not in self._kv_cache:
            wk, wv = self.layers[place]
            t = tokens.to(like.device, torch.float32)
            k = F.linear(t, wk.to(like.device, torch.float32)).to(like.dtype)
            v = F.linear(t, wv.to(like.device, torch.float32)).to(like.dtype)
            self._kv_cache[key] = (k, v)
        return self._kv_cache[key]

    def _gate(self, h: int, w: int, device) -> torch.Tensor | None:
        if self.gate is GateMode.EVERYWHERE:
            return None
        key = (h, w, str(device))
        if key not in self._gate_cache:
            self._gate_cache[key] = gate_grid(self.mask, self.gate, h, w).to(device)
        return self._gate_cache[key]

    def image_term(self, call: AttentionCall) -> torch.Tensor:
        """Attn(Q, K_img, V_img) for every chunk of the call, gated per pixel: [B, Nq, heads*dim]."""
        term = torch.empty_like(call.q)
        for branch, sl in chunk_branches(call):
            q = call.q[sl]
            use_uncond = branch in self.uncond_branches and self.uncond_tokens is not None
            tokens = self.uncond_tokens if use_uncond else self.image_tokens
            k, v = self._kv(call.place, "uncond" if use_uncond else "image", tokens, q)
            if k.shape[0] == 1:
                k, v = k.expand(q.shape[0], -1, -1), v.expand(q.shape[0], -1, -1)
            elif k.shape[0] != q.shape[0]:
                raise RuntimeError(
                    f"ContextEdit Image Stream: {k.shape[0]} images for a batch of {q.shape[0]} latents. "
                    "Give one image, or one per latent.")
            out = F.scaled_dot_product_attention(split_heads(q, call.heads), split_heads(k, call.heads),
                                                 split_heads(v, call.heads))
            term[sl] = merge_heads(out)
        gate = self._gate(call.height, call.width, call.q.device)
        if gate is not None:
            term = term * gate.to(term.dtype).view(1, -1, 1)
        return term

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        out = call.attend(call.q, call.k, call.v)
        if not self.acts_on(call):
            return out
        self.calls_modified += 1
        self.places_modified.add(call.place)
        return out + self.weight_at(call.place) * self.image_term(call).to(out.dtype)


# ------------------------------------------------------------------------ layer order per host

_GROUP_RANK = {"input": 0, "output": 1, "middle": 2}  # diffusers: down blocks, up blocks, mid block


def comfy_ip_order(attn2_by_place: dict) -> list:
    """ComfyUI attn2 places {(block, id, index): module} sorted in IP-Adapter's layer order."""
    return sorted(attn2_by_place, key=lambda p: (_GROUP_RANK[p[0]], p[1], p[2]))


def diffusers_ip_order(attention_modules) -> list:
    """Names of the cross-attention processors of a diffusers UNet in IP-Adapter's order
    (``attention_modules``: the [(name, module)] list of diffusers_adapter.attention_modules, which
    walks the UNet in registration order, i.e. ``unet.attn_processors`` order)."""
    return [name for name, _ in attention_modules if name.endswith("attn2.processor")]


def block_group(place) -> str:
    """'input' / 'middle' / 'output' for a ComfyUI place or a diffusers processor name."""
    if isinstance(place, tuple):
        return place[0]
    head = str(place).split(".", 1)[0]
    return {"down_blocks": "input", "mid_block": "middle", "up_blocks": "output"}.get(head, head)
