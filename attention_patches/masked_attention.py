"""CAMILA cross-attention mask modulation (and FoI's multi-instruction token routing).

In the chosen layers, for the text-conditioned branch only, edit regions attend with the prompt
(text + image conditioning) and everything else attends with the image-only conditioning, i.e.
the same layer's to_k/to_v applied to an empty-prompt encoding (position j of the empty encoding
stands in for prompt token j).

Masks at each layer's grid (``edges``):

* ``BINARY`` (default) -- CAMILA modulates with binary masks: a grid cell belongs to mask k when
  mask k covers at least half of the cell's area (the covered fraction, area-averaged, >= 0.5;
  the DiT path assigns tokens by the same rule). Every mask value is then 0 or 1.
* ``SOFT`` -- the covered fraction itself (area average): cells on a mask's edge get 0 < M < 1.

Which mask each token follows (``routing``; N instructions with masks M_k and token sets T_k):

* ``PER_TOKEN`` -- CAMILA: "the binary masks for all tokens are concatenated into a unified
  mask M", so M[p, j] = M_k(p) for the instruction k that text token j belongs to. A pixel
  inside instruction 1's mask uses the text score X for instruction 1's tokens and the image-only
  score Y for instruction 2's tokens. Tokens that belong to no instruction (start/end/padding, the
  separators between instructions) follow the union of the masks, max_k M_k(p): inside any edit
  region they keep the prompt's sentence structure, outside every region the pixel's whole row is
  the image-only attention, and with one instruction every token follows its mask. (With a causal
  text encoder those end/padding tokens encode every instruction: instruction 2's meaning reaches
  instruction 1's pixels through them. ``PER_SEGMENT`` avoids that.)
* ``PER_SEGMENT`` -- every instruction encoded on its own (its own start/end/padding) and the
  encodings concatenated; ``token_sets`` are the segments. A pixel inside mask k attends only to
  segment k (several masks: their segments), a pixel outside every mask only to the empty
  prompt's encoding. Only binary masks: a pixel either attends to a segment or not.
* ``FOI`` -- FoI's routing: one mask value per pixel (the union) for every token, and a pixel inside
  M_k sees only the start/end/padding tokens and T_k (other instructions' tokens get -inf; soft
  masks give them log M_k); a pixel in several masks sees the union of those sets.
* without token sets (one region for the whole prompt) every token follows the union; both
  routings then coincide.

How the mask mixes (``mode``; with binary masks both give the same result):

* ``LOGITS`` -- CAMILA's formula, A' = softmax((X*M + Y*(1-M)) / sqrt(d)) with X = Q K_T^T and
  Y = Q K_0^T, M per pixel and token. The values paired with the mixed scores are mixed the same
  way, token by token: V'[p, j] = M[p, j] V_T[j] + (1 - M[p, j]) V_0[j], so a key and its value
  always come from the same conditioning in the same proportion. Hence a binary M is exactly an
  attention call over modified keys/values (token j from the prompt where M = 1, from the empty
  prompt where M = 0): M = 1 everywhere is Attn(Q,K_T,V_T), M = 0 everywhere Attn(Q,K_0,V_0).
* ``OUTPUT`` -- M*Attn(Q,K_T,V_T) + (1-M)*Attn(Q,K_0,V_0) with one M per pixel: two complete
  attentions blended linearly, the behaviour of a soft latent blend. It has no per-token form, so
  it needs FoI routing or a single instruction.

Composition with other packs (ComfyUI attn2 replaces run *inside* ``call.attend``): wherever the
formula is an attention call -- rows whose mask values are all 0 or 1 in ``LOGITS`` (grouped by
their pattern over tokens), both attentions of ``OUTPUT`` -- it is computed through
``call.attend`` on modified keys/values, so the other pack acts on exactly what it would act on
alone. With binary masks (the default) that is every row, so composition is exact for any pack.
Rows with soft values (mask edges, ``SOFT`` only) get our change as a delta on top of the inner
result, attend(Q,K_T,V_T) + (ours - Attn(Q,K_T,V_T)): exact for a pack that adds a term (out =
attn + extra, IP-Adapter style), approximate for packs that scale or reshape the attention.

Everything that depends only on the masks and the layer's grid (the binary masks, the per-token
mask, the row patterns and their key selections) is computed once per grid and kept.
"""

