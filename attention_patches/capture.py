"""Capture the cross-attention that chosen prompt tokens receive, per layer and branch.

The captured value per query pixel is the share of attention going to the chosen token
positions, averaged over heads (the usual prompt-to-prompt / DAAM heat-map). When the layer is
also modulated by one of our own controllers (the capture wraps it), the *effective* attention
that controller applied is reported, so the map shows the patch's effect.
"""

from dataclasses import dataclass

import torch

from .controller import AttentionCall, AttentionController, LayerSelector, chunk_branches, scaled_scores


@dataclass
class CapturedMap:
    place: tuple
    branch: int
    height: int
    width: int
    share: torch.Tensor  # [b, h*w] fp32, on CPU


class AttentionCapture(AttentionController):
    def __init__(self, token_positions, selector: LayerSelector = LayerSelector(), prompt_length=None):
        self.positions = sorted(set(int(p) for p in token_positions))
        if not self.positions:
            raise ValueError("AttentionCapture needs at least one token position")
        self.prompt_length = prompt_length
        self.selector = selector
        self.maps = []

    def _columns(self, n_tokens):
        length = self.prompt_length or n_tokens
        reps = max(1, n_tokens // length)
        return [p + r * length for r in range(reps) for p in self.positions if p + r * length < n_tokens]

    def modify(self, call: AttentionCall) -> torch.Tensor:
        out = call.attend(call.q, call.k, call.v)
        inner = call.extra.get("contextedit_inner") if isinstance(call.extra, dict) else None
        probs = None
        if inner is not None and hasattr(inner, "effective_probs"):
            probs = inner.effective_probs(call)
        if probs is None:
            probs = scaled_scores(call.q, call.k, call.heads).softmax(dim=-1)
        share = probs[..., self._columns(call.k.shape[1])].sum(dim=-1).mean(dim=1)  # [B, Nq]
        for branch, sl in chunk_branches(call):
            self.maps.append(CapturedMap(call.place, branch, call.height, call.width, share[sl].detach().float().cpu()))
        return out

    def clear(self):
        self.maps = []
