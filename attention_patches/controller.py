"""The one attention abstraction: what a controller sees, and how layers are chosen.

Layers are selected by *resolution*, never by block ids: the ratio between the latent the
sampler works on and the spatial grid the attention runs at. We express it as the downscale
factor relative to the *image* (the latent is already 1/8), because that is how the papers talk:
"16x16 at 512 px" is 512/16 = 1/32, for SD1.5 and SDXL alike (SDXL at 1024 px attends at 1/16
and 1/32; SD1.5 at 1/8, 1/16, 1/32 and 1/64).
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

# VAE downscale of every SD-family latent: image pixels per latent pixel.
LATENT_SCALE = 8


@dataclass
class AttentionCall:
    """One attention call as a controller sees it.

    q: [B, Nq, heads*dim_head]; k, v: [B, Nk, heads*dim_head] (already projected by the layer).
    ``branches[i]`` tells which conditioning chunk i of the batch belongs to (ComfyUI's
    ``cond_or_uncond``; the batch is ``len(branches)`` equal chunks). ``attend(q, k, v)`` is the
    attention the host would have run (another pack's patch included), returning
    [B, Nq, heads*dim_head]. ``project_context(ctx)`` applies this layer's to_k/to_v to another
    context [B', T, C] and returns (k, v).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    heads: int
    is_cross: bool
    height: int                 # spatial grid of the queries
    width: int
    latent_height: int          # spatial size of the latent being denoised
    latent_width: int
    place: tuple                # host label of the layer, e.g. ("input", 7, 0) or a diffusers module path
    branches: Sequence[int]
    attend: Callable
    project_context: Optional[Callable] = None
    sigma: Optional[torch.Tensor] = None   # per-sample sigma of this call, if the host knows it
    context: Optional[torch.Tensor] = None  # raw context, when the host provides it
    extra: dict = field(default_factory=dict)

    @property
    def dim_head(self) -> int:
        return self.q.shape[-1] // self.heads

    @property
    def chunk_size(self) -> int:
        return self.q.shape[0] // max(1, len(self.branches))

    @property
    def image_downscale(self) -> int:
        """Image pixels per attention-grid cell (8, 16, 32, 64 ...)."""
        return LATENT_SCALE * level_factor(self.latent_height, self.latent_width, self.height, self.width)


def level_factor(latent_h: int, latent_w: int, h: int, w: int) -> int:
    """Power-of-two downscale between the latent and an attention grid.

    Odd latent sizes are padded by every strided conv (65 -> 33 -> 17), so the raw ratio is not an
    exact power of two; rounding its log2 recovers the level.
    """
    ratio = max(latent_h / max(h, 1), latent_w / max(w, 1))
    return 2 ** max(0, int(round(math.log2(ratio))))


def grid_for_tokens(n_tokens: int, latent_h: int, latent_w: int) -> tuple:
    """Find the (h, w) grid with n_tokens cells among the UNet levels of this latent."""
    h, w = latent_h, latent_w
    for _ in range(12):
        if h * w == n_tokens:
            return h, w
        h, w = (h + 1) // 2, (w + 1) // 2
    side = int(round(math.sqrt(n_tokens)))
    if side * side == n_tokens:
        return side, side
    raise ValueError(f"cannot infer the spatial grid of {n_tokens} tokens for a {latent_h}x{latent_w} latent")


@dataclass(frozen=True)
class LayerSelector:
    """Which attention calls a controller acts on.

    ``downscales``: image downscale factors to act at (default: 32, i.e. 16x16 at 512 px).
    ``cross`` / ``self_attn``: which kinds of attention.
    ``sigma_max`` / ``sigma_min``: act only while sigma is within [sigma_min, sigma_max]
    (the node converts start/end percent to these with the model's own schedule).
    """

    downscales: tuple = (32,)
    cross: bool = True
    self_attn: bool = False
    sigma_max: float = float("inf")
    sigma_min: float = 0.0

    def matches_layer(self, call: AttentionCall) -> bool:
        if call.is_cross and not self.cross:
            return False
        if not call.is_cross and not self.self_attn:
            return False
        return call.image_downscale in self.downscales

    def matches_time(self, call: AttentionCall) -> bool:
        if call.sigma is None:
            return True
        s = float(call.sigma.reshape(-1)[0])
        # a small tolerance: percent_to_sigma and the sampler's schedule round differently
        return self.sigma_min * (1 - 1e-5) <= s <= self.sigma_max * (1 + 1e-5)

    def matches(self, call: AttentionCall) -> bool:
        return self.matches_layer(call) and self.matches_time(call)


class AttentionController:
    """Base class. ``__call__`` returns the attention output for the call.

    The default passes the call through untouched. Subclasses override :meth:`modify`; the
    selector decides whether they run at all, so a controller never needs to check layers.
    """

    selector: LayerSelector = LayerSelector()

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        if self.selector.matches(call):
            return self.modify(call)
        return call.attend(call.q, call.k, call.v)

    def modify(self, call: AttentionCall) -> torch.Tensor:
        return call.attend(call.q, call.k, call.v)

    # ComfyUI deep-copies model_options on every clone(); a controller is shared state
    # (capture buffers, cached tensors), so copies must be the same object.
    def __deepcopy__(self, memo):
        return self


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*D] -> [B, H, N, D]"""
    b, n, hd = t.shape
    return t.reshape(b, n, heads, hd // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, N, H*D]"""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def scaled_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention logits Q K^T / sqrt(d) in fp32: [B, H, Nq, Nk]."""
    qh = split_heads(q, heads).float()
    kh = split_heads(k, heads).float()
    return (qh @ kh.transpose(-1, -2)) * (qh.shape[-1] ** -0.5)


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    return scaled_scores(q, k, heads).softmax(dim=-1)


def apply_probs(probs: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """probs [B, H, Nq, Nk] x v [B, Nk, H*D] -> [B, Nq, H*D] in v's dtype."""
    vh = split_heads(v, heads).float()
    return merge_heads(probs @ vh).to(v.dtype)


def chunk_branches(call: AttentionCall):
    """Yield (branch id, slice of the batch) for each conditioning chunk."""
    size = call.chunk_size
    for i, branch in enumerate(call.branches):
        yield branch, slice(i * size, (i + 1) * size)
