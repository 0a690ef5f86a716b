"""MAG-Edit's mask-based cross-attention constraints, and the controller that feeds them.

:class:`CrossAttentionProbe` keeps, *with autograd*, the cross-attention probabilities of the
chosen layers (MAG uses the 1/32 layers: 16x16 at 512 px). When it wraps an injection controller
it records the probabilities after injection, as MAG-Edit does (its maps are taken after the
P2P refine), and computes the layer output from them, so the loss and the UNet agree.

With ``stop_after`` set, the probe raises :class:`StopForward` once it has recorded that many
layers: the rest of the UNet does not influence the loss, so the caller skips it
(notes/algorithms.md (c) 4).

Ratios (per sample, per head; ``mask`` is the edit region on the layer's grid, flattened):

* token ratio  r(p) = mean_{k in word} A(p, k) / sum_j A(p, j);  act = mean_{p in M} r(p)
* spatial ratio act = sum_{p in M} sum_{k in word} A(p, k) / sum_p sum_{k in word} A(p, k)

M is the word's own mask when each edit word has one (the reference pairs every edit word with a
mask file and reads ``masks[word[0][i]]`` for word i), else the one edit mask.

The losses follow MAG-Edit's released code (HelenMao/MAG-Edit ``code_tr/network.py``), both
averaged as (1/(L*W)) sum_words sum_layers mean_heads(term), L loss layers, W edit words:

* token ratio (``compute_ca_TR``):   term = (1 - act)^2
* spatial ratio (``compute_ca_SR``): term = 3 - 4 * act  (linear: its gradient, -4 grad act, does not
  fade as act approaches 1, unlike the token ratio's -2 (1 - act) grad act)
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .controller import AttentionCall, AttentionController, LayerSelector, apply_probs, scaled_scores


class StopForward(Exception):
    """Raised by a probe once every layer the loss needs has run."""


@dataclass
class ProbeRecord:
    place: object
    branches: list
    height: int
    width: int
    probs: torch.Tensor  # [B, H, N, T] fp32, part of the autograd graph

    def chunk(self, branch: int) -> torch.Tensor:
        size = self.probs.shape[0] // max(1, len(self.branches))
        i = self.branches.index(branch)
        return self.probs[i * size:(i + 1) * size]


class CrossAttentionProbe(AttentionController):
    def __init__(self, selector: LayerSelector = LayerSelector(), inner: Optional[AttentionController] = None,
                 stop_after: Optional[int] = None):
        self.selector = selector
        self.inner = inner
        self.stop_after = stop_after
        self.records = []

    @property
    def needs_self_attention(self) -> bool:
        return bool(getattr(self.inner, "needs_self_attention", False))

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        if call.is_cross and self.selector.matches_layer(call):
            if self.inner is not None and hasattr(self.inner, "effective_probs"):
                probs = self.inner.effective_probs(call)
            else:
                probs = scaled_scores(call.q, call.k, call.heads).softmax(dim=-1)
            self.records.append(ProbeRecord(call.place, list(call.branches), call.height, call.width, probs))
            if self.stop_after is not None and len(self.records) >= self.stop_after:
                raise StopForward()
            return apply_probs(probs, call.v, call.heads)
        if self.inner is not None:
            return self.inner(call)
        return call.attend(call.q, call.k, call.v)


def mask_on_grid(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Binary mask [B, H, W] -> [B, height*width] by nearest-neighbour resize, then != 0 (MAG-Edit)."""
    m = F.interpolate(mask.float().unsqueeze(1), size=(height, width), mode="nearest")
    return (m.squeeze(1) != 0).float().flatten(1)