import enum
import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .controller import AttentionCall, AttentionController, LayerSelector, apply_probs, chunk_branches, scaled_scores

TEXT_BRANCH = "text"  # apply to the chunks whose context is the prompt's own encoding
# With soft edges, at most this many distinct binary row patterns go through the inner attention
# as separate calls (each is one attention over the batch); rows of rarer patterns take the delta
# path. With binary masks every pattern does (there are at most 2^N + 1 of them).
MAX_PATTERNS = 16
# A grid cell belongs to a mask when the mask covers at least this fraction of its area.
BINARY_COVER = 0.5
_PLAN_CACHE = 16  # row plans kept per controller (a few grids x token counts per sampling run)


class ModulationMode(str, enum.Enum):
    LOGITS = "logits"
    OUTPUT = "output"


class TokenRouting(str, enum.Enum):
    PER_TOKEN = "per-token"   # CAMILA: M[p, j] = mask of the instruction token j belongs to
    FOI = "foi"               # FoI: one M per pixel, other instructions' tokens hidden
    PER_SEGMENT = "per-segment"  # instructions encoded apart: pixels in mask k see only segment k


class MaskEdges(str, enum.Enum):
    BINARY = "binary"   # a cell is in a mask when the mask covers >= half of it (CAMILA: binary masks)
    SOFT = "soft"       # the covered fraction (area average)


