"""Confinement on joint attention (attention_patches/joint_attention.py).

The reference here is written from the rule, not from the module's helpers: for every query a
plain loop decides which keys it may see (image tokens by the share of their cell each mask
covers, text tokens by the segment they were encoded in), then a plain softmax over those keys.
"""

import math

import pytest
import torch
from contextedit.attention_patches.joint_attention import (
    TextSegments,
    TokenLayout,
    build_groups,
    dense_allowed,
    dense_attention,
    grouped_attention,
)


def loop_reference(q, k, v, seg_of_text, masks, layout, refs_follow):
    """Attention of every query over the keys the rule allows, by plain loops.

    seg_of_text[i]: segment of text token i (0 = image-only, k = instruction k, -1 = shared);
    masks [K, H, W] at 2x the token grid (each token cell is 2x2 mask pixels);
    refs_follow[r]: whether reference grid r follows the masks (it has the image's grid).
    A cell belongs to every mask covering at least half of it and sees the segments of all of
    them (as the SD path's pixel in two masks sees both instructions); a cell in no mask sees S0.
    """
    B, H, L, D = q.shape
    h, w = layout.image_hw

    def group_of_cell(ch, cw, hh, ww):
        covering = set()
        for kk in range(masks.shape[0]):
            m = masks[kk]
            sh, sw = m.shape[0] // hh, m.shape[1] // ww
            cover = sum(float(m[ch * sh + a, cw * sw + b]) for a in range(sh) for b in range(sw)) / (sh * sw)
            if cover >= 0.5:
                covering.add(kk + 1)
        return frozenset(covering)

    group = []  # instructions each query sees (frozenset; empty = the image-only S0); "P" = shared
    for i in range(layout.text):
        s = seg_of_text[i % len(seg_of_text)]
        group.append("P" if s == -1 else frozenset({s}) - {0})
    for ch in range(h):
        for cw in range(w):
            group.append(group_of_cell(ch, cw, h, w))
    for r, (rh, rw) in enumerate(layout.refs_hw):
        for ch in range(rh):
            for cw in range(rw):
                group.append(group_of_cell(ch, cw, rh, rw) if refs_follow[r] else frozenset())

    def sees(gq, j):
        if j >= layout.text:          # every image / reference key
            return True
        s = seg_of_text[j % len(seg_of_text)]
        if s == -1:                   # the shared part is seen by everyone
            return True
        if gq == "P":                 # shared queries see no segment
            return False
        return s in gq if s >= 1 else not gq  # S0 only by queries in no mask

    out = torch.zeros(B, H, L, D, dtype=torch.float64)
    scale = 1.0 / math.sqrt(D)
    for b in range(B):
        for hd in range(H):
            for i in range(L):
                keys = [j for j in range(L) if sees(group[i], j)]
                logits = [float(q[b, hd, i] @ k[b, hd, j]) * scale for j in keys]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                total = sum(weights)
                for wgt, j in zip(weights, keys):
                    out[b, hd, i] += (wgt / total) * v[b, hd, j].double()
    return out.float(), group


