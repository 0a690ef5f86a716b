"""Context-aware confinement on joint (text + image) attention: which query sees which key.

DiT editing models (FLUX.1 Kontext, Qwen-Image-Edit) run one attention over the sequence
``[text | noisy image | reference image]``. The text is built from separately encoded segments
(:class:`TextSegments`): an optional shared part P, the image-only (empty instruction) segment S0
and one segment S_k per instruction. CAMILA's confinement then reads, per query:

- image and reference queries inside instruction k's mask see S_k, P and every image/reference
  token (inside several masks: all of their segments); outside every mask they see S0, P and every
  image/reference token (group 0). A token is inside a mask when the mask covers at least half of
  its cell;
- the text queries of S_g see what the pixels of group g see;
- the shared part's text queries see P and every image/reference token (no segment, so nothing
  of any instruction reaches P and, through it, the pixels outside the masks);
- rows of other branches (uncond) are not touched at all.

:func:`grouped_attention` computes this *split*: one unmasked attention call per group on the
group's queries and keys, through whatever attention function it is given (so flash / sage /
xformers keep working and no L x L mask is ever built). :func:`dense_allowed` builds the same rule
as a boolean [L, L] mask; :func:`dense_attention` uses it and is the reference in tests.

Pure torch; ComfyUI is handled in ``comfy_dit_adapter``.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Span = tuple[int, int]


@dataclass(frozen=True)
class TextSegments:
    """Where each separately encoded text segment sits in the conditioning's text tokens.

    ``segments[0]`` is the image-only segment S0, ``segments[k]`` instruction k's; ``shared`` the
    spans of the shared part P (may be empty). Spans are ``(start, end)`` in the *real* text of
    ``length`` tokens; a call's text may repeat it (ComfyUI pads batched contexts by repetition),
    so index ``i`` maps to ``i % length``.

    ``offsets`` (one per segment, default all 0): where segment g's first token sits in its
    standalone encoding. A segment encoded after a shared prefix (Qwen-Image-Edit: the picture
    tokens P, then the instruction) has offset ``len(P)``: its standalone sequence is ``[P | S_g]``.
    """

    segments: tuple[Span, ...]
    shared: tuple[Span, ...] = ()
    length: int = 0
    offsets: tuple[int, ...] = ()

    def __post_init__(self):
        spans = list(self.segments) + list(self.shared)
        if len(self.segments) < 1:
            raise ValueError("TextSegments needs at least the image-only segment")
        if self.offsets and (len(self.offsets) != len(self.segments) or min(self.offsets) < 0):
            raise ValueError(f"offsets {self.offsets}: need one offset >= 0 per segment ({len(self.segments)})")
        covered = torch.zeros(self.length, dtype=torch.int64)
        for a, b in spans:
            if not 0 <= a <= b <= self.length:
                raise ValueError(f"span {(a, b)} outside the text of {self.length} tokens")
            covered[a:b] += 1
        if self.length and (covered != 1).any():
            raise ValueError("the segment and shared spans must tile the text exactly once")

    @property
    def instructions(self) -> int:
        return len(self.segments) - 1

    def token_owner(self) -> torch.Tensor:
        """[length] long: g for a token of S_g, -1 for a shared token."""
        owner = torch.full((self.length,), -1, dtype=torch.long)
        for g, (a, b) in enumerate(self.segments):
            owner[a:b] = g
        return owner

    def position_in_segment(self) -> torch.Tensor:
        """[length] long: each token's position in its standalone encoding (its index inside its own
        span, plus the segment's offset)."""
        pos = torch.zeros(self.length, dtype=torch.long)
        offsets = self.offsets or (0,) * len(self.segments)
        for (a, b), off in zip(self.segments, offsets):
            pos[a:b] = torch.arange(b - a) + off
        for a, b in self.shared:
            pos[a:b] = torch.arange(b - a)
        return pos

    @staticmethod
    def from_lengths(shared: int, segment_lengths: Sequence[int], offsets: Sequence[int] = ()) -> "TextSegments":
        """Layout ``[P | S0 | S1 | ... | SK]`` from the token count of each part."""
        spans, start = [], shared
        for n in segment_lengths:
            spans.append((start, start + n))
            start += n
        return TextSegments(tuple(spans), ((0, shared),) if shared else (), start, tuple(offsets))


@dataclass(frozen=True)
class TokenLayout:
    """Token counts of one joint-attention call: ``[text | image grid | reference grids...]``."""

    text: int
    image_hw: tuple[int, int]
    refs_hw: tuple[tuple[int, int], ...] = ()

    @property
    def image(self) -> int:
        return self.image_hw[0] * self.image_hw[1]

    @property
    def total(self) -> int:
        return self.text + self.image + sum(h * w for h, w in self.refs_hw)


