"""Mask modulation (CAMILA) and capture on a tiny diffusers UNet, against explicit references."""

import math

import pytest
import torch
from diffusers import UNet2DConditionModel

from contextedit.attention_patches import AttentionController, LayerSelector, MaskModulation, ModulationMode
from contextedit.attention_patches import TokenRouting
from contextedit.attention_patches.capture import AttentionCapture
from contextedit.attention_patches.controller import AttentionCall, level_factor, scaled_scores
from contextedit.attention_patches.diffusers_adapter import DiffusersHost
from contextedit.attention_patches.masked_attention import resize_masks

from fixtures.tiny_mag import CTX, TOKENS, sd_like_unet  # one tiny SD1-layout UNet for all tests
ALL_LEVELS = (8, 16, 32, 64)


def sdxl_like_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=CTX, attention_head_dim=4, norm_num_groups=8,
    ).eval()


@pytest.fixture(scope="module")
def unet():
    return sd_like_unet()


def contexts(seed=1):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(1, TOKENS, CTX, generator=g)
    empty = torch.randn(1, TOKENS, CTX, generator=g)
    other = torch.randn(1, TOKENS, CTX, generator=g)
    return prompt, empty, other


def latent(b=1, h=16, w=16, seed=2):
    return torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))


def run(unet, x, ctx, controller=None, branches=(0,)):
    t = torch.tensor([500] * x.shape[0])
    with torch.no_grad():
        if controller is None:
            return unet(x, t, encoder_hidden_states=ctx).sample
        with DiffusersHost(unet, branches=branches).attach(controller):
            return unet(x, t, encoder_hidden_states=ctx).sample


class Recorder(AttentionController):
    """Runs another controller and keeps its output of every selected call."""

    def __init__(self, inner, selector):
        self.inner, self.selector, self.calls = inner, selector, []

    def modify(self, call):
        out = self.inner(call)
        self.calls.append((call, out))
        return out


def square_mask(n=1, size=64, box=(0, 0, 32, 32)):
    m = torch.zeros(n, size, size)
    x1, y1, x2, y2 = box
    m[:, y1:y2, x1:x2] = 1.0
    return m


