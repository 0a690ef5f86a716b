"""CAMILA cross-attention mask modulation (and FoI's multi-instruction token routing).

In the chosen layers, for the text-conditioned branch only, edit regions attend with the prompt
(text + image conditioning) and everything else attends with the image-only conditioning, i.e.
the same layer's to_k/to_v applied to an empty-prompt encoding.

Two ways to mix, identical for binary masks, different for soft ones (mask edges after
downsampling, feathered masks, strength-like soft masks):

* ``LOGITS`` -- CAMILA's formula, A' = softmax((X*M + Y*(1-M)) / sqrt(d)) with X = Q K_T^T and
  Y = Q K_0^T. One attention distribution per pixel over the interpolated scores; the values it
  weighs are the matching mix M*V_T + (1-M)*V_0 (so M=1 is exactly Attn(Q,K_T,V_T) and M=0
  exactly Attn(Q,K_0,V_0)). Interpolating *scores* is sharper than interpolating outputs: a pixel
  with M=0.5 follows whichever conditioning has the more peaked scores.
* ``OUTPUT`` -- M*Attn(Q,K_T,V_T) + (1-M)*Attn(Q,K_0,V_0): two complete attentions blended
  linearly, the behaviour of a soft latent blend.

Multi-instruction mode (FoI): each instruction k has a mask M_k and a set of token positions T_k.
A pixel inside M_k attends only to the start/end/padding tokens and T_k; a pixel in several masks
to the union; a pixel in no mask takes the image-only path.
"""

import enum
import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .controller import AttentionCall, AttentionController, LayerSelector, apply_probs, chunk_branches, scaled_scores

TEXT_BRANCH = "text"  # apply to the chunks whose context is the prompt's own encoding


class ModulationMode(str, enum.Enum):
    LOGITS = "logits"
    OUTPUT = "output"


