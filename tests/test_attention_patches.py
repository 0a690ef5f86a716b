"""Mask modulation (CAMILA) and capture on a tiny diffusers UNet, against explicit references."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from contextedit.attention_patches import AttentionController, LayerSelector, MaskModulation, ModulationMode
from contextedit.attention_patches.capture import AttentionCapture
from contextedit.attention_patches.controller import level_factor, scaled_scores
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
    torch.testing.assert_close(patched, run(unet, x, empty), atol=1e-5, rtol=1e-5)
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


@pytest.mark.parametrize("hw", [(16, 16), (13, 9)])
def test_outside_the_masks_instruction_tokens_do_not_matter(unet, hw):
    prompt, empty, other = contexts()
    x = latent(h=hw[0], w=hw[1])
    masks = square_mask(1, 64, (0, 0, 24, 40))
    outs = []
    for ctx in (prompt, other):
        sel = LayerSelector()
        rec = Recorder(MaskModulation(masks, empty, prompt_context=ctx, selector=sel), sel)
        run(unet, x, ctx, rec)
        outs.append(rec.calls)
    assert len(outs[0]) == len(outs[1]) > 0
    for (call_a, out_a), (_, out_b) in zip(*outs):
        m = resize_masks(masks, call_a.height, call_a.width).reshape(-1)
        outside, inside = m == 0, m == 1
        assert outside.any() and inside.any()
        # the inputs of these layers differ (earlier layers saw other text), so compare what the
        # layer does with its own input: recompute with the same q but the other context is not
        # possible here; instead check the defining property on identical queries below.
    # identical queries: feed the same hidden state and only swap the text keys/values
    call, _ = outs[0][0]
    ctrl_a = MaskModulation(masks, empty, prompt_context=prompt)
    m = resize_masks(masks, call.height, call.width).reshape(-1)
    k0, v0 = call.project_context(empty)
    ka, va = call.project_context(prompt)
    kb, vb = call.project_context(other)
    flat = resize_masks(masks, call.height, call.width).reshape(1, -1)
    out_a = ctrl_a.modulate(call.q, ka, va, k0, v0, call.heads, flat)
    out_b = ctrl_a.modulate(call.q, kb, vb, k0, v0, call.heads, flat)
    torch.testing.assert_close(out_a[:, m == 0], out_b[:, m == 0], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out_a[:, m == 1], out_b[:, m == 1], atol=1e-4)


def reference_logits(q, k, v, k0, v0, heads, m):
    """CAMILA written out: A' = softmax((X M + Y (1-M)) / sqrt d), values mixed the same way."""
    b, n, hd = q.shape
    d = hd // heads
    qh = q.view(b, n, heads, d).transpose(1, 2)
    kh, vh = k.view(b, -1, heads, d).transpose(1, 2), v.view(b, -1, heads, d).transpose(1, 2)
    k0h, v0h = k0.view(b, -1, heads, d).transpose(1, 2), v0.view(b, -1, heads, d).transpose(1, 2)
    X = qh @ kh.transpose(-1, -2)
    Y = qh @ k0h.transpose(-1, -2)
    M = m.view(1, 1, -1, 1)
    A = torch.softmax((X * M + Y * (1 - M)) / d ** 0.5, dim=-1)
    out = M * (A @ vh) + (1 - M) * (A @ v0h)
    return out.transpose(1, 2).reshape(b, n, hd)


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


def test_formulas_match_written_out_references_for_soft_masks():
    q, k, v, k0, v0 = random_qkv()
    m = torch.rand(16, generator=torch.Generator().manual_seed(4))
    m[:3] = 0.0
    m[3:6] = 1.0
    flat = m.view(1, -1)
    logits = MaskModulation(m.view(1, 4, 4), k0[:1], prompt_context=k[:1], mode="logits")
    output = MaskModulation(m.view(1, 4, 4), k0[:1], prompt_context=k[:1], mode="output")
    got_l = logits.modulate(q, k, v, k0, v0, 2, flat)
    got_o = output.modulate(q, k, v, k0, v0, 2, flat)
    torch.testing.assert_close(got_l, reference_logits(q, k, v, k0, v0, 2, m), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_o, reference_output_mix(q, k, v, k0, v0, 2, m), atol=1e-5, rtol=1e-5)
    binary = (m == 0) | (m == 1)
    torch.testing.assert_close(got_l[:, binary], got_o[:, binary], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got_l[:, ~binary], got_o[:, ~binary], atol=1e-4)


def test_multi_instruction_pixels_see_only_their_tokens():
    q, k, v, k0, v0 = random_qkv(n=16)
    heads = 2
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 1.0      # rows 0-1: instruction 0
    masks[1, 3] = 1.0       # row 3: instruction 1; row 2: no mask
    special = [0, 11]
    sets = [[1, 2, 3], [5, 6]]
    ctrl = MaskModulation(masks, k0[:1], prompt_context=k[:1], token_sets=sets, special_tokens=special)
    out = ctrl.modulate(q, k, v, k0, v0, heads, masks.reshape(2, -1))
    full = reference_output_mix(q, k, v, k0, v0, heads, torch.ones(16))  # helper for plain attention

    def restricted(tokens):
        idx = torch.tensor(sorted(tokens))
        return reference_output_mix(q, k[:, idx], v[:, idx], k0, v0, heads, torch.ones(16))

    r0, r1 = restricted(special + sets[0]), restricted(special + sets[1])
    empty = reference_output_mix(q, k, v, k0, v0, heads, torch.zeros(16))
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
    torch.testing.assert_close(s, manual)
