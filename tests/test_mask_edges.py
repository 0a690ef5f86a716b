"""Binary masks at each patched layer's grid (CAMILA modulates with binary masks), and what that
buys: with the shipped default every pixel row is one attention call over modified keys/values,
so another pack's attention replace composes exactly, whatever it does.

The references are written from the rule, with plain loops: a grid cell belongs to mask k when
mask k covers at least half of the cell's area; CAMILA's per-token mask M[p, j] is then 0 or 1,
and softmax((X*M + Y*(1-M))/sqrt d) with values mixed the same way is exactly an attention over
keys/values taken token by token from the prompt (M = 1) or the empty prompt (M = 0). "Their
replace on our modified keys/values" is the other pack's function applied to those, row by row.
"""

import math

import pytest
import torch

from contextedit.attention_patches import MaskModulation
from contextedit.attention_patches.controller import AttentionCall

HEADS, HEAD_DIM, CTX, TOKENS = 2, 8, 32, 12
GRID = (4, 4)          # the layer's grid
MASK_PX = (16, 16)     # masks at 4x the grid: every cell is 4x4 mask pixels
# 12 tokens: 0 start, 1-3 instruction 1, 4 a separator, 5-7 instruction 2, 8-11 end/padding
TOKEN_SETS = [[1, 2, 3], [5, 6, 7]]
SPECIAL = [0, 8, 9, 10, 11]
OWNER_OF = [None, 0, 0, 0, None, 1, 1, 1, None, None, None, None]


def soft_edged_masks():
    """Two masks whose edges cut through grid cells: covered fractions 1/4, 1/2, 3/4 and 1."""
    m = torch.zeros(2, *MASK_PX)
    m[0, :, :7] = 1.0            # columns 0-6: cells of grid column 1 are 3/4 covered (inside)
    m[0, 12:, 7:9] = 1.0         # fills cell (3, 1), covers 1/4 of cell (3, 2) (outside)
    m[1, :6, 10:] = 1.0          # cells (0, 2) and (1, 3) 1/2 covered (inside), (1, 2) 1/4 (outside)
    m[1, 13:, 14:] = 1.0         # 6/16 of cell (3, 3) (outside)
    return m


def cell_membership(masks, grid):
    """[K][h*w] 0/1 per the rule: covered fraction of the cell >= 1/2, by counting pixels."""
    k_count, mh, mw = masks.shape
    h, w = grid
    sh, sw = mh // h, mw // w
    out = []
    for k in range(k_count):
        row = []
        for y in range(h):
            for x in range(w):
                covered = sum(float(masks[k, y * sh + a, x * sw + b]) for a in range(sh) for b in range(sw))
                row.append(1.0 if covered / (sh * sw) >= 0.5 else 0.0)
        out.append(row)
    return out


def per_token_mask(member, p):
    """CAMILA's per-token M[p, j]; tokens of no instruction follow the union of the masks."""
    union = max(member[k][p] for k in range(len(member)))
    return [union if OWNER_OF[j] is None else member[OWNER_OF[j]][p] for j in range(TOKENS)]


class ScalingPack:
    """Another pack's attn2 replace: its attention scaled by 0.5 (written with plain per-head math)."""

    def __call__(self, q, k, v):
        return 0.5 * attention(q, k, v, temperature=1.0)


class TemperaturePack:
    """Another pack's attn2 replace: softmax temperature 2 (logits doubled)."""

    def __call__(self, q, k, v):
        return attention(q, k, v, temperature=2.0)


def attention(q, k, v, temperature):
    b, n, hd = q.shape
    d = hd // HEADS
    out = torch.zeros(b, n, hd, dtype=q.dtype)
    for h in range(HEADS):
        hs = slice(h * d, (h + 1) * d)
        logits = temperature * (q[..., hs] @ k[..., hs].transpose(-1, -2)) / math.sqrt(d)
        out[..., hs] = logits.softmax(dim=-1) @ v[..., hs]
    return out