def resize_masks(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[N, H, W] -> [N, h, w] by area averaging in fp32 (a cell's value = its covered fraction)."""
    m = masks.float().unsqueeze(1)
    if m.shape[-2:] != (h, w):
        m = F.adaptive_avg_pool2d(m, (h, w))
    return m.squeeze(1).clamp(0.0, 1.0)


class MaskModulation(AttentionController):
    """Confine the prompt's influence to masked regions.

    masks: [N, H, W] in [0, 1], one per instruction (N=1 for a single region).
    empty_context: [1, T0, C] encoding of the empty prompt (the image-only conditioning).
    token_sets: None (every prompt token drives every mask: single-region mode) or N lists of
        positions in the prompt's token axis, instruction k's tokens (multi-instruction mode).
    special_tokens: positions of start/end/padding tokens, always visible in multi mode.
    prompt_context: [1, L, C] the prompt's encoding, used to find the text branch when
        ``branches == TEXT_BRANCH``; otherwise ``branches`` is a set of cond_or_uncond ids.
    strength: 0 = unpatched, 1 = full modulation (linear blend of outputs).
    """

    def __init__(
        self,
        masks: torch.Tensor,
        empty_context: torch.Tensor,
        *,
        token_sets: Optional[Sequence[Sequence[int]]] = None,
        special_tokens: Sequence[int] = (),
        prompt_context: Optional[torch.Tensor] = None,
        prompt_length: Optional[int] = None,
        branches=TEXT_BRANCH,
        mode: ModulationMode = ModulationMode.LOGITS,
        strength: float = 1.0,
        selector: LayerSelector = LayerSelector(),
    ):
        if masks.dim() != 3:
            raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
        if token_sets is not None and len(token_sets) != masks.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks but {len(token_sets)} token sets")
        if branches == TEXT_BRANCH and prompt_context is None:
            raise ValueError("branches='text' needs prompt_context to recognise the text branch")
        self.masks = masks.detach().float().cpu()
        self.empty_context = empty_context.detach()
        self.token_sets = [sorted(set(int(t) for t in s)) for s in token_sets] if token_sets is not None else None
        self.special_tokens = sorted(set(int(t) for t in special_tokens))
        self.prompt_context = prompt_context.detach() if prompt_context is not None else None
        self.prompt_length = prompt_length or (prompt_context.shape[1] if prompt_context is not None else None)
        self.branches = branches
        self.mode = ModulationMode(mode)
        self.strength = float(strength)
        self.selector = selector
        self._mask_cache = {}
        # diagnostics (tests, the Attention Map node): what was actually modulated
        self.calls_modified = 0
        self.places_modified = set()
        self.branches_modified = set()
        self._calls_seen = 0
        self._warned = False

    # -- geometry -----------------------------------------------------------------------------
    def _pixel_masks(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = resize_masks(self.masks, h, w).reshape(self.masks.shape[0], h * w).to(device)
        return self._mask_cache[key]

    def _token_weights(self, masks_flat: torch.Tensor, n_tokens: int) -> Optional[torch.Tensor]:
        """[Nq, T] visibility of each token for each pixel (multi mode), else None."""
        if self.token_sets is None:
            return None
        length = self.prompt_length or n_tokens
        if n_tokens % length != 0:
            raise RuntimeError(
                f"ContextEdit attention mask: the conditioning has {n_tokens} tokens, which is not a multiple of the "
                f"prompt's {length}; the instruction tokens cannot be located. Encode the same prompt you gave the node."
            )
        owner = torch.zeros(len(self.token_sets), length, device=masks_flat.device)
        for k, positions in enumerate(self.token_sets):
            owner[k, [p for p in positions if p < length]] = 1.0
        # [Nq, L]: token j owned by instruction k is seen with weight M_k(p); a pixel in two masks
        # sees both token sets
        vis = (masks_flat.transpose(0, 1) @ owner).clamp(max=1.0)
        if self.special_tokens:
            vis[:, [p for p in self.special_tokens if p < length]] = 1.0
        return vis.repeat(1, n_tokens // length)

    # -- branch choice --------------------------------------------------------------------------
    def _patched_chunks(self, call: AttentionCall):
        chunks = list(chunk_branches(call))
        if self.branches != TEXT_BRANCH:
            wanted = set(self.branches)
            return [(b, sl) for b, sl in chunks if b in wanted]
        kp, _ = call.project_context(self.prompt_context.to(call.k.device, call.k.dtype))
        kp = kp[0].float()
        out = []
        for branch, sl in chunks:
            kc = call.k[sl][0].float()
            if kc.shape[0] % kp.shape[0] != 0:
                continue
            ref = kp.repeat(kc.shape[0] // kp.shape[0], 1)
            if (kc - ref).norm() <= 1e-2 * ref.norm() + 1e-6:
                out.append((branch, sl))
        self._calls_seen += 1
        if not out and not self.branches_modified and self._calls_seen >= 8 and not self._warned:
            self._warned = True
            logging.warning("ContextEdit Attention Mask: no conditioning branch matches the node's prompt, so the "
                            "patch has no effect. Use the node's 'positive' output (or encode exactly the same text "
                            "with the same CLIP), or set apply_to explicitly.")
        return out

    # -- the math -------------------------------------------------------------------------------
    def _distributions(self, q, k, k0, heads, masks_flat):
        """Per-pixel region weight m [1,1,Nq,1] and the attention distributions over the text
        keys (p_t) and the empty-prompt keys (p_0), both [b, H, Nq, T]."""
        pixel_m = masks_flat.max(dim=0).values  # [Nq]: inside any instruction's region
        m = pixel_m.view(1, 1, -1, 1)
        x = scaled_scores(q, k, heads)          # text(+image) scores
        y = scaled_scores(q, k0, heads)         # image-only scores
        vis = self._token_weights(masks_flat, k.shape[1])
        if vis is not None:
            x = x + torch.log(vis).view(1, 1, *vis.shape)  # log 0 = -inf: token hidden from that pixel
        inside = m > 0
        if self.mode is ModulationMode.LOGITS:
            # where M == 0 use Y directly (0 * -inf would be NaN); one distribution for both value sets
            p = torch.where(inside, m * x + (1 - m) * y, y).softmax(dim=-1)
            return m, p, p
        x = torch.where(inside, x, y)  # rows with M == 0 get zero weight below; keep them finite
        return m, x.softmax(dim=-1), y.softmax(dim=-1)

    def modulate(self, q, k, v, k0, v0, heads: int, masks_flat: torch.Tensor) -> torch.Tensor:
        """Modulated attention for one chunk. q [b,Nq,HD], k/v [b,T,HD], k0/v0 [b,T,HD]."""
        m, p_t, p_0 = self._distributions(q, k, k0, heads, masks_flat)
        out_t = apply_probs(p_t, v, heads).float()
        out_0 = apply_probs(p_0, v0, heads).float()
        mo = m.view(1, -1, 1)
        return (mo * out_t + (1 - mo) * out_0).to(v.dtype)

    def _empty_kv(self, call: AttentionCall):
        n_tokens = call.k.shape[1]
        empty = self.empty_context.to(call.k.device, call.k.dtype)
        reps = -(-n_tokens // empty.shape[1])
        return call.project_context(empty.repeat(1, reps, 1)[:, :n_tokens])

    def effective_probs(self, call: AttentionCall):
        """Weight each query puts on each *text* key [B, H, Nq, T] as this controller applies it
        (for capture/heat-maps): M * distribution on text keys inside patched chunks."""
        probs = scaled_scores(call.q, call.k, call.heads).softmax(dim=-1)
        if not self.selector.matches(call):
            return probs
        chunks = self._patched_chunks(call)
        if not chunks:
            return probs
        k0, _ = self._empty_kv(call)
        masks_flat = self._pixel_masks(call.height, call.width, call.q.device)
        for _, sl in chunks:
            b = call.q[sl].shape[0]
            m, p_t, _ = self._distributions(call.q[sl], call.k[sl], k0.expand(b, -1, -1), call.heads, masks_flat)
            mod = m * p_t
            probs[sl] = probs[sl] + self.strength * (mod - probs[sl])
        return probs

    def modify(self, call: AttentionCall) -> torch.Tensor:
        out = call.attend(call.q, call.k, call.v)
        chunks = self._patched_chunks(call)
        if not chunks:
            return out
        out = out.clone()
        k0, v0 = self._empty_kv(call)
        masks_flat = self._pixel_masks(call.height, call.width, call.q.device)
        for branch, sl in chunks:
            b = call.q[sl].shape[0]
            mod = self.modulate(call.q[sl], call.k[sl], call.v[sl], k0.expand(b, -1, -1), v0.expand(b, -1, -1),
                                call.heads, masks_flat)
            if self.strength != 1.0:
                mod = out[sl] + self.strength * (mod - out[sl])
            out[sl] = mod
            self.branches_modified.add(branch)
        self.calls_modified += 1
        self.places_modified.add(call.place)
        return out
