"""ComfyUI adapter for joint-attention confinement on FLUX.1 (Kontext) and Qwen-Image(-Edit).

Only ComfyUI's own extension points are used, and only on a clone of the MODEL:

- a ``WrappersMP.DIFFUSION_MODEL`` wrapper sees each call's ``x``, ``context`` and ``ref_latents``
  and learns the call's token layout ``[text | noisy image | reference images]`` from them (text
  count from the context, image grid from the latent size and the patch size, one grid per
  reference latent). It passes the model a *copy* of ``transformer_options`` holding our
  ``optimized_attention_override`` for that call;
- the override (``comfy.ldm.modules.attention.wrap_attn`` calls it for every attention backend)
  runs the grouped attention of :mod:`.joint_attention` on the positive rows, through the backend
  ComfyUI chose (``func``), or through the override that was installed before ours (a Sage
  attention patch, say), which therefore keeps running. ``_inside_attn_wrapper`` stays in the
  kwargs and a re-entrant call goes straight to ``func``, so nothing recurses.

Per model: FLUX.1 text ids are all zero, so concatenated segments keep their standalone positions.
Qwen-Image gives text token i the RoPE position ``start + i``; the override rotates the text
queries and keys of the patched rows by ``(standalone position) - i`` (the index in the token's own
segment, plus the segment's offset when it was encoded after a shared prefix such as
Qwen-Image-Edit's picture), so every segment sits where its standalone encoding puts it
(rotations compose: R(d) R(p) = R(p + d)). Flux.2 (text positions
0..L-1, 4 RoPE axes, a different text encoder) and other DiTs are refused with a clear message.
"""

import threading
import uuid
from dataclasses import dataclass, field

import torch

from .joint_attention import TextSegments, TokenLayout, build_groups, grouped_attention

WRAPPER_PREFIX = "contextedit_dit_confine"
FLUX = "flux"
QWEN_IMAGE = "qwen_image"
# positions of ref_latents and transformer_options in each model's DIFFUSION_MODEL executor call
_ARG_POS = {FLUX: {"ref_latents": 5, "transformer_options": 7},
            QWEN_IMAGE: {"ref_latents": 4, "transformer_options": 6}}


class UnsupportedModelError(ValueError):
    """The MODEL is not a DiT this adapter knows how to confine."""