def layer_call(attend, seed=5):
    g = torch.Generator().manual_seed(seed)
    hd = HEADS * HEAD_DIM
    wk, wv = torch.randn(CTX, hd, generator=g) / CTX ** 0.5, torch.randn(CTX, hd, generator=g) / CTX ** 0.5
    prompt, empty = torch.randn(1, TOKENS, CTX, generator=g), torch.randn(1, TOKENS, CTX, generator=g)
    q = torch.randn(2, GRID[0] * GRID[1], hd, generator=g)
    call = AttentionCall(q=q, k=(prompt @ wk).expand(2, -1, -1), v=(prompt @ wv).expand(2, -1, -1), heads=HEADS,
                         is_cross=True, height=GRID[0], width=GRID[1], latent_height=16, latent_width=16,
                         place=("input", 7, 0), branches=[0], attend=attend,
                         project_context=lambda ctx: (ctx @ wk, ctx @ wv))
    return call, prompt, empty, (wk, wv)


def their_replace_on_our_keys(pack, call, prompt, empty, proj, masks):
    """Row by row: keys/values token j from the prompt where M[p, j] = 1, else from the empty
    prompt; the other pack's function on those; row p of its result."""
    wk, wv = proj
    k_t, v_t, k_0, v_0 = prompt @ wk, prompt @ wv, empty @ wk, empty @ wv
    member = cell_membership(masks, GRID)
    rows = []
    for p in range(GRID[0] * GRID[1]):
        m = per_token_mask(member, p)
        k = torch.stack([k_t[0, j] if m[j] == 1.0 else k_0[0, j] for j in range(TOKENS)])[None]
        v = torch.stack([v_t[0, j] if m[j] == 1.0 else v_0[0, j] for j in range(TOKENS)])[None]
        rows.append(pack(call.q[:, p:p + 1], k.expand(2, -1, -1), v.expand(2, -1, -1)))
    return torch.cat(rows, dim=1)


@pytest.mark.parametrize("pack", [ScalingPack(), TemperaturePack()], ids=["scaling", "temperature"])
def test_default_binary_masks_compose_exactly_with_any_pack(pack):
    masks = soft_edged_masks()
    call, prompt, empty, proj = layer_call(pack)
    ctrl = MaskModulation(masks, empty, token_sets=TOKEN_SETS, special_tokens=SPECIAL, prompt_context=prompt)
    got = ctrl(call)
    want = their_replace_on_our_keys(pack, call, prompt, empty, proj, masks)
    member = cell_membership(masks, GRID)
    assert any(0 < v < 1 for v in ctrl_area_fractions(masks)), "the masks must have soft edges at the grid"
    assert sum(member[0]) and sum(member[1]) and not all(member[0][p] or member[1][p] for p in range(16))
    # the same fp32 attention, once through the controller's grouped inner calls and once row by row
    # here: only summation-order rounding of O(1) values over 12 tokens separates them (1e-6)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert ctrl.rows_as_delta == 0 and ctrl.rows_through_inner == 16


def ctrl_area_fractions(masks):
    """Covered fraction of every cell of every mask (to show the test's masks are soft-edged)."""
    k_count, mh, mw = masks.shape
    sh, sw = mh // GRID[0], mw // GRID[1]
    return [float(masks[k, y * sh:(y + 1) * sh, x * sw:(x + 1) * sw].mean())
            for k in range(k_count) for y in range(GRID[0]) for x in range(GRID[1])]


def test_the_binary_rule_is_half_the_cell():
    """A cell belongs to a mask exactly when the mask covers at least half of it (the controller's
    per-layer binary mask equals the pixel-counting loop's); the soft option keeps the fraction."""
    from contextedit.attention_patches.masked_attention import layer_masks

    masks = soft_edged_masks()
    member = torch.tensor(cell_membership(masks, GRID))
    assert torch.equal(layer_masks(masks, *GRID, "binary").reshape(2, -1), member)
    # soft edges keep the covered fraction (area average)
    fractions = torch.tensor(ctrl_area_fractions(masks)).reshape(2, -1)
    # an average of 16 values in {0, 1}: exact in fp32 up to one rounding
    torch.testing.assert_close(layer_masks(masks, *GRID, "soft").reshape(2, -1), fractions, atol=1e-7, rtol=0)