@pytest.mark.parametrize("mode", list(ModulationMode))
def test_all_ones_mask_equals_unpatched(unet, mode):
    prompt, empty, _ = contexts()
    x = latent()
    ctrl = MaskModulation(torch.ones(1, 64, 64), empty, prompt_context=prompt, mode=mode,
                          selector=LayerSelector(downscales=ALL_LEVELS))
    patched = run(unet, x, prompt, ctrl)
    assert ctrl.calls_modified > 0
    # M = 1 keeps the host's own attention result; the rest of the UNet is the same fp32 graph: 1e-5
    torch.testing.assert_close(patched, run(unet, x, prompt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", list(ModulationMode))
def test_all_zeros_mask_equals_empty_text_in_every_layer(unet, mode):
    """With M = 0 everywhere every cross-attention sees only the image-only (empty) context, so
    the whole UNet equals the unpatched UNet run on the empty-prompt encoding."""
    prompt, empty, _ = contexts()
    x = latent()
    ctrl = MaskModulation(torch.zeros(1, 64, 64), empty, prompt_context=prompt, mode=mode,
                          selector=LayerSelector(downscales=ALL_LEVELS))
    patched = run(unet, x, prompt, ctrl)
    # the same fp32 attention over the empty keys, through the host's call instead of its own: 1e-5
    torch.testing.assert_close(patched, run(unet, x, empty), atol=1e-5, rtol=1e-5)
    # the prompt's effect on the tiny UNet's O(1) output is far above 1e-3
    assert not torch.allclose(patched, run(unet, x, prompt), atol=1e-3)


def test_default_patches_only_the_one_32nd_layers(unet):
    prompt, empty, _ = contexts()
    sel = LayerSelector()
    rec = Recorder(MaskModulation(torch.zeros(1, 64, 64), empty, prompt_context=prompt, selector=sel), sel)
    run(unet, latent(h=16, w=16), prompt, rec)
    places = sorted({c.place.split(".attn2")[0] for c, _ in rec.calls})
    assert places == [
        "down_blocks.2.attentions.0.transformer_blocks.0",
        "up_blocks.1.attentions.0.transformer_blocks.0",
        "up_blocks.1.attentions.1.transformer_blocks.0",
    ]
    assert all((c.height, c.width) == (4, 4) for c, _ in rec.calls)


def test_sdxl_layout_gets_its_own_one_32nd_layers():
    unet = sdxl_like_unet()
    prompt, empty, _ = contexts()
    sel = LayerSelector()
    rec = Recorder(MaskModulation(torch.zeros(1, 64, 64), empty, prompt_context=prompt, selector=sel), sel)
    run(unet, latent(h=16, w=16), prompt, rec)  # 128 px image: 1/32 -> 4x4 = the deepest level
    places = sorted({c.place.split(".attn2")[0] for c, _ in rec.calls})
    assert "mid_block.attentions.0.transformer_blocks.0" in places
    assert "down_blocks.2.attentions.0.transformer_blocks.1" in places  # depth-2 block: both indices
    assert not any(p.startswith("down_blocks.1") for p in places)


@pytest.mark.parametrize("hw", [(16, 16), (13, 9), (10, 22)])
def test_layer_level_is_found_for_any_latent_size(hw):
    h, w = hw
    grids = [(h, w)]
    for _ in range(3):
        grids.append(((grids[-1][0] + 1) // 2, (grids[-1][1] + 1) // 2))
    assert [level_factor(h, w, gh, gw) for gh, gw in grids] == [1, 2, 4, 8]


def image_only_attention(q, k0, v0, heads):
    """softmax(Q K_0^T / sqrt d) V_0 per head, written out with plain tensor ops."""
    b, n, hd = q.shape
    d = hd // heads
    out = torch.zeros(b, n, hd)
    for h in range(heads):
        hs = slice(h * d, (h + 1) * d)
        out[..., hs] = torch.softmax(q[..., hs] @ k0[..., hs].transpose(-1, -2) / math.sqrt(d), dim=-1) @ v0[..., hs]
    return out


@pytest.mark.parametrize("hw", [(16, 16), (13, 9)])
def test_outside_the_masks_instruction_tokens_do_not_matter(unet, hw):
    """Outside every mask a patched layer's output is the image-only attention of that layer's own
    queries: whatever the prompt says, it does not reach those pixels (shipped defaults: two
    instructions, per-token routing)."""
    prompt, empty, other = contexts()
    x = latent(h=hw[0], w=hw[1])
    masks = torch.cat([square_mask(1, 64, (0, 0, 24, 40)), square_mask(1, 64, (0, 40, 24, 64))])
    sets, special = [[1, 2, 3], [5, 6]], [0, 11]
    for ctx in (prompt, other):
        sel = LayerSelector()
        ctrl = MaskModulation(masks, empty, token_sets=sets, special_tokens=special, prompt_context=ctx)
        rec = Recorder(ctrl, sel)
        run(unet, x, ctx, rec)
        assert len(rec.calls) > 0 and ctrl.calls_modified == len(rec.calls)
        for call, out in rec.calls:
            m = resize_masks(masks, call.height, call.width).reshape(2, -1).max(dim=0).values
            outside, inside = m == 0, m > 0
            assert outside.any() and inside.any()
            k0, v0 = call.project_context(empty)
            image_only = image_only_attention(call.q, k0.expand(call.q.shape[0], -1, -1),
                                              v0.expand(call.q.shape[0], -1, -1), call.heads)
            # fp32 attention of O(1) activations over 12 tokens, computed in a different order: 1e-5
            torch.testing.assert_close(out[:, outside], image_only[:, outside], atol=1e-5, rtol=1e-5)
            # inside, the prompt acts: the output is not the image-only attention
            assert (out[:, inside] - image_only[:, inside]).abs().max() > 1e-3
    # identical queries, only the text keys/values swapped: outside equal, inside different
    call, _ = rec.calls[0]
    ctrl_a = MaskModulation(masks, empty, token_sets=sets, special_tokens=special, prompt_context=prompt,
                            branches=[0])
    k0, v0 = call.project_context(empty)
    outs = []
    for ctx in (prompt, other):
        kc, vc = call.project_context(ctx)
        outs.append(ctrl_a(AttentionCall(**{**call.__dict__, "k": kc, "v": vc, "branches": [0]})))
    m = resize_masks(masks, call.height, call.width).reshape(2, -1).max(dim=0).values
    # same queries and image-only keys on both sides, fp32: 1e-6 bounds summation-order noise
    torch.testing.assert_close(outs[0][:, m == 0], outs[1][:, m == 0], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(outs[0][:, m == 1], outs[1][:, m == 1], atol=1e-4)


def reference_output_mix(q, k, v, k0, v0, heads, m):
    def attn(kk, vv):
        b, n, hd = q.shape
        d = hd // heads
        qh = q.view(b, n, heads, d).transpose(1, 2)
        kh, vh = kk.view(b, -1, heads, d).transpose(1, 2), vv.view(b, -1, heads, d).transpose(1, 2)
        return (torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, -1) @ vh).transpose(1, 2).reshape(b, n, hd)

    mm = m.view(1, -1, 1)
    return mm * attn(k, v) + (1 - mm) * attn(k0, v0)


def random_qkv(seed=3, b=2, n=16, t=TOKENS, heads=2, d=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, x, heads * d, generator=g) for x in (n, t, t, t, t)]


def camila_loop(q, k, v, k0, v0, heads, masks, owner_of):
    """CAMILA's A' = softmax((X ⊙ M + Y ⊙ (1 − M)) / √d), written out pixel by pixel and token by
    token from the paper, in float64.

    masks: [N, Nq], one row per instruction. owner_of[j]: the instruction text token j belongs to,
    or None for tokens of no instruction (start/end/padding, separators), which follow the union of
    the masks (the pack's documented choice). Values are paired with the mixed scores token by
    token: V'[p, j] = M[p, j] V_T[j] + (1 − M[p, j]) V_0[j] (the pack's documented choice).
    """
    b, n_q, hd = q.shape
    d = hd // heads
    n_tok = k.shape[1]
    q, k, v, k0, v0 = (t.double() for t in (q, k, v, k0, v0))
    out = torch.zeros(b, n_q, hd, dtype=torch.float64)
    for p in range(n_q):
        M = []
        for j in range(n_tok):
            if owner_of[j] is None:
                M.append(max(float(masks[i, p]) for i in range(masks.shape[0])))
            else:
                M.append(float(masks[owner_of[j], p]))
        for bi in range(b):
            for h in range(heads):
                hs = slice(h * d, (h + 1) * d)
                scores = []
                for j in range(n_tok):
                    X = float(q[bi, p, hs] @ k[bi, j, hs])
                    Y = float(q[bi, p, hs] @ k0[bi, j, hs])
                    scores.append((X * M[j] + Y * (1 - M[j])) / math.sqrt(d))
                top = max(scores)
                e = [math.exp(s_ - top) for s_ in scores]
                z = sum(e)
                for j in range(n_tok):
                    out[bi, p, hs] += (e[j] / z) * (M[j] * v[bi, j, hs] + (1 - M[j]) * v0[bi, j, hs])
    return out


def output_mix_loop(q, k, v, k0, v0, heads, m):
    """OUTPUT mode written out: M(p)·Attn(Q,K_T,V_T)[p] + (1 − M(p))·Attn(Q,K_0,V_0)[p], per pixel."""
    b, n_q, hd = q.shape
    d = hd // heads
    q, k, v, k0, v0 = (t.double() for t in (q, k, v, k0, v0))
    out = torch.zeros(b, n_q, hd, dtype=torch.float64)
    for p in range(n_q):
        for bi in range(b):
            for h in range(heads):
                hs = slice(h * d, (h + 1) * d)
                for kk, vv, w in ((k, v, float(m[p])), (k0, v0, 1 - float(m[p]))):
                    s_ = [float(q[bi, p, hs] @ kk[bi, j, hs]) / math.sqrt(d) for j in range(kk.shape[1])]
                    e = [math.exp(x - max(s_)) for x in s_]
                    for j in range(kk.shape[1]):
                        out[bi, p, hs] += w * (e[j] / sum(e)) * vv[bi, j, hs]
    return out


# Two instructions on a 4x4 grid, overlapping soft masks. Rows hold every kind of pixel: inside one
# mask only (1, 0) / (0, 1), inside both (1, 1), outside both (0, 0), and soft values.
MASK_0 = torch.tensor([[1.0, 1.0, 0.7, 0.3], [1.0, 1.0, 0.5, 0.2], [0.6, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
MASK_1 = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.4, 1.0, 1.0, 0.8], [0.2, 1.0, 0.0, 1.0], [1.0, 1.0, 0.9, 0.0]])
TWO_MASKS = torch.stack([MASK_0, MASK_1])
# 12 tokens: 0 start, 1-3 instruction 0, 4 a separator, 5-7 instruction 1, 8-11 end/padding
TOKEN_SETS = [[1, 2, 3], [5, 6, 7]]
SPECIAL = [0, 8, 9, 10, 11]
OWNER_OF = [None, 0, 0, 0, None, 1, 1, 1, None, None, None, None]
HEADS, HEAD_DIM, BATCH = 2, 8, 2


def layer_call(seed=5, attend=None, prompt=None, empty=None):
    """A cross-attention call with its own random linear to_k/to_v, like one UNet layer."""
    g = torch.Generator().manual_seed(seed)
    hd = HEADS * HEAD_DIM
    wk, wv = torch.randn(CTX, hd, generator=g) / CTX ** 0.5, torch.randn(CTX, hd, generator=g) / CTX ** 0.5
    prompt = torch.randn(1, TOKENS, CTX, generator=g) if prompt is None else prompt
    empty = torch.randn(1, TOKENS, CTX, generator=g) if empty is None else empty
    q = torch.randn(BATCH, 16, hd, generator=g)
    k, v = (prompt @ wk).expand(BATCH, -1, -1), (prompt @ wv).expand(BATCH, -1, -1)
    k0, v0 = (empty @ wk).expand(BATCH, -1, -1), (empty @ wv).expand(BATCH, -1, -1)
    call = AttentionCall(q=q, k=k, v=v, heads=HEADS, is_cross=True, height=4, width=4, latent_height=16,
                         latent_width=16, place=("input", 7, 0), branches=[0],
                         attend=attend or (lambda a, b_, c: plain_attention(a, b_, c)),
                         project_context=lambda ctx: (ctx @ wk, ctx @ wv))
    return call, prompt, empty, (q, k, v, k0, v0)


def plain_attention(q, k, v, heads=HEADS):
    return image_only_attention(q, k, v, heads)  # softmax(Q K^T / sqrt d) V, per head


def test_per_token_default_matches_camila_written_out():
    """The shipped default (token sets given, no routing/mode/edges argument) is CAMILA's per-token
    mask with binary masks (a cell is in a mask when the mask covers at least half of it; here the
    masks are given at the layer's grid, so that is value >= 0.5): against the paper's equation
    written as a loop, two instructions, overlapping masks, through the controller as a host calls it."""
    call, prompt, empty, (q, k, v, k0, v0) = layer_call()
    ctrl = MaskModulation(TWO_MASKS, empty, token_sets=TOKEN_SETS, special_tokens=SPECIAL, prompt_context=prompt)
    got = ctrl(call)
    binary = (TWO_MASKS >= 0.5).float().reshape(2, -1)
    want = camila_loop(q, k, v, k0, v0, HEADS, binary, OWNER_OF).float()
    # float64 loop vs fp32 attention of O(1) values over 12 tokens: 1e-5 (~100 fp32 ulps)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert ctrl.rows_through_inner == 16 and ctrl.rows_as_delta == 0  # every row an attention call


def test_per_token_soft_edges_match_camila_written_out():
    """The soft-edges option keeps the covered fraction: against the paper's equation written as a
    loop with the soft values, through the controller as a host calls it."""
    call, prompt, empty, (q, k, v, k0, v0) = layer_call()
    ctrl = MaskModulation(TWO_MASKS, empty, token_sets=TOKEN_SETS, special_tokens=SPECIAL, prompt_context=prompt,
                          edges="soft")
    got = ctrl(call)
    want = camila_loop(q, k, v, k0, v0, HEADS, TWO_MASKS.reshape(2, -1), OWNER_OF).float()
    # float64 loop vs fp32 softmax/matmul of O(1) values over 12 tokens (plus the delta path's
    # inner + (ours - plain), three fp32 terms): 1e-5 is ~100 fp32 ulps at this magnitude
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert ctrl.rows_through_inner > 0 and ctrl.rows_as_delta > 0  # both paths were exercised
    # the engine's own math (no host attention involved) agrees with the loop as well
    # same bound as above: fp32 vs float64 over 12 tokens
    torch.testing.assert_close(ctrl.modulate(q, k, v, k0, v0, HEADS, TWO_MASKS.reshape(2, -1)), want,
                               atol=1e-5, rtol=1e-5)


def test_per_token_differs_from_the_per_pixel_mask_where_instructions_differ():
    """A pixel in instruction 0's mask only must use the image-only score for instruction 1's tokens;
    a per-pixel M (the union for every token) uses the text score: the outputs differ there."""
    call, prompt, empty, (q, k, v, k0, v0) = layer_call()
    flat = TWO_MASKS.reshape(2, -1)
    per_token = camila_loop(q, k, v, k0, v0, HEADS, flat, OWNER_OF)
    union = flat.max(dim=0, keepdim=True).values
    per_pixel = camila_loop(q, k, v, k0, v0, HEADS, union, [0] * TOKENS)
    only_0 = (flat[0] == 1) & (flat[1] == 0)
    assert only_0.any()
    # the two formulas differ by O(0.1) on these O(1) values; 1e-2 is far above float64 noise
    assert (per_token[:, only_0] - per_pixel[:, only_0]).abs().max() > 1e-2
    ctrl = MaskModulation(TWO_MASKS, empty, token_sets=TOKEN_SETS, special_tokens=SPECIAL, prompt_context=prompt)
    got = ctrl(call)
    # fp32 result vs the float64 per-pixel formula: a real difference, not noise, must exceed 1e-2
    assert (got[:, only_0] - per_pixel[:, only_0].float()).abs().max() > 1e-2


def test_single_mask_logits_and_output_match_written_out_references():
    """One region for the whole prompt, soft edges: M[p, j] = m(p) for every token by definition;
    LOGITS is the equation written out, OUTPUT the blend of two attentions, and they agree where m
    is 0 or 1 (so with binary masks, the default, they are the same)."""
    call, prompt, empty, (q, k, v, k0, v0) = layer_call(seed=7)
    m = MASK_0.reshape(-1)
    logits = MaskModulation(MASK_0[None], empty, prompt_context=prompt, mode="logits", edges="soft")(call)
    output = MaskModulation(MASK_0[None], empty, prompt_context=prompt, mode="output", edges="soft")(call)
    # float64 loops vs fp32 over 12 tokens, O(1) values: 1e-5 (~100 ulps)
    torch.testing.assert_close(logits, camila_loop(q, k, v, k0, v0, HEADS, m[None], [0] * TOKENS).float(),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output, output_mix_loop(q, k, v, k0, v0, HEADS, m).float(), atol=1e-5, rtol=1e-5)
    binary = (m == 0) | (m == 1)
    # same attention through two code paths in fp32: 1e-5
    torch.testing.assert_close(logits[:, binary], output[:, binary], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[:, ~binary], output[:, ~binary], atol=1e-4)


class AdditivePack:
    """Another pack's attention: the attention it is given plus a term of its own (IP-Adapter
    style, out = attn + extra(q)); or scaled (out = scale * attn)."""

    def __init__(self, extra=0.0, scale=1.0, seed=9):
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(HEADS * HEAD_DIM, HEADS * HEAD_DIM, generator=g) * extra
        self.scale = scale

    def extra(self, q):
        return q @ self.proj

    def __call__(self, q, k, v):
        return self.scale * plain_attention(q, k, v) + self.extra(q)


@pytest.mark.parametrize("routing", [TokenRouting.PER_TOKEN, TokenRouting.FOI])
def test_another_packs_additive_term_survives_in_every_pixel_with_soft_edges(routing):
    """Composition with soft edges: with an inner attention out = attn + extra(q), the result is our
    modulated attention plus the same extra everywhere: binary rows went through the inner
    attention on modified keys/values, soft rows got our change as a delta on top of the inner
    result (exact for an additive pack; the soft-edges tooltip says so)."""
    pack = AdditivePack(extra=0.3)
    call, prompt, empty, (q, k, v, k0, v0) = layer_call(attend=pack)
    kw = dict(token_sets=TOKEN_SETS, special_tokens=SPECIAL, prompt_context=prompt, routing=routing, edges="soft")
    ours = MaskModulation(TWO_MASKS, empty, **kw).modulate(q, k, v, k0, v0, HEADS, TWO_MASKS.reshape(2, -1))
    both = MaskModulation(TWO_MASKS, empty, **kw)(call)
    assert pack.extra(q).abs().max() > 0.1
    # fp32 attention plus an O(1) extra term, through different groupings of the same sums: 1e-5
    torch.testing.assert_close(both, ours + pack.extra(q), atol=1e-5, rtol=1e-5)


def test_another_packs_scaling_applies_to_the_modulated_attention_on_binary_rows():
    """Soft edges, out = 0.5 * attn inside: rows whose mask values are all 0/1 are exactly
    0.5 * ours (the other pack acted on our modified keys/values), soft rows keep the scaled inner
    result plus our change (the approximation the binary default removes)."""
    pack = AdditivePack(scale=0.5)
    call, prompt, empty, (q, k, v, k0, v0) = layer_call(attend=pack)
    kw = dict(token_sets=TOKEN_SETS, special_tokens=SPECIAL, prompt_context=prompt, edges="soft")
    flat = TWO_MASKS.reshape(2, -1)
    ours = MaskModulation(TWO_MASKS, empty, **kw).modulate(q, k, v, k0, v0, HEADS, flat)
    both = MaskModulation(TWO_MASKS, empty, **kw)(call)
    binary = ((flat == 0) | (flat == 1)).all(dim=0)
    plain = plain_attention(q, k, v)
    # fp32 attention of O(1) values over 12 tokens via two code paths: 1e-5
    torch.testing.assert_close(both[:, binary], 0.5 * ours[:, binary], atol=1e-5, rtol=1e-5)
    # same bound: the delta rows are 0.5 * plain + (ours - plain)
    torch.testing.assert_close(both[:, ~binary], (0.5 * plain + ours - plain)[:, ~binary], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", list(ModulationMode))
def test_all_ones_mask_returns_the_inner_result_untouched(mode):
    """An all-ones mask is a no-op on top of any other pack: the inner result comes back as is."""
    pack = AdditivePack(extra=0.3, scale=0.7)
    call, prompt, empty, _ = layer_call(attend=pack)
    # OUTPUT has no per-token form: one region for the whole prompt (FoI would hide the separator)
    sets = None if mode is ModulationMode.OUTPUT else TOKEN_SETS
    masks = torch.ones(1 if sets is None else 2, 4, 4)
    ctrl = MaskModulation(masks, empty, token_sets=sets, special_tokens=SPECIAL, prompt_context=prompt, mode=mode)
    assert torch.equal(ctrl(call), pack(call.q, call.k, call.v))  # bit-identical: the inner result is kept
    assert ctrl.calls_modified == 1


def test_output_mode_refuses_a_per_token_mask_for_several_instructions():
    with pytest.raises(ValueError, match="per-token"):
        MaskModulation(TWO_MASKS, torch.zeros(1, TOKENS, CTX), token_sets=TOKEN_SETS, prompt_context=torch.zeros(
            1, TOKENS, CTX), mode="output")


def test_foi_routing_pixels_see_only_their_tokens():
    """The FoI option: pixels in mask k attend only to start/end tokens and instruction k's words."""
    q, k, v, k0, v0 = random_qkv(n=16)
    heads = 2
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 1.0      # rows 0-1: instruction 0
    masks[1, 3] = 1.0       # row 3: instruction 1; row 2: no mask
    special = [0, 11]
    sets = [[1, 2, 3], [5, 6]]
    ctrl = MaskModulation(masks, k0[:1], prompt_context=k[:1], token_sets=sets, special_tokens=special,
                          routing=TokenRouting.FOI)
    out = ctrl.modulate(q, k, v, k0, v0, heads, masks.reshape(2, -1))
    full = reference_output_mix(q, k, v, k0, v0, heads, torch.ones(16))  # helper for plain attention

    def restricted(tokens):
        idx = torch.tensor(sorted(tokens))
        return reference_output_mix(q, k[:, idx], v[:, idx], k0, v0, heads, torch.ones(16))

    r0, r1 = restricted(special + sets[0]), restricted(special + sets[1])
    empty = reference_output_mix(q, k, v, k0, v0, heads, torch.zeros(16))
    # fp32 attention of O(1) values over at most 12 tokens, two code paths: 1e-5; the last line
    # asks for a real difference (O(0.1)) from attending to every token
    torch.testing.assert_close(out[:, :8], r0[:, :8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 12:], r1[:, 12:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 8:12], empty[:, 8:12], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, :8], full[:, :8], atol=1e-4)


def chunked_inputs(order, prompt, empty, other, b=1):
    """Batch like ComfyUI's calc_cond_batch: one chunk per entry of cond_or_uncond."""
    by_branch = {0: prompt, 1: other, 2: empty}
    x = latent(b=b)
    xs = torch.cat([x] * len(order))
    ctx = torch.cat([by_branch[i].expand(b, -1, -1) for i in order])
    return xs, ctx


@pytest.mark.parametrize("order", [[0, 1], [1, 0], [0], [1, 2, 0], [2, 0, 1]])
@pytest.mark.parametrize("branches", ["text", [0]])
def test_only_the_text_branch_is_modulated(unet, order, branches):
    prompt, empty, other = contexts()
    masks = square_mask(1, 64, (0, 0, 32, 64))
    xs, ctx = chunked_inputs(order, prompt, empty, other, b=2)
    ctrl = MaskModulation(masks, empty, prompt_context=prompt, branches=branches)
    patched = run(unet, xs, ctx, ctrl, branches=order)
    plain = run(unet, xs, ctx)
    for i, branch in enumerate(order):
        sl = slice(2 * i, 2 * i + 2)
        # modulated chunks change by O(0.1); untouched chunks are the host's own attention, so only
        # fp32 summation-order noise (1e-6) may separate them from the plain run
        if branch == 0:
            assert not torch.allclose(patched[sl], plain[sl], atol=1e-4), f"text chunk {i} not modulated"
        else:
            torch.testing.assert_close(patched[sl], plain[sl], atol=1e-6, rtol=1e-6)


def test_strength_blends_linearly_in_the_patched_layers():
    from contextedit.attention_patches.controller import AttentionCall

    q, k, _, k0, _ = random_qkv()
    k, k0 = k[:1].expand(2, -1, -1), k0[:1]   # one text context per chunk, like ComfyUI batches
    v, v0 = 2 * k, 2 * k0                     # a linear "layer": to_k = id, to_v = 2 * id
    masks = torch.zeros(1, 4, 4)
    masks[0, :2] = 1.0
    full = MaskModulation(masks, k0, prompt_context=k[:1]).modulate(
        q, k, v, k0.expand(2, -1, -1), v0.expand(2, -1, -1), 2, masks.reshape(1, -1))
    plain = reference_output_mix(q, k, v, k, v, 2, torch.ones(16))
    assert not torch.allclose(full, plain, atol=1e-4)
    for s in (0.0, 0.5, 1.0):
        ctrl = MaskModulation(masks, k0, prompt_context=k[:1], strength=s)  # text branch found by content
        call = AttentionCall(q=q, k=k, v=v, heads=2, is_cross=True, height=4, width=4, latent_height=16,
                             latent_width=16, place="x", branches=[0],
                             attend=lambda a, b_, c: reference_output_mix(a, b_, c, b_, c, 2, torch.ones(16)),
                             project_context=lambda ctx: (ctx, 2 * ctx))
        torch.testing.assert_close(ctrl(call), plain + s * (full - plain), atol=1e-5, rtol=1e-5)


def test_sigma_window(unet):
    prompt, empty, _ = contexts()
    x = latent()
    ctrl = MaskModulation(torch.zeros(1, 64, 64), empty, prompt_context=prompt,
                          selector=LayerSelector(sigma_min=1.0, sigma_max=5.0))
    t = torch.tensor([500])
    with torch.no_grad():
        outs = {}
        for sigma in (0.5, 3.0, 9.0):
            with DiffusersHost(unet, sigma=sigma).attach(ctrl):
                outs[sigma] = unet(x, t, encoder_hidden_states=prompt).sample
        plain = unet(x, t, encoder_hidden_states=prompt).sample
    # outside the window the controller passes the host's call through: default fp32 tolerances;
    # inside, the zero mask changes the output by far more than 1e-4
    torch.testing.assert_close(outs[0.5], plain)
    torch.testing.assert_close(outs[9.0], plain)
    assert not torch.allclose(outs[3.0], plain, atol=1e-4)


def test_capture_reports_modulated_attention(unet):
    prompt, empty, _ = contexts()
    masks = square_mask(1, 64, (0, 0, 32, 64))
    cap = AttentionCapture([3, 4])
    run(unet, latent(), prompt, cap)
    assert cap.maps and all(m.share.shape == (1, 16) for m in cap.maps)
    share = torch.stack([m.share for m in cap.maps])
    assert (share > 0).all() and (share < 1).all()
    # through the modulation: no attention to the words outside the mask
    mod = MaskModulation(masks, empty, prompt_context=prompt)
    from contextedit.attention_patches.controller import AttentionCall  # noqa: F401

    class Chain(AttentionController):
        selector = LayerSelector()

        def modify(self, call):
            call.extra["contextedit_inner"] = mod
            inner_call = call
            out = mod(inner_call)
            cap.modify(type(call)(**{**call.__dict__, "attend": lambda *_: out}))
            return out

    cap.clear()
    run(unet, latent(), prompt, Chain())
    for m in cap.maps:
        grid = resize_masks(masks, m.height, m.width).reshape(-1)
        assert torch.all(m.share[:, grid == 0] == 0)
        assert torch.all(m.share[:, grid == 1] > 0)


def test_inputs_are_not_mutated(unet):
    prompt, empty, _ = contexts()
    masks = square_mask()
    before = (prompt.clone(), empty.clone(), masks.clone())
    run(unet, latent(), prompt, MaskModulation(masks, empty, prompt_context=prompt))
    for a, b in zip(before, (prompt, empty, masks)):
        assert torch.equal(a, b)


def test_scores_are_scaled_dot_products():
    q, k, *_ = random_qkv(b=1, n=4, t=5, heads=2, d=8)
    s = scaled_scores(q, k, 2)
    manual = (q.view(1, 4, 2, 8).transpose(1, 2) @ k.view(1, 5, 2, 8).transpose(1, 2).transpose(-1, -2)) / 8 ** 0.5
    # the same fp32 products in another grouping: default fp32 tolerances
    torch.testing.assert_close(s, manual)