def setup(shared=2, seg_lengths=(3, 2, 4), image_hw=(3, 4), refs_hw=((3, 4),), B=2, H=2, D=8, repeat=1, seed=0,
          overlap=False):
    segments = TextSegments.from_lengths(shared, list(seg_lengths))
    seg_of_text = [-1] * shared + [g for g, n in enumerate(seg_lengths) for _ in range(n)]
    layout = TokenLayout(text=segments.length * repeat, image_hw=image_hw, refs_hw=tuple(refs_hw))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, layout.total, D, generator=g) for _ in range(3))
    K = len(seg_lengths) - 1
    mh, mw = 2 * image_hw[0], 2 * image_hw[1]
    masks = torch.zeros(K, mh, mw)
    masks[0, :mh // 2, : mw // 2] = 1.0            # top-left block of cells
    if K > 1:
        masks[1, mh // 2:, mw // 2:] = 1.0          # bottom-right block
        masks[1, 0, mw - 1] = 1.0                   # a quarter of one cell: below half, stays outside
        if overlap:                                 # mask 2 also covers the top-left block's bottom row
            masks[1, mh // 2 - 2:mh // 2, : mw // 2] = 1.0
            masks[0, mh // 2 - 2:mh // 2 - 1, mw // 2:] = 1.0   # and mask 1 half of some of mask 2's cells
    return segments, seg_of_text, layout, q, k, v, masks


def attend_bld(q, k, v):
    """An attention backend that returns ComfyUI's [B, L, H*D] layout (skip_output_reshape=False)."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


@pytest.mark.parametrize("case", [
    {},                                               # shared + 2 instructions + a same-grid reference
    {"shared": 0, "seg_lengths": (2, 3)},                   # no shared part, one instruction
    {"image_hw": (2, 5), "refs_hw": ((2, 5), (3, 3))},      # non-square; a second reference of another size
    {"B": 1, "repeat": 2},                                  # text repeated to a batch's common length
    {"overlap": True},                                      # cells in both masks see both instructions
])
def test_split_equals_the_rule_and_the_dense_reference(case):
    segments, seg_of_text, layout, q, k, v, masks = setup(**case)
    refs_follow = [tuple(hw) == tuple(layout.image_hw) for hw in layout.refs_hw]
    expected, group = loop_reference(q, k, v, seg_of_text, masks, layout, refs_follow)
    assert len({g for g in group if g != "P"}) >= 2  # the case really has several groups
    if case.get("overlap"):
        assert frozenset({1, 2}) in group[layout.text:]  # ... and cells in two masks

    groups = build_groups(segments, layout, masks)
    split = grouped_attention(attend_bld, q, k, v, groups)
    B, H, L, D = q.shape
    split = split.reshape(B, L, H, D).transpose(1, 2)
    dense = dense_attention(q, k, v, dense_allowed(groups, L))

    # Split and dense compute the same softmax over the same keys; they differ only in fp32
    # summation order (dense adds exact zeros for masked keys, split sums fewer terms). Values
    # are O(1), sums run over <= ~40 keys: ~40 x 6e-8 (fp32 eps/2) ~ 2.4e-6 worst case, so
    # 1e-5 relative to the output's scale bounds it with margin (the goal).
    scale = expected.abs().max()
    assert (split - dense).abs().max() <= 1e-5 * scale
    # The loop reference accumulates in fp64 from fp32 inputs; the fp32 paths differ from it
    # by the same rounding (~40 terms x 6e-8 of O(1) values), within 1e-5 of the output scale.
    assert (split - expected).abs().max() <= 1e-5 * scale
    assert (dense - expected).abs().max() <= 1e-5 * scale


def test_outputs_in_bhld_layout_and_batch_rows_are_independent():
    segments, _, layout, q, k, v, masks = setup(B=3)
    groups = build_groups(segments, layout, masks)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    batched = grouped_attention(sdpa, q, k, v, groups)
    assert batched.shape == q.shape
    for b in range(3):
        single = grouped_attention(sdpa, q[b:b + 1], k[b:b + 1], v[b:b + 1], groups)
        # the same per-row computation; batching can change the kernel's blocking only: fp32
        # rounding of ~40-term sums of O(1) values, far below 1e-5
        assert torch.allclose(batched[b:b + 1], single, rtol=0, atol=1e-5)


def test_outside_queries_never_depend_on_instruction_tokens():
    segments, seg_of_text, layout, q, k, v, masks = setup()
    groups = build_groups(segments, layout, masks)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    before = grouped_attention(sdpa, q, k, v, groups)
    k2, v2 = k.clone(), v.clone()
    instr = [i for i, s in enumerate(seg_of_text) if s >= 1]
    k2[:, :, instr] = torch.randn_like(k2[:, :, instr]) * 10
    v2[:, :, instr] = torch.randn_like(v2[:, :, instr]) * 10
    after = grouped_attention(sdpa, q, k2, v2, groups)
    _, group = loop_reference(q[:1, :1], k[:1, :1], v[:1, :1], seg_of_text, masks, layout,
                              [True] * len(layout.refs_hw))
    outside = [i for i in range(layout.total) if group[i] in (frozenset(), "P")]
    inside = [i for i in range(layout.text, layout.total) if group[i] not in (frozenset(), "P")]
    assert outside and inside
    # outside queries attend over exactly the same keys and values: bit-identical by construction
    assert torch.equal(before[:, :, outside], after[:, :, outside])
    assert not torch.equal(before[:, :, inside], after[:, :, inside])


def test_bad_layouts_are_refused():
    segments = TextSegments.from_lengths(1, [2, 2])
    with pytest.raises(ValueError, match="multiple"):
        build_groups(segments, TokenLayout(text=7, image_hw=(2, 2)), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="masks"):
        build_groups(segments, TokenLayout(text=5, image_hw=(2, 2)), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="tile"):
        TextSegments(((0, 2), (1, 3)), (), 3)


def standalone_positions(parts):
    """The rule, written out: ``parts`` is the joined text in order, each ``(kind, n, prefix)``;
    a shared part's tokens sit at 0..n-1 of their own encoding; a segment encoded after a prefix of
    ``prefix`` tokens (its standalone sequence is [prefix | segment]) has its tokens at prefix + i."""
    out = []
    for _kind, n, prefix in parts:
        for i in range(n):
            out.append(prefix + i)
    return out


@pytest.mark.parametrize("shared,lengths,prefixed", [(0, [3, 4], False), (2, [3, 4, 1], False),
                                                     (5, [3, 4], True), (6, [5, 2, 7], True)])
def test_positions_are_where_each_standalone_encoding_puts_the_token(shared, lengths, prefixed):
    offsets = [shared] * len(lengths) if prefixed else []
    seg = TextSegments.from_lengths(shared, lengths, offsets)
    parts = ([("P", shared, 0)] if shared else []) + [("S", n, shared if prefixed else 0) for n in lengths]
    assert seg.position_in_segment().tolist() == standalone_positions(parts)
    assert seg.token_owner().tolist() == [-1] * shared + [g for g, n in enumerate(lengths) for _ in range(n)]


def test_offsets_must_match_the_segments():
    with pytest.raises(ValueError, match="offset"):
        TextSegments.from_lengths(2, [3, 4], [2])
    with pytest.raises(ValueError, match="offset"):
        TextSegments.from_lengths(2, [3, 4], [2, -1])


def test_overlapping_masks_sd_and_dit_agree():
    """Where two masks overlap, a pixel sees both instructions on the DiT path (both segments) and
    on the SD path (per-token: both instructions' words from the prompt; per-segment: both
    segments), each compared with the rule written out: a cell belongs to every mask covering at
    least half of it."""
    from contextedit.attention_patches import MaskModulation

    masks = torch.zeros(2, 8, 8)           # a 4x4 grid of 2x2 cells
    masks[0, :, :5] = 1.0                  # columns 0-4: grid columns 0-1 in, column 2 half (in)
    masks[1, :, 4:] = 1.0                  # columns 4-7: grid column 2 in, columns 2-3
    masks[1, 6:, :] = 1.0                  # and the bottom grid row everywhere
    rule = []
    for cy in range(4):
        for cx in range(4):
            rule.append({k + 1 for k in range(2)
                         if float(masks[k, 2 * cy:2 * cy + 2, 2 * cx:2 * cx + 2].mean()) >= 0.5})
    assert {1, 2} in rule and {1} in rule and {2} in rule

    # DiT: which instruction segments each image token's group sees
    segments = TextSegments.from_lengths(0, [2, 3, 3])     # S0, S1, S2
    layout = TokenLayout(text=segments.length, image_hw=(4, 4))
    owner = segments.token_owner()
    dit = [None] * 16
    for grp in build_groups(segments, layout, masks):
        seen = {int(owner[j]) for j in grp.text_keys} - {0, -1}
        for i in grp.queries.tolist():
            if i >= layout.text:
                dit[i - layout.text] = seen
    assert dit == rule

    # SD per-token: the instructions whose words take the prompt's keys (M = 1) at each pixel
    sets = [[1, 2], [3, 4, 5]]
    empty = torch.zeros(1, 8, 4)
    ctrl = MaskModulation(masks, empty, token_sets=sets, prompt_context=empty, special_tokens=[0, 6, 7])
    flat = ctrl._pixel_masks(4, 4, "cpu")
    weight, _, _ = ctrl.token_masks(flat, 8)
    assert [{k + 1 for k in range(2) if bool((weight[p, sets[k]] == 1).all())} for p in range(16)] == rule

    # SD per-segment: the segments each pixel attends to
    seg_sets = [list(range(0, 4)), list(range(4, 8))]
    ctrl = MaskModulation(masks, torch.zeros(1, 4, 4), token_sets=seg_sets, routing="per-segment",
                          prompt_context=torch.zeros(1, 8, 4))
    _, vis, _ = ctrl.token_masks(ctrl._pixel_masks(4, 4, "cpu"), 8)
    assert [{k + 1 for k in range(2) if bool((vis[p, seg_sets[k]] == 1).all())} for p in range(16)] == rule
