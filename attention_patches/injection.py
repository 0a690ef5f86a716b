"""Prompt-to-prompt attention injection from a source (reconstruction) branch.

Two controllers share one :class:`SourceAttentionStore`:

* :class:`SourceRecorder` runs on the source branch (during inversion) and keeps, per step and
  layer, the source's projected queries and keys. (q, k) is all that is needed later: the source
  cross-attention probabilities are softmax(q k^T / sqrt d), and self-attention injection is
  attention with the source's (q, k) and the edit branch's values, so the edit never has to hold
  a 1024x1024 probability tensor (notes/algorithms.md (c) 6).
* :class:`AttentionInjection` runs on the edit branch. Cross-attention: prompt-to-prompt's
  *refine* mapper -- target tokens aligned with a source token take the (detached) source
  column, new tokens keep their own (``alphas`` 1 / 0). Self-attention: the source's (q, k) with
  the edit's v. Only chunks of the chosen branch are touched (the CFG negative is left alone).

The engine sets ``step`` (and the ``cross_on`` / ``self_on`` switches) before each UNet call;
layers are chosen by resolution through :class:`LayerSelector`, as everywhere in the pack.
"""

from dataclasses import dataclass, field

import torch

from .controller import (AttentionCall, AttentionController, LayerSelector, apply_probs, chunk_branches,
                         scaled_scores)

SOURCE_BRANCH = 0  # ComfyUI's cond_or_uncond id of the positive (text) chunk


@dataclass
class SourceAttentionStore:
    """{step: {place: (q, k)}} for cross- and self-attention, [1, N, heads*dim] tensors (detached)."""

    cross: dict = field(default_factory=dict)
    self_attn: dict = field(default_factory=dict)
    device: object = None          # where to keep them (None: where they were computed)
    dtype: object = None           # e.g. torch.bfloat16 to halve the memory

    def put(self, step: int, is_cross: bool, place, q: torch.Tensor, k: torch.Tensor):
        kw = {}
        if self.device is not None:
            kw["device"] = self.device
        if self.dtype is not None:
            kw["dtype"] = self.dtype
        q, k = q.detach(), k.detach()
        if kw:
            q, k = q.to(**kw), k.to(**kw)
        (self.cross if is_cross else self.self_attn).setdefault(step, {})[place] = (q, k)

    def get(self, step: int, is_cross: bool, place):
        return (self.cross if is_cross else self.self_attn).get(step, {}).get(place)

    def nbytes(self) -> int:
        total = 0
        for table in (self.cross, self.self_attn):
            for layers in table.values():
                for q, k in layers.values():
                    total += q.numel() * q.element_size() + k.numel() * k.element_size()
        return total


def _match(selector: LayerSelector, call: AttentionCall) -> bool:
    return selector.matches_layer(call)


class SourceRecorder(AttentionController):
    """Pass-through controller that stores the source chunk's (q, k) in the chosen layers."""

    def __init__(self, store: SourceAttentionStore,
                 cross_selector: LayerSelector = LayerSelector(downscales=(8, 16, 32, 64)),
                 self_selector: LayerSelector = LayerSelector(downscales=(16, 32, 64), cross=False, self_attn=True),
                 branch: int = SOURCE_BRANCH):
        self.store = store
        self.cross_selector = cross_selector
        self.self_selector = self_selector
        self.branch = branch
        self.step = 0
        self.record_cross = True
        self.record_self = True

    @property
    def needs_self_attention(self) -> bool:
        return self.record_self

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        active = self.record_cross if call.is_cross else self.record_self
        selector = self.cross_selector if call.is_cross else self.self_selector
        if active and _match(selector, call):
            for branch, sl in chunk_branches(call):
                if branch == self.branch:
                    self.store.put(self.step, call.is_cross, call.place, call.q[sl][:1], call.k[sl][:1])
        return call.attend(call.q, call.k, call.v)