def detect_family(model_patcher) -> str:
    """'flux' (FLUX.1 dev / Kontext / schnell) or 'qwen_image' (Qwen-Image / -Edit), read from the
    model object itself; anything else raises :class:`UnsupportedModelError`."""
    import comfy.ldm.flux.model
    import comfy.ldm.qwen_image.model
    import comfy.model_base

    base = getattr(model_patcher, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if isinstance(base, comfy.model_base.Flux2) or (
            type(dm) is comfy.ldm.flux.model.Flux and (dm.params.txt_ids_dims or dm.params.global_modulation)):
        raise UnsupportedModelError(
            "Flux.2 is not supported by the DiT confinement (its text tokens carry positions 0..L-1 on a "
            "fourth RoPE axis and a different text encoder). Use FLUX.1 Kontext or Qwen-Image-Edit.")
    if type(dm) is comfy.ldm.flux.model.Flux and type(base) is comfy.model_base.Flux:
        return FLUX
    if isinstance(dm, comfy.ldm.qwen_image.model.QwenImageTransformer2DModel):
        return QWEN_IMAGE
    raise UnsupportedModelError(
        f"{type(dm).__name__} ({type(base).__name__}) is not a FLUX.1 or Qwen-Image model; the DiT confinement "
        "knows only those token layouts. Use FLUX.1 Kontext or Qwen-Image-Edit (or an SD1.x/SDXL UNet).")


def joint_block_counts(model_patcher, family=None) -> dict:
    """{'double': n, 'single': m}: the joint-attention blocks per ``block_type`` as the model sets
    it in ``transformer_options`` (what ``DiTConfinement.blocks`` selects from). Qwen-Image calls
    all of its blocks 'double'."""
    family = family or detect_family(model_patcher)
    dm = model_patcher.get_model_object("diffusion_model")
    if family == QWEN_IMAGE:
        return {"double": len(dm.transformer_blocks)}
    return {"double": len(dm.double_blocks), "single": len(dm.single_blocks)}


def _grid(n, patch):
    return (n + patch // 2) // patch


def layout_of_call(family, patch, x, context, ref_latents) -> TokenLayout:
    """The token layout of one diffusion-model call, as the model builds it."""
    if family == QWEN_IMAGE and x.dim() == 5 and x.shape[2] != 1:
        raise UnsupportedModelError(f"a latent with {x.shape[2]} frames: the confinement handles still images only.")
    h, w = _grid(x.shape[-2], patch), _grid(x.shape[-1], patch)
    refs = []
    for ref in ref_latents or ():
        frames = ref.shape[2] if ref.dim() == 5 else 1
        if frames != 1:
            raise UnsupportedModelError(f"a reference latent with {frames} frames: still images only.")
        refs.append((_grid(ref.shape[-2], patch), _grid(ref.shape[-1], patch)))
    return TokenLayout(text=int(context.shape[1]), image_hw=(h, w), refs_hw=tuple(refs))


class _Guard(threading.local):
    active = False


@dataclass
class DiTConfinement:
    """Confine instruction segments to their masks on a FLUX.1 / Qwen-Image model.

    ``segments`` says where S0 (image-only), S1..SK and the shared part sit in the positive
    conditioning's text; ``masks`` [K, H, W] (any resolution, resized to each token grid).
    ``branches``: the ``cond_or_uncond`` values whose rows are confined (0 = positive); other rows
    (uncond) go through the attention untouched. ``blocks``: None = every block, else a set of
    ``(block_type, index)`` with block_type 'double' / 'single' as the models name them.
    ``sigma_max`` / ``sigma_min``: the noise window in which it acts. ``strength`` < 1 blends the
    confined attention output with the unconfined one over the same tokens at the positions the
    model gave them (0 = the unpatched model, exactly).
    """

    segments: TextSegments
    masks: torch.Tensor
    branches: tuple = (0,)
    blocks: frozenset | None = None
    sigma_max: float = float("inf")
    sigma_min: float = 0.0
    strength: float = 1.0
    last_layout: TokenLayout | None = field(default=None, init=False)
    calls: int = field(default=0, init=False)          # attention calls confined (for tests/tools)
    _cache: dict = field(default_factory=dict, init=False, repr=False)
    _guard: _Guard = field(default_factory=_Guard, init=False, repr=False)

    def __post_init__(self):
        masks = self.masks
        if masks.dim() == 2:
            masks = masks.unsqueeze(0)
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength {self.strength} is outside 0..1")
        if masks.dim() != 3 or masks.shape[0] != self.segments.instructions:
            raise ValueError(f"{tuple(masks.shape)} masks for {self.segments.instructions} instruction segments")
        self.masks = masks.detach().float().cpu()

    # -- per call ---------------------------------------------------------------------------
    def groups_for(self, layout, device):
        key = (layout, str(device))
        if key not in self._cache:
            if len(self._cache) >= 8:  # a few layouts per sampling run; never grows without bound
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = build_groups(self.segments, layout, self.masks, device=device)
        return self._cache[key]

    def active_at(self, transformer_options) -> bool:
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            return True
        s = float(torch.as_tensor(sigmas).max())
        return self.sigma_min <= s <= self.sigma_max

    def rows_of(self, batch, transformer_options):
        cou = list(transformer_options.get("cond_or_uncond", [0]))
        if batch % len(cou) != 0:
            return list(range(batch))
        chunk = batch // len(cou)
        return [i for i in range(batch) if cou[i // chunk] in self.branches]

    def text_rebase(self, dm, n_text, dtype, device):
        """Qwen-Image: RoPE rotations moving text token i to its standalone position."""
        n = self.segments.length
        idx = torch.arange(n_text)
        delta = (self.segments.position_in_segment()[idx % n] - idx).float()
        ids = delta.reshape(1, -1, 1).repeat(1, 1, 3).to(device)
        return dm.pe_embedder(ids).to(dtype).contiguous()

    # -- the hooks ----------------------------------------------------------------------------
    def wrapper(self, family):
        pos = _ARG_POS[family]

        def diffusion_model_wrapper(executor, *args, **kwargs):
            args = list(args)
            to_pos = pos["transformer_options"]
            to = args[to_pos] if len(args) > to_pos else kwargs.get("transformer_options", {})
            if not self.active_at(to):
                return executor(*args, **kwargs)
            x, context = args[0], args[2]
            refs = args[pos["ref_latents"]] if len(args) > pos["ref_latents"] else kwargs.get("ref_latents")
            dm = executor.class_obj
            layout = layout_of_call(family, dm.patch_size, x, context, refs)
            rows = self.rows_of(x.shape[0], to)
            if not rows:
                # only other branches in this call (a negative too long to batch with the
                # positive, say): nothing to confine, and its text need not fit our segments
                return executor(*args, **kwargs)
            if layout.text % self.segments.length != 0:
                raise ValueError(
                    f"the positive conditioning has {layout.text} text tokens, but the ContextEdit Attention Mask "
                    f"patch was built for {self.segments.length}: connect the node's 'positive' output as the "
                    f"positive conditioning (and do not combine or concatenate it with other conditioning).")
            self.last_layout = layout
            call = _Call(self, layout, rows, to.get("optimized_attention_override"),
                         self.groups_for(layout, x.device),
                         self.text_rebase(dm, layout.text, x.dtype, x.device) if family == QWEN_IMAGE else None)
            to = dict(to)
            to["optimized_attention_override"] = call.override
            if len(args) > to_pos:
                args[to_pos] = to
            else:
                kwargs["transformer_options"] = to
            return executor(*args, **kwargs)

        return diffusion_model_wrapper

    def install(self, model_patcher, key=None):
        """A clone of ``model_patcher`` carrying this confinement (the input is left untouched)."""
        family = detect_family(model_patcher)
        from comfy.patcher_extension import WrappersMP

        patched = model_patcher.clone()
        patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, key or f"{WRAPPER_PREFIX}_{uuid.uuid4().hex[:8]}",
                                     self.wrapper(family))
        return patched


class _Call:
    """One diffusion-model call: its layout, groups and the override installed for it."""

    def __init__(self, owner, layout, rows, previous, groups, rebase):
        self.owner, self.layout, self.rows, self.previous = owner, layout, rows, previous
        self.groups, self.rebase = groups, rebase

    def inner(self, func, *args, **kwargs):
        """The attention as it would have run without us: the earlier override, else the backend."""
        guard = self.owner._guard
        was, guard.active = guard.active, True
        try:
            if self.previous is not None:
                return self.previous(func, *args, **kwargs)
            return func(*args, **kwargs)
        finally:
            guard.active = was

    def applies(self, args, kwargs):
        if self.owner._guard.active or not self.rows or len(args) < 4:
            return False
        q = args[0]
        if not kwargs.get("skip_reshape") or q.dim() != 4 or q.shape[2] != self.layout.total:
            return False  # not one of the model's joint attentions
        blocks = self.owner.blocks
        if blocks is not None:
            to = kwargs.get("transformer_options") or {}
            if (to.get("block_type"), to.get("block_index")) not in blocks:
                return False
        return True

    def override(self, func, *args, **kwargs):
        if self.owner._guard.active:
            # re-entered from inside the attention we called (an override that calls the backend
            # without ComfyUI's wrapper flag): run the backend itself
            return func(*args, **kwargs)
        if not self.applies(args, kwargs):
            return self.inner(func, *args, **kwargs)
        q, k, v, heads = args[:4]
        rest = args[4:]
        mask = rest[0] if rest else kwargs.get("mask")
        if mask is not None:
            raise ValueError("the confined model got an attention mask from the conditioning (e.g. a regional or "
                             "area mask); ContextEdit's confinement replaces it: remove that mask node.")

        def attend(q_, k_, v_):
            return self.inner(func, q_, k_, v_, heads, *rest, **kwargs)

        if self.owner.strength == 0.0:
            return self.inner(func, *args, **kwargs)   # no effect: exactly the unpatched attention
        self.owner.calls += 1
        batch = q.shape[0]
        rows = self.rows
        if len(rows) == batch:
            return self.confined(attend, q, k, v)
        sel = torch.tensor(rows, device=q.device)
        other = torch.tensor([i for i in range(batch) if i not in set(rows)], device=q.device)
        kept = attend(q.index_select(0, other), k.index_select(0, other), v.index_select(0, other))
        conf = self.confined(attend, q.index_select(0, sel), k.index_select(0, sel), v.index_select(0, sel))
        out = kept.new_empty((batch,) + tuple(kept.shape[1:]))
        out.index_copy_(0, other, kept)
        out.index_copy_(0, sel, conf)
        return out

    def confined(self, attend, q, k, v):
        strength = self.owner.strength
        # the unconfined attention of the blend is the model's own: over the positions the model
        # gave the text (before any rebase), so strength 0 is the unpatched model on every family
        full = attend(q, k, v) if strength < 1.0 else None
        if self.rebase is not None:
            from comfy.ldm.flux.math import apply_rope1

            n = self.layout.text
            q = torch.cat([apply_rope1(q[:, :, :n], self.rebase), q[:, :, n:]], dim=2)
            k = torch.cat([apply_rope1(k[:, :, :n], self.rebase), k[:, :, n:]], dim=2)
        out = grouped_attention(attend, q, k, v, self.groups)
        if full is not None:
            out = full + strength * (out - full)
        return out