def token_ratio(probs: torch.Tensor, mask: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """probs [B, H, N, T], mask [B, N] (0/1), positions of one word's sub-tokens -> act [B, H]."""
    word = probs[..., list(positions)].mean(dim=-1)          # [B, H, N]
    ratio = word / probs.sum(dim=-1).clamp_min(1e-12)
    m = mask[:, None, :].to(ratio.dtype)
    return (ratio * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)


def spatial_ratio(probs: torch.Tensor, mask: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """probs [B, H, N, T], mask [B, N] -> share of the word's attention mass inside the mask [B, H]."""
    word = probs[..., list(positions)].sum(dim=-1)           # [B, H, N]
    m = mask[:, None, :].to(word.dtype)
    return (word * m).sum(dim=-1) / word.sum(dim=-1).clamp_min(1e-12)


RATIOS = {"token": token_ratio, "spatial": spatial_ratio}


def word_masks_of(mask, words: Sequence[Sequence[int]]) -> list:
    """One mask per word: ``mask`` is one mask for every word ([B or 1, H, W]) or a list/tuple with
    one such mask per word (MAG-Edit's reference pairs each edit word with its own mask file)."""
    if isinstance(mask, (list, tuple)):
        if len(mask) != len(words):
            raise ValueError(f"{len(mask)} word masks for {len(words)} words")
        return list(mask)
    return [mask] * len(words)


def layer_ratios(records, mask, words: Sequence[Sequence[int]], branch: int = 0,
                 kind: str = "token"):
    """act per recorded layer and word, [B, H] each, for the chunk of ``branch``. ``mask``: one
    mask for every word, or one per word (:func:`word_masks_of`)."""
    fn = RATIOS[kind]
    masks = word_masks_of(mask, words)
    acts = []
    for rec in records:
        if branch not in rec.branches:
            continue
        probs = rec.chunk(branch)
        for positions, word_mask in zip(words, masks):
            m = mask_on_grid(word_mask, rec.height, rec.width).to(probs.device)
            acts.append(fn(probs, m, positions))
    if not acts:
        raise RuntimeError("no cross-attention layer was recorded for the ratio")
    return acts


def mean_ratio(records, mask, words: Sequence[Sequence[int]], branch: int = 0,
               kind: str = "token") -> torch.Tensor:
    """act averaged over heads, layers and words: [B]. (The loss uses :func:`ratio_loss`.)"""
    return torch.stack([a.mean(dim=1) for a in layer_ratios(records, mask, words, branch, kind)]).mean(dim=0)


RATIO_TERMS = {
    "token": lambda act: (1.0 - act) ** 2,    # MAG-Edit compute_ca_TR
    "spatial": lambda act: 3.0 - 4.0 * act,   # MAG-Edit compute_ca_SR
}


def ratio_loss(records, mask, words: Sequence[Sequence[int]], branch: int = 0,
               kind: str = "token") -> torch.Tensor:
    """(1/(L*W)) sum_words sum_layers mean_heads term(act), per sample: [B]. Word w's act is
    measured inside its own mask when ``mask`` is a list with one mask per word (the reference's
    ``masks[word[0][w]]``), else inside the one mask.

    ``kind="token"``: term = (1 - act)^2, MAG-Edit's ``compute_ca_TR``.
    ``kind="spatial"``: term = 3 - 4 act with act the spatial ratio, MAG-Edit's ``compute_ca_SR``
    (released but never called there; the paper picks token or spatial ratio per edit).
    """
    acts = layer_ratios(records, mask, words, branch, kind)
    term = RATIO_TERMS[kind]
    return torch.stack([term(a).mean(dim=1) for a in acts]).mean(dim=0)


def word_share_map(records, words: Sequence[Sequence[int]], branch: int = 0) -> torch.Tensor:
    """Per-pixel token ratio of the words, averaged over heads/layers/words, on the finest
    recorded grid: [B, h, w] (for showing the edit word's attention)."""
    maps = []
    h = max(r.height for r in records)
    w = max(r.width for r in records)
    for rec in records:
        if branch not in rec.branches:
            continue
        probs = rec.chunk(branch).detach()
        for positions in words:
            share = (probs[..., list(positions)].mean(-1) / probs.sum(-1).clamp_min(1e-12)).mean(dim=1)
            grid = share.reshape(-1, 1, rec.height, rec.width)
            maps.append(F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[:, 0])
    return torch.stack(maps).mean(dim=0).float().cpu()