def resize_masks(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[N, H, W] -> [N, h, w] by area averaging in fp32 (a cell's value = its covered fraction)."""
    m = masks.float().unsqueeze(1)
    if m.shape[-2:] != (h, w):
        m = F.adaptive_avg_pool2d(m, (h, w))
    return m.squeeze(1).clamp(0.0, 1.0)


def layer_masks(masks: torch.Tensor, h: int, w: int, edges=MaskEdges.BINARY) -> torch.Tensor:
    """[N, H, W] -> [N, h, w] at a layer's grid: the covered fraction (``SOFT``) or 1 where it is
    at least ``BINARY_COVER`` and 0 elsewhere (``BINARY``)."""
    cover = resize_masks(masks, h, w)
    if MaskEdges(edges) is MaskEdges.SOFT:
        return cover
    return (cover >= BINARY_COVER).float()


class _RowPlan:
    """What one grid and token count need, computed once: the masks at the grid [N, Nq], the
    formula's weight/visibility/pixel mask, and the rows that go through the inner attention as
    one call per pattern (members, which tokens come from the prompt, which are visible)."""

    def __init__(self, masks_flat, weight, vis, pixel, groups, done):
        self.masks_flat, self.weight, self.vis, self.pixel = masks_flat, weight, vis, pixel
        self.groups = groups      # [(members, take_text [T] bool, visible index or None, identity)]
        self.done = done          # [Nq] bool: rows computed through the inner attention


class MaskModulation(AttentionController):
    """Confine the prompt's influence to masked regions.

    masks: [N, H, W] in [0, 1], one per instruction (N=1 for a single region).
    empty_context: [1, T0, C] encoding of the empty prompt (the image-only conditioning).
    token_sets: None (every prompt token follows the union of the masks: single-region mode) or N
        lists of positions in the prompt's token axis, instruction k's tokens (``PER_SEGMENT``:
        every position of segment k's own encoding).
    routing: how token sets are used, ``PER_TOKEN`` (CAMILA), ``PER_SEGMENT`` or ``FOI`` (module doc).
    special_tokens: positions of start/end/padding tokens (FoI keeps them visible everywhere;
        per-token routing lets every token outside the sets follow the union).
    prompt_context: [1, L, C] the prompt's encoding, used to find the text branch when
        ``branches == TEXT_BRANCH``; otherwise ``branches`` is a set of cond_or_uncond ids.
    edges: ``BINARY`` (default: binary masks at each layer's grid) or ``SOFT`` (module doc).
    strength: 0 = unpatched, 1 = full modulation (linear blend of outputs).
    """

    def __init__(
        self,
        masks: torch.Tensor,
        empty_context: torch.Tensor,
        *,
        token_sets: Optional[Sequence[Sequence[int]]] = None,
        routing: TokenRouting = TokenRouting.PER_TOKEN,
        special_tokens: Sequence[int] = (),
        prompt_context: Optional[torch.Tensor] = None,
        prompt_length: Optional[int] = None,
        branches=TEXT_BRANCH,
        mode: ModulationMode = ModulationMode.LOGITS,
        edges: MaskEdges = MaskEdges.BINARY,
        strength: float = 1.0,
        selector: LayerSelector = LayerSelector(),
    ):
        if masks.dim() != 3:
            raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
        if token_sets is not None and len(token_sets) != masks.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks but {len(token_sets)} token sets")
        if branches == TEXT_BRANCH and prompt_context is None:
            raise ValueError("branches='text' needs prompt_context to recognise the text branch")
        self.routing = TokenRouting(routing)
        self.mode = ModulationMode(mode)
        self.edges = MaskEdges(edges)
        if self.routing is TokenRouting.PER_SEGMENT:
            if token_sets is None:
                raise ValueError("per-segment routing needs the segments (token_sets)")
            if self.edges is not MaskEdges.BINARY:
                raise ValueError("per-segment routing needs binary masks: a pixel attends to a segment or not")
            self.mode = ModulationMode.LOGITS   # binary masks: LOGITS and OUTPUT are the same attention
        if (self.mode is ModulationMode.OUTPUT and self.routing is TokenRouting.PER_TOKEN
                and token_sets is not None and len(token_sets) > 1):
            raise ValueError("mode 'output' blends two whole attentions per pixel and has no per-token form; "
                             "use mode 'logits' for CAMILA's per-token mask, or FoI routing")
        self.masks = masks.detach().float().cpu()
        self.empty_context = empty_context.detach()
        self.token_sets = [sorted(set(int(t) for t in s)) for s in token_sets] if token_sets is not None else None
        self.special_tokens = sorted(set(int(t) for t in special_tokens))
        self.prompt_context = prompt_context.detach() if prompt_context is not None else None
        self.prompt_length = prompt_length or (prompt_context.shape[1] if prompt_context is not None else None)
        self.branches = branches
        self.strength = float(strength)
        self.selector = selector
        self._mask_cache = {}
        self._plans = {}
        # diagnostics (tests, the Attention Map node): what was actually modulated
        self.calls_modified = 0
        self.places_modified = set()
        self.branches_modified = set()
        self.rows_through_inner = 0   # pixel rows computed through call.attend (other packs act on them)
        self.rows_as_delta = 0        # soft rows: our change added on top of the inner result
        self._calls_seen = 0
        self._warned = False

    # -- geometry -----------------------------------------------------------------------------
    def _pixel_masks(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._mask_cache:
            flat = layer_masks(self.masks, h, w, self.edges).reshape(self.masks.shape[0], h * w)
            vanished = [k + 1 for k in range(flat.shape[0]) if bool(self.masks[k].any()) and not bool(flat[k].any())]
            if vanished:
                logging.warning("ContextEdit Attention Mask: mask(s) %s cover less than half of every cell of the "
                                "%dx%d attention layers, so they edit nothing there; enlarge them or choose finer "
                                "'resolutions'.", vanished, h, w)
            self._mask_cache[key] = flat.to(device)
        return self._mask_cache[key]

    def _prompt_layout(self, n_tokens: int) -> int:
        length = self.prompt_length or n_tokens
        if n_tokens % length != 0:
            raise RuntimeError(
                f"ContextEdit attention mask: the conditioning has {n_tokens} tokens, which is not a multiple of the "
                f"prompt's {length}; the instruction tokens cannot be located. Encode the same prompt you gave the node."
            )
        return length

    def _owner(self, length: int, device) -> torch.Tensor:
        """[N, L] 1 where token j belongs to instruction k."""
        owner = torch.zeros(len(self.token_sets), length, device=device)
        for k, positions in enumerate(self.token_sets):
            owner[k, [p for p in positions if p < length]] = 1.0
        return owner

    def token_masks(self, masks_flat: torch.Tensor, n_tokens: int):
        """The mask as the formula uses it, for pixels p and text tokens j.

        Returns (weight [Nq, T], visibility [Nq, T] or None, pixel [Nq]): ``weight`` is M[p, j]
        (mixes X/Y and V_T/V_0), ``visibility`` the token routing of FoI / per-segment (None =
        every token visible), ``pixel`` the union max_k M_k(p) (the per-pixel M of OUTPUT mode).
        """
        union = masks_flat.max(dim=0).values                      # [Nq]
        n_q = union.shape[0]
        if self.token_sets is None:
            return union.view(-1, 1).expand(n_q, n_tokens), None, union
        length = self._prompt_layout(n_tokens)
        reps = n_tokens // length
        owner = self._owner(length, masks_flat.device)            # [N, L]
        if self.routing is TokenRouting.PER_TOKEN:
            # M[p, j] = M_k(p) for the instruction owning j (max if several); the rest follow the union
            per_k = masks_flat.unsqueeze(-1) * owner.unsqueeze(1)   # [N, Nq, L]
            owned = owner.sum(dim=0) > 0                            # [L]
            weight = torch.where(owned.view(1, -1), per_k.max(dim=0).values, union.view(-1, 1))
            return weight.repeat(1, reps), None, union
        if self.routing is TokenRouting.PER_SEGMENT:
            # a pixel sees the segments of every mask covering it, from the prompt; outside every
            # mask, the empty prompt's own positions 0..T0-1 (its keys stand at those positions).
            # Only the first copy of a repeated text is used (attention over one copy).
            seg = (masks_flat.transpose(0, 1) @ owner).clamp(max=1.0)      # [Nq, L]
            weight = torch.zeros(n_q, n_tokens, device=masks_flat.device)
            weight[:, :length] = seg
            vis = weight.clone()
            n_empty = min(self.empty_context.shape[1], n_tokens)
            vis[union == 0, :n_empty] = 1.0
            return weight, vis, union
        # FoI: a token owned by instruction k is seen with weight M_k(p); a pixel in two masks sees
        # both token sets; start/end/padding always; pixels outside every mask see everything (they
        # take the image-only path, where routing the prompt's tokens means nothing)
        vis = (masks_flat.transpose(0, 1) @ owner).clamp(max=1.0)
        if self.special_tokens:
            vis[:, [p for p in self.special_tokens if p < length]] = 1.0
        vis = torch.where((union > 0).view(-1, 1), vis, torch.ones_like(vis))
        return union.view(-1, 1).expand(n_q, n_tokens), vis.repeat(1, reps), union

    def _row_plan(self, h: int, w: int, n_tokens: int, device) -> _RowPlan:
        """Everything that depends only on the grid and the token count, computed once."""
        key = (h, w, n_tokens, str(device))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        masks_flat = self._pixel_masks(h, w, device)
        weight, vis, pixel = self.token_masks(masks_flat, n_tokens)
        text_only = self.mode is ModulationMode.OUTPUT
        n_q = weight.shape[0]
        parts = [] if text_only else [weight]
        if vis is not None:
            parts.append(vis)
        groups = []
        if not parts:  # nothing to route: the text attention is the inner result itself
            done = torch.ones(n_q, dtype=torch.bool, device=device)
        else:
            rows_key = torch.cat(parts, dim=1)
            binary = ((rows_key == 0) | (rows_key == 1)).all(dim=1)
            done = torch.zeros(n_q, dtype=torch.bool, device=device)
            if bool(binary.any()):
                patterns, inverse, counts = torch.unique(rows_key[binary], dim=0, return_inverse=True,
                                                         return_counts=True)
                binary_idx = binary.nonzero().view(-1)
                order = counts.argsort(descending=True).tolist()
                if self.edges is MaskEdges.SOFT:
                    order = order[:MAX_PATTERNS]
                for g in order:
                    pattern = patterns[g]
                    members = binary_idx[inverse == g]
                    take_text = (torch.ones(n_tokens, dtype=torch.bool, device=device) if text_only
                                 else pattern[:n_tokens] > 0.5)
                    visible = (pattern[-n_tokens:] > 0.5) if vis is not None else None
                    identity = bool(take_text.all()) and (visible is None or bool(visible.all()))
                    visible_idx = None if visible is None or bool(visible.all()) else visible.nonzero().view(-1)
                    groups.append((members, take_text, visible_idx, identity))
                    done[members] = True
        plan = _RowPlan(masks_flat, weight, vis, pixel, groups, done)
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.pop(next(iter(self._plans)))
        self._plans[key] = plan
        return plan

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
    def _probs(self, q, k, k0, heads, weight, vis):
        """Attention distributions [b, H, Nq, T]: LOGITS -> (A', None); OUTPUT -> (p_text, p_empty)."""
        x = scaled_scores(q, k, heads)          # text(+image) scores X / sqrt(d)
        y = scaled_scores(q, k0, heads)         # image-only scores Y / sqrt(d)
        log_vis = torch.log(vis).view(1, 1, *vis.shape) if vis is not None else 0.0  # log 0 = -inf: hidden
        if self.mode is ModulationMode.LOGITS:
            w = weight.view(1, 1, *weight.shape)
            return (w * x + (1 - w) * y + log_vis).softmax(dim=-1), None
        return (x + log_vis).softmax(dim=-1), y.softmax(dim=-1)

    def _math(self, q, k, v, k0, v0, heads, weight, vis, pixel) -> torch.Tensor:
        """Our own modulated attention in fp32, [b, Nq, HD]."""
        p, p_0 = self._probs(q, k, k0, heads, weight, vis)
        if self.mode is ModulationMode.LOGITS:
            w = weight.view(1, 1, *weight.shape)
            return apply_probs(p * w, v.float(), heads) + apply_probs(p * (1 - w), v0.float(), heads)
        mo = pixel.view(1, -1, 1)
        return mo * apply_probs(p, v.float(), heads) + (1 - mo) * apply_probs(p_0, v0.float(), heads)

    def modulate(self, q, k, v, k0, v0, heads: int, masks_flat: torch.Tensor) -> torch.Tensor:
        """The modulated attention written with our own math (no other pack involved).
        q [b,Nq,HD], k/v [b,T,HD], k0/v0 [b,T,HD], masks_flat [N, Nq] (used as given)."""
        weight, vis, pixel = self.token_masks(masks_flat, k.shape[1])
        return self._math(q, k, v, k0, v0, heads, weight, vis, pixel).to(v.dtype)

    def _empty_kv(self, call: AttentionCall):
        n_tokens = call.k.shape[1]
        empty = self.empty_context.to(call.k.device, call.k.dtype)
        reps = -(-n_tokens // empty.shape[1])
        return call.project_context(empty.repeat(1, reps, 1)[:, :n_tokens])

    def effective_probs(self, call: AttentionCall):
        """Weight each query puts on each *text* key [B, H, Nq, T] as this controller applies it
        (for capture/heat-maps): A' * M on the text keys (LOGITS), M * p_text (OUTPUT)."""
        probs = scaled_scores(call.q, call.k, call.heads).softmax(dim=-1)
        if not self.selector.matches(call):
            return probs
        chunks = self._patched_chunks(call)
        if not chunks:
            return probs
        k0, _ = self._empty_kv(call)
        plan = self._row_plan(call.height, call.width, call.k.shape[1], call.q.device)
        weight, vis, pixel = plan.weight, plan.vis, plan.pixel
        for _, sl in chunks:
            b = call.q[sl].shape[0]
            p, _ = self._probs(call.q[sl], call.k[sl], k0.expand(b, -1, -1), call.heads, weight, vis)
            if self.mode is ModulationMode.LOGITS:
                mod = p * weight.view(1, 1, *weight.shape)
            else:
                mod = p * pixel.view(1, 1, -1, 1)
            probs[sl] = probs[sl] + self.strength * (mod - probs[sl])
        return probs

    # -- composition with whatever attention runs inside call.attend ----------------------------
    def _attend_modified(self, call, rows, k0, v0, take_text, visible_idx):
        """call.attend on the whole batch (other packs see the batch layout they expect) with the
        patched chunks' keys/values taken token by token from the prompt (take_text[j]) or the
        empty prompt, restricted to the visible tokens; returns the patched rows [b, Nq, HD]."""
        k, v = call.k.clone(), call.v.clone()
        sel = take_text.view(1, -1, 1)
        k[rows] = torch.where(sel, call.k[rows], k0.expand(len(rows), -1, -1))
        v[rows] = torch.where(sel, call.v[rows], v0.expand(len(rows), -1, -1))
        if visible_idx is not None:
            k, v = k[:, visible_idx], v[:, visible_idx]
        return call.attend(call.q, k, v)[rows].float()

    def _through_inner(self, call, rows, inner, k0, v0, plan):
        """Rows whose (weight, visibility) pattern is binary, computed through call.attend, one call
        per pattern. Returns (result [b, Nq, HD] where done, done [Nq])."""
        res = inner.clone()
        for members, take_text, visible_idx, identity in plan.groups:
            if identity:
                continue  # exactly the call the host made: keep the inner result
            res[:, members] = self._attend_modified(call, rows, k0, v0, take_text, visible_idx)[:, members]
        return res, plan.done

    def _compose(self, call, rows, inner, k0, v0, plan):
        """The modulated attention of the patched rows [b, Nq, HD] (fp32)."""
        q, k, v = call.q[rows], call.k[rows], call.v[rows]
        b, heads = len(rows), call.heads
        weight, vis, pixel = plan.weight, plan.vis, plan.pixel
        k0b, v0b = k0.expand(b, -1, -1), v0.expand(b, -1, -1)
        if self.mode is ModulationMode.LOGITS:
            res, done = self._through_inner(call, rows, inner, k0, v0, plan)
            if not bool(done.all()):
                # soft rows: our change as a delta on top of what the inner attention gave
                ours = self._math(q, k, v, k0b, v0b, heads, weight, vis, pixel)
                plain = apply_probs(scaled_scores(q, k, heads).softmax(dim=-1), v.float(), heads)
                res[:, ~done] = inner[:, ~done] + (ours - plain)[:, ~done]
        else:
            text, done = self._through_inner(call, rows, inner, k0, v0, plan)
            if not bool(done.all()):
                p_t = (scaled_scores(q, k, heads) + torch.log(vis).view(1, 1, *vis.shape)).softmax(dim=-1)
                ours = apply_probs(p_t, v.float(), heads)
                plain = apply_probs(scaled_scores(q, k, heads).softmax(dim=-1), v.float(), heads)
                text[:, ~done] = inner[:, ~done] + (ours - plain)[:, ~done]
            res = text
            if bool((pixel < 1).any()):
                empty = self._attend_modified(call, rows, k0, v0,
                                              torch.zeros(k.shape[1], dtype=torch.bool, device=k.device), None)
                mo = pixel.view(1, -1, 1)
                res = mo * text + (1 - mo) * empty
        self.rows_through_inner += int(done.sum())
        self.rows_as_delta += int((~done).sum())
        return res

    def modify(self, call: AttentionCall) -> torch.Tensor:
        out = call.attend(call.q, call.k, call.v)
        if self.strength == 0.0:
            return out  # no effect: the inner result as it is
        chunks = self._patched_chunks(call)
        if not chunks:
            return out
        rows = torch.cat([torch.arange(call.q.shape[0], device=call.q.device)[sl] for _, sl in chunks])
        k0, v0 = self._empty_kv(call)
        plan = self._row_plan(call.height, call.width, call.k.shape[1], call.q.device)
        inner = out[rows].float()
        mod = self._compose(call, rows, inner, k0, v0, plan)
        if self.strength != 1.0:
            mod = inner + self.strength * (mod - inner)
        out = out.clone()
        out[rows] = mod.to(out.dtype)
        self.branches_modified.update(branch for branch, _ in chunks)
        self.calls_modified += 1
        self.places_modified.add(call.place)
        return out