def pixel_membership(masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[K, h*w] bool: token cell c of an h x w grid belongs to mask k when mask k covers at least
    half of the cell's area (the SD path binarises its masks by the same rule). ``masks`` is
    [K, H, W] in instruction order, values in 0..1."""
    h, w = hw
    if masks.shape[0] == 0:
        return torch.zeros(0, h * w, dtype=torch.bool)
    # area average: the share of each token cell a mask covers
    cover = F.interpolate(masks.float().unsqueeze(0), size=(h, w), mode="area")[0]
    return (cover >= 0.5).reshape(masks.shape[0], -1)


@dataclass
class Group:
    queries: torch.Tensor      # long indices into the joint sequence
    text_keys: torch.Tensor    # the text tokens this group sees
    visual_from: int           # ... and every token from here on (all image / reference tokens):
    visual_count: int          # that many

    @property
    def keys(self) -> torch.Tensor:
        tail = torch.arange(self.visual_from, self.visual_from + self.visual_count, device=self.text_keys.device)
        return torch.cat([self.text_keys, tail])


def build_groups(segments: TextSegments, layout: TokenLayout, masks: torch.Tensor,
                 device=None) -> list[Group]:
    """The query groups of one call and the keys each group sees (see the module docstring).

    A group is a set of instructions: an image/reference token in several masks sees all of their
    segments (as an SD pixel in two masks sees both instructions), one in no mask sees S0; the text
    queries of S_k join the group {k}, those of S0 the empty group."""
    if layout.text % max(segments.length, 1) != 0:
        raise ValueError(f"the call has {layout.text} text tokens, not a multiple of the "
                         f"{segments.length} the segments were encoded to")
    owner = segments.token_owner().repeat(layout.text // segments.length)
    n_instr = segments.instructions
    if masks.shape[0] != n_instr:
        raise ValueError(f"{masks.shape[0]} masks for {n_instr} instruction segments")
    visual = [pixel_membership(masks, layout.image_hw)]
    for hw in layout.refs_hw:
        # reference tokens follow the mask when they cover the same grid (the edited image
        # itself); any other reference is context for everyone's image-only group
        visual.append(pixel_membership(masks, hw) if tuple(hw) == tuple(layout.image_hw)
                      else torch.zeros(n_instr, hw[0] * hw[1], dtype=torch.bool))
    visual = torch.cat(visual, dim=1)                                    # [K, V]
    text_idx = torch.arange(layout.text)
    shared_idx = text_idx[owner == -1]

    members = {}   # instruction set (tuple of bools) -> query indices, in first-seen order
    for g in range(n_instr + 1):
        key = tuple(k + 1 == g for k in range(n_instr))
        members.setdefault(key, []).append(text_idx[owner == g])
    if visual.shape[1]:
        patterns, inverse = torch.unique(visual.t(), dim=0, return_inverse=True)
        visual_idx = torch.arange(layout.text, layout.text + visual.shape[1])
        for p in range(patterns.shape[0]):
            members.setdefault(tuple(bool(b) for b in patterns[p]), []).append(visual_idx[inverse == p])

    groups = []
    for key, parts in members.items():
        queries = torch.cat(parts)
        if queries.numel() == 0:
            continue
        seen = [k + 1 for k in range(n_instr) if key[k]] or [0]
        text_keys = text_idx[torch.isin(owner, torch.tensor(seen + [-1]))]
        groups.append(Group(queries.to(device), text_keys.to(device), layout.text, visual.shape[1]))
    if shared_idx.numel():
        groups.append(Group(shared_idx.to(device), shared_idx.to(device), layout.text, visual.shape[1]))
    return groups


def dense_allowed(groups: list[Group], total: int, device=None) -> torch.Tensor:
    """[total, total] bool: True where a query may attend to a key (the reference rule)."""
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    for grp in groups:
        allowed[grp.queries.unsqueeze(1).to(device), grp.keys.unsqueeze(0).to(device)] = True
    return allowed


def _scatter(out: torch.Tensor | None, part: torch.Tensor, idx: torch.Tensor, total: int) -> torch.Tensor:
    """Place a group's output rows (dim -2 for [B, L, C], dim 2 for [B, H, L, D])."""
    dim = 1 if part.dim() == 3 else 2
    if out is None:
        shape = list(part.shape)
        shape[dim] = total
        out = part.new_empty(shape)
    return out.index_copy_(dim, idx, part)


def grouped_attention(attend: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      groups: list[Group]) -> torch.Tensor:
    """Split computation: ``attend(q_g, k_g, v_g)`` once per group (q/k/v are [B, H, L, D]);
    the outputs, in whatever layout ``attend`` returns ([B, L, H*D] or [B, H, L, D]), are put back
    in sequence order. Every query must belong to exactly one group."""
    out = None
    total = q.shape[2]
    covered = 0
    for grp in groups:
        # keys: the group's text tokens, then the whole visual tail (one contiguous block)
        k_g = torch.cat([k.index_select(2, grp.text_keys), k[:, :, grp.visual_from:]], dim=2)
        v_g = torch.cat([v.index_select(2, grp.text_keys), v[:, :, grp.visual_from:]], dim=2)
        part = attend(q.index_select(2, grp.queries), k_g, v_g)
        out = _scatter(out, part, grp.queries, total)
        covered += grp.queries.numel()
    if covered != total:
        raise ValueError(f"the groups cover {covered} of {total} queries")
    return out


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Reference: one masked softmax attention over the whole sequence ([B, H, L, D] in and out)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