class AttentionInjection(AttentionController):
    """Edit-branch controller: P2P refine for cross-attention, source structure for self-attention.

    mapper: LongTensor [T_target] -- source token index for every target position.
    alphas: [T_target] -- 1 where the target token is aligned with a source token, else 0.
    """

    def __init__(self, store: SourceAttentionStore, mapper: torch.Tensor, alphas: torch.Tensor,
                 cross_selector: LayerSelector = LayerSelector(downscales=(8, 16, 32, 64)),
                 self_selector: LayerSelector = LayerSelector(downscales=(16, 32, 64), cross=False, self_attn=True),
                 branch: int = SOURCE_BRANCH):
        self.store = store
        self.mapper = mapper.long()
        self.alphas = alphas.float()
        self.cross_selector = cross_selector
        self.self_selector = self_selector
        self.branch = branch
        self.step = 0
        self.cross_on = True
        self.self_on = True
        self.calls_injected = 0
        # the source columns of a (step, layer) are the same in every forward of that step (MAG's
        # iterations and the sampling forward): computed once, dropped when the step changes
        self._columns = {}

    @property
    def needs_self_attention(self) -> bool:
        return self.self_on

    def _source(self, call):
        on = self.cross_on if call.is_cross else self.self_on
        selector = self.cross_selector if call.is_cross else self.self_selector
        if not on or not _match(selector, call):
            return None
        return self.store.get(self.step, call.is_cross, call.place)

    def effective_probs(self, call: AttentionCall):
        """[B, H, Nq, T] cross-attention probabilities after injection (fp32, differentiable in q/k)."""
        probs = scaled_scores(call.q, call.k, call.heads).softmax(dim=-1)
        src = self._source(call) if call.is_cross else None
        if src is None:
            return probs
        src_cols, alphas = self._source_columns(call, src, probs.shape[-1], probs.device)
        parts = []
        for branch, sl in chunk_branches(call):
            parts.append(src_cols + probs[sl] * (1 - alphas) if branch == self.branch else probs[sl])
        self.calls_injected += 1
        return torch.cat(parts, dim=0)

    def _source_columns(self, call, src, n_tok, device):
        """(alphas * source probabilities gathered by the mapper [1, H, Nq, T], alphas [T])."""
        key = (self.step, call.place, n_tok, call.heads, str(device))
        if self._columns and next(iter(self._columns))[0] != self.step:
            self._columns.clear()
        hit = self._columns.get(key)
        if hit is not None:
            return hit
        q_s, k_s = src
        src_probs = scaled_scores(q_s.to(device), k_s.to(device), call.heads).softmax(dim=-1)
        mapper = self.mapper[:n_tok].to(device).clamp(max=src_probs.shape[-1] - 1)
        alphas = self.alphas[:n_tok].to(device)
        if alphas.shape[0] < n_tok:  # longer target: extra positions keep their own attention
            alphas = torch.cat([alphas, alphas.new_zeros(n_tok - alphas.shape[0])])
            mapper = torch.cat([mapper, mapper.new_zeros(n_tok - mapper.shape[0])])
        hit = self._columns[key] = (src_probs[..., mapper] * alphas, alphas)
        return hit

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        src = self._source(call)
        if src is None:
            return call.attend(call.q, call.k, call.v)
        if call.is_cross:
            return apply_probs(self.effective_probs(call), call.v, call.heads)
        # self-attention: the source's structure (q, k), this branch's content (v)
        q_s, k_s = (t.to(device=call.q.device, dtype=call.q.dtype) for t in src)
        qs, ks = [], []
        for branch, sl in chunk_branches(call):
            n = sl.stop - sl.start
            if branch == self.branch:
                qs.append(q_s.expand(n, -1, -1))
                ks.append(k_s.expand(n, -1, -1))
            else:
                qs.append(call.q[sl])
                ks.append(call.k[sl])
        self.calls_injected += 1
        return call.attend(torch.cat(qs), torch.cat(ks), call.v)
