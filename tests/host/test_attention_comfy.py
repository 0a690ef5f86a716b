"""The attention-mask patch inside ComfyUI itself (in-process): layer choice, stacking with other
packs' patches, the stock samplers' branch layouts, and the node's input checks."""

import copy

import pytest
import torch

from host.inprocess import import_comfy, load_checkpoint, pack_module, tiny_sdxl_layout_unet


@pytest.fixture(scope="module")
def sd15(comfyui_root, tiny_checkpoints):
    return load_checkpoint(comfyui_root, tiny_checkpoints.sd15)


@pytest.fixture(scope="module")
def ip2p(comfyui_root, tiny_checkpoints):
    return load_checkpoint(comfyui_root, tiny_checkpoints.ip2p)


@pytest.fixture(scope="module")
def node(comfyui_root):
    return pack_module(comfyui_root, "nodes.attention.node")


def broadcaster_of():
    return __import__("contextedit.nodes.masks.token_broadcaster", fromlist=["x"])


def masks_lr(h=512, w=512):
    """two masks: left half and right half"""
    m = torch.zeros(2, h, w)
    m[0, :, : w // 2] = 1.0
    m[1, :, w // 2:] = 1.0
    return m


PROMPT = "make the hat red\nturn the dog into a cat"
SEGMENT = "per segment (encoded apart)"
PER_TOKEN = "per token (CAMILA)"


def node_defaults(node):
    """The Attention Mask node's shipped widget defaults, read from its schema."""
    return {i.id: i.default for i in node.AttentionMask.define_schema().inputs
            if getattr(i, "default", None) is not None}


def patch(node, model, clip, masks, prompt=PROMPT, **kw):
    """Run the node with its shipped defaults, overridden only by ``kw``."""
    options = ("mode", "routing", "resolutions", "start_percent", "end_percent", "strength", "apply_to",
               "mask_edges")
    args = {k: v for k, v in node_defaults(node).items() if k in options}
    args.update(kw)
    out = node.AttentionMask.execute(model=model, clip=clip, masks=masks, prompt=prompt, **args)
    return out.args if hasattr(out, "args") else out.result


def controller_of(patched):
    from comfy.patcher_extension import WrappersMP

    wrappers = patched.wrappers[WrappersMP.DIFFUSION_MODEL]
    ours = [k for k in wrappers if k.startswith("contextedit_attention")]
    assert len(ours) == 1
    fn = wrappers[ours[0]][0]
    cells = [c.cell_contents for c in fn.__closure__ or ()]
    return next(c for c in cells if hasattr(c, "places_modified"))


def direct_call(comfyui_root, model, cond, latent_hw=(64, 64), sigma=5.0, seed=0, extra_options=None):
    """One apply_model call on the text conditioning only, through the patcher's patches."""
    comfy = import_comfy(comfyui_root)
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    comfy.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, *latent_hw, generator=g) * sigma
    to = adapter.direct_transformer_options(model)
    to["cond_or_uncond"] = [0]
    to["sigmas"] = torch.tensor([sigma])
    if extra_options:
        to.update(extra_options)
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([sigma]), c_crossattn=cond[0][0], transformer_options=to)


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text), show_pbar=False)


def test_default_patches_exactly_the_16x16_layers_of_sd15_at_512(comfyui_root, sd15, node):
    model, clip, _ = sd15
    patched, positive, prompt = patch(node, model, clip, masks_lr())
    direct_call(comfyui_root, patched, positive, latent_hw=(64, 64))
    ctrl = controller_of(patched)
    assert {p[:2] for p in ctrl.places_modified} == {("input", 7), ("input", 8), ("output", 3), ("output", 4),
                                                      ("output", 5)}
    assert ctrl.branches_modified == {0}


def test_all_ones_mask_equals_unpatched(comfyui_root, sd15, node):
    model, clip, _ = sd15
    patched, positive, prompt = patch(node, model, clip, torch.ones(1, 512, 512), prompt="make the hat red",
                                      routing="whole prompt", resolutions="8,16,32,64")
    a = direct_call(comfyui_root, patched, positive)
    b = direct_call(comfyui_root, model, positive)
    assert controller_of(patched).calls_modified > 0
    # M = 1 keeps the host's own attention result, the rest is the same fp32 UNet: 1e-5
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_all_zeros_mask_equals_empty_prompt_everywhere(comfyui_root, sd15, node):
    model, clip, _ = sd15
    patched, positive, _ = patch(node, model, clip, torch.zeros(1, 512, 512), prompt="make the hat red",
                                 routing="whole prompt", resolutions="8,16,32,64")
    a = direct_call(comfyui_root, patched, positive)
    b = direct_call(comfyui_root, model, encode(clip, ""))
    # the empty-prompt attention through our call instead of the UNet's, fp32 over 16 layers of a
    # random-weight UNet whose outputs reach O(10): 1e-4
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_input_model_is_not_changed(sd15, node):
    model, clip, _ = sd15
    before_opts = copy.deepcopy(model.model_options)
    before_wrappers = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()}
    patch(node, model, clip, masks_lr())
    assert model.model_options == before_opts
    assert {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()} == before_wrappers


def test_shipped_defaults_are_per_segment_routing_and_binary_masks(sd15, node):
    """The node's defaults: per-segment routing (each instruction encoded alone, chosen by the
    measurement in the README) and binary masks at each layer's grid; the shipped workflows with
    an Attention Mask use binary masks too (their routing is set explicitly in each file)."""
    import json
    from pathlib import Path

    ap = __import__("contextedit.attention_patches", fromlist=["x"])
    defaults = node_defaults(node)
    assert (defaults["mode"], defaults["routing"], defaults["mask_edges"]) == (
        "logits", "per segment (encoded apart)", "binary")
    model, clip, _ = sd15
    patched, positive, _ = patch(node, model, clip, masks_lr())
    ctrl = controller_of(patched)
    assert ctrl.routing is ap.TokenRouting.PER_SEGMENT and len(ctrl.token_sets) == 2
    assert ctrl.edges is ap.MaskEdges.BINARY
    # the positive conditioning is each instruction encoded alone, concatenated
    first, second = PROMPT.split("\n")
    assert torch.equal(positive[0][0], torch.cat([encode(clip, first)[0][0], encode(clip, second)[0][0]], dim=1))
    root = Path(__file__).resolve().parents[2] / "workflows"
    routings = routing_options(node)
    for name in ("context_aware_edit", "context_aware_edit_manual", "attention_mask_ip2p"):
        api = json.loads((root / "api" / f"{name}.json").read_text())
        nodes = [n for n in api.values() if n.get("class_type") == "ContextEditAttentionMask"]
        assert nodes and all(n["inputs"]["routing"] in routings for n in nodes), name
        assert all(n["inputs"].get("mask_edges", "binary") == "binary" for n in nodes), name


PATCHED_KEYS = [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)]  # 1/32 layers


class OtherPack:
    """Another pack's attn2 replace: ComfyUI's attention, scaled (``scale``) and/or plus a term of
    its own computed from the queries (``extra``, IP-Adapter style: out = attn + extra(q)). Counts
    its calls and keeps the queries of its first call at input 7 (the first patched layer)."""

    def __init__(self, scale=1.0, extra=0.0):
        self.scale, self.extra, self.calls, self.first_q = scale, extra, 0, None

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options; keep one counter
        return self

    def __call__(self, q, k, v, extra_options, **kw):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls += 1
        if self.first_q is None and tuple(extra_options.get("block", ())) == ("input", 7):
            self.first_q = q.detach().clone()
        return optimized_attention(q, k, v, extra_options["n_heads"]) * self.scale + self.extra * q


def with_other(model, other):
    m = model.clone()
    for blk, idx in PATCHED_KEYS:
        m.set_model_attn2_replace(other, blk, idx)
    return m


def stacked(node, model, clip, masks, other, order, **kw):
    """Our patch and another pack's, in either install order; returns (patched model, positive)."""
    if order == "before":  # the other pack first, our node on top of its MODEL
        patched, positive, _ = patch(node, with_other(model, other), clip, masks, **kw)
        return patched, positive
    patched, positive, _ = patch(node, model, clip, masks, **kw)
    return with_other(patched, other), positive


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("order", ["before", "after"])
def test_all_ones_mask_on_top_of_another_pack_equals_that_pack_alone(comfyui_root, sd15, node, order):
    """An all-ones mask is a no-op: ours + another pack's scaling patch samples the same latents as
    the other pack alone (shipped defaults: two instructions, per-token mask), either install order."""
    model, clip, _ = sd15
    other = OtherPack(scale=0.5)
    ones = torch.ones(2, 128, 128)
    both, positive = stacked(node, model, clip, ones, other, order)
    negative = encode(clip, "blurry")
    latent = torch.zeros(1, 4, 16, 16)  # 128 px: the 1/32 layers are 4x4
    out_both = sample(comfyui_root, both, positive, negative, latent, 5.0)
    assert controller_of(both).calls_modified > 0 and other.calls > 0
    out_alone = sample(comfyui_root, with_other(model, other), positive, negative, latent, 5.0)
    out_plain = sample(comfyui_root, model, positive, negative, latent, 5.0)
    # the other pack's own effect is large (a scale of 0.5 in five layers; measured 0.85% of these
    # latents with the per-segment conditioning)...
    assert relative(out_alone, out_plain) > 0.005
    # ...and with M = 1 our patch hands back the inner (other pack's) result as is, so the same fp32
    # graph runs; 1e-6 on O(1) latents leaves room only for summation-order noise, while losing
    # the other pack's effect in the patched layers shows as a percent-level difference
    torch.testing.assert_close(out_both, out_alone, atol=1e-6, rtol=0)


def attention_outputs_at_input_7(comfyui_root, model, positive, latent_hw=(64, 64)):
    """The first patched layer's attention output (what goes into to_out) in one direct call."""
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    layer = adapter.attn2_layers(model.get_model_object("diffusion_model"))[("input", 7, 0)]
    seen = []
    handle = layer.to_out[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        direct_call(comfyui_root, model, positive, latent_hw=latent_hw)
    finally:
        handle.remove()
    return seen[0]


def two_soft_masks():
    """512 px: instruction 0 on the left 272 px (a half-covered column of the 16x16 grid),
    instruction 1 on the top-right quarter (overlapping that column), bottom-right in neither."""
    m = torch.zeros(2, 512, 512)
    m[0, :, :272] = 1.0
    m[1, :256, 256:] = 1.0
    return m


@pytest.mark.parametrize("order", ["before", "after"])
def test_partial_mask_and_an_additive_pack_both_act(comfyui_root, sd15, node, order):
    """With a partial mask and soft edges both effects are present: in the first patched layer
    (identical inputs in every run) ours + an additive pack = ours alone + the pack's extra term at
    every pixel, soft rows included (the delta path), and the sampled latents differ from either
    patch alone. (With the binary default every row is exact for any pack: the test below.)"""
    model, clip, _ = sd15
    masks = two_soft_masks()
    other = OtherPack(extra=0.5)
    both, positive = stacked(node, model, clip, masks, other, order, mask_edges="soft", routing=PER_TOKEN)
    ours_only, _, _ = patch(node, model, clip, masks, mask_edges="soft", routing=PER_TOKEN)
    out_both = attention_outputs_at_input_7(comfyui_root, both, positive)
    extra = 0.5 * other.first_q
    other.first_q = None
    out_alone = attention_outputs_at_input_7(comfyui_root, with_other(model, other), positive)
    out_ours = attention_outputs_at_input_7(comfyui_root, ours_only, positive)
    out_plain = attention_outputs_at_input_7(comfyui_root, model, positive)
    assert relative(out_alone, out_plain) > 0.05 and relative(out_ours, out_plain) > 0.05
    # fp32 attention of O(1) activations over 77 tokens, the same sums grouped differently (one
    # inner call per mask pattern, or inner + our delta on soft rows): 1e-5
    torch.testing.assert_close(out_both, out_ours + extra, atol=1e-5, rtol=1e-5)
    # the same bound: our change on top of the pack equals our change alone
    torch.testing.assert_close(out_both - out_alone, out_ours - out_plain, atol=1e-5, rtol=1e-5)
    ctrl = controller_of(both)
    assert ctrl.rows_through_inner > 0 and ctrl.rows_as_delta > 0  # binary rows and soft rows
    # through sampling: the stack differs from each patch alone. Sampling is deterministic fp32
    # (the all-ones test above shows runs agree exactly), so 1e-3 relative is far above noise,
    # while each patch's share of these O(100) latents is a few 1e-3 on the tiny random UNet
    negative = encode(clip, "blurry")
    latent = torch.zeros(1, 4, 16, 16)
    s_both = sample(comfyui_root, both, positive, negative, latent, 5.0)
    s_alone = sample(comfyui_root, with_other(model, other), positive, negative, latent, 5.0)
    s_ours = sample(comfyui_root, ours_only, positive, negative, latent, 5.0)
    assert relative(s_both, s_alone) > 1e-3 and relative(s_both, s_ours) > 1e-3


def sample(comfyui_root, model, positive, negative, latent, cfg, steps=2, guider=None):
    comfy = import_comfy(comfyui_root)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    if guider is None:
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                                   seed=0, disable_pbar=True)
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    return guider.sample(noise, latent, sampler, sigmas, seed=0, disable_pbar=True)


@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_ksampler_two_way_and_cfg1(comfyui_root, sd15, node, cfg):
    model, clip, _ = sd15
    patched, positive, _ = patch(node, model, clip, masks_lr(128, 128))
    ctrl = controller_of(patched)
    latent = torch.zeros(2, 4, 16, 16)  # batch of two, 128 px
    out = sample(comfyui_root, patched, positive, encode(clip, "blurry"), latent, cfg)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert ctrl.calls_modified > 0 and ctrl.branches_modified == {0}


def test_instructpix2pix_dual_cfg_three_conds(comfyui_root, ip2p, node):
    model, clip, vae = ip2p
    comfy = import_comfy(comfyui_root)
    import importlib

    ip2p_nodes = importlib.import_module("comfy_extras.nodes_ip2p")
    custom = importlib.import_module("comfy_extras.nodes_custom_sampler")
    patched, positive, _ = patch(node, model, clip, masks_lr(128, 128))
    pixels = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    pos, neg_img, latent = ip2p_nodes.InstructPixToPixConditioning.execute(
        positive=positive, negative=encode(clip, ""), pixels=pixels, vae=vae).args
    guider = custom.Guider_DualCFG(patched)
    guider.set_conds(pos, neg_img, encode(clip, ""))
    guider.set_cfg(7.5, 1.5)
    ctrl = controller_of(patched)
    out = sample(comfyui_root, patched, None, None, latent["samples"], None, guider=guider)
    assert torch.isfinite(out).all()
    # DualCFGGuider batches [negative, middle, positive]: the text branch is cond index 2
    assert ctrl.branches_modified == {2}


def test_sdxl_layout_selects_its_own_layers(comfyui_root, node):
    """A ComfyUI UNet with SDXL's block layout (tiny channels): 1/32 = input 7-8, middle, output 0-2."""
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    ap = pack_module(comfyui_root, "attention_patches")
    unet = tiny_sdxl_layout_unet(comfyui_root)
    ctx = torch.randn(1, 8, 16)
    ctrl = ap.MaskModulation(torch.zeros(1, 128, 128), torch.randn(1, 8, 16), prompt_context=ctx, branches=[0])
    to = adapter.with_controller({"cond_or_uncond": [0]}, unet, ctrl)
    with torch.no_grad():
        unet(torch.randn(1, 4, 32, 32), torch.tensor([10.0]), context=ctx, transformer_options=to)
    assert {p[:2] for p in ctrl.places_modified} == {("input", 7), ("input", 8), ("middle", 0), ("output", 0),
                                                      ("output", 1), ("output", 2)}
    assert {p for p in ctrl.places_modified if p[:2] == ("input", 8)} == {("input", 8, 0), ("input", 8, 1)}


@pytest.mark.parametrize("kwargs, input_name", [
    (dict(masks=torch.zeros(3, 64, 64)), "masks"),
    (dict(prompt="   "), "prompt"),
    (dict(prompt="make the hat red\nadd a moon", masks=torch.zeros(2, 64, 64), plan=None), None),
    (dict(resolutions="12"), "resolutions"),
])
def test_bad_input_names_the_input(sd15, node, kwargs, input_name):
    errors = pack_module(None, "nodes.errors") if False else __import__("contextedit.nodes.errors", fromlist=["x"])
    model, clip, _ = sd15
    args = dict(masks=masks_lr(64, 64), prompt=PROMPT)
    args.update(kwargs)
    if input_name is None:
        patch(node, model, clip, **args)  # valid: two instructions, two masks
        return
    with pytest.raises(errors.InputError) as e:
        patch(node, model, clip, **args)
    assert e.value.input_name == input_name


def test_phrase_not_in_prompt_and_non_sd_model(sd15, node):
    errors = __import__("contextedit.nodes.errors", fromlist=["x"])
    model, clip, _ = sd15
    spec = node.instructions_from("make the hat red", None, torch.ones(1, 8, 8))
    spec.instructions = ["paint the sky"]
    mp = __import__("contextedit.nodes.attention.mask_patch", fromlist=["x"])
    with pytest.raises(errors.InputError, match="does not occur"):
        mp.build_mask_modulation(broadcaster_of().clip_tokenizer(clip), broadcaster_of().clip_encoder(clip), spec,
                                 routing=PER_TOKEN)   # the routings that locate each phrase in the prompt

    class NotSD:
        def get_model_object(self, name):
            return torch.nn.Linear(2, 2)

    with pytest.raises(errors.InputError) as e:
        patch(node, NotSD(), clip, masks_lr(64, 64))
    assert e.value.input_name == "model"


def test_token_broadcaster_with_comfyui_tokenizer(sd15, node):
    """Real SD1 tokenizer: weights syntax, a prompt longer than one 77-token chunk."""
    broadcaster = __import__("contextedit.nodes.masks.token_broadcaster", fromlist=["x"])
    _, clip, _ = sd15
    tokenize = broadcaster_of().clip_tokenizer(clip)
    filler = ", ".join(["a beautiful old wooden house"] * 15)  # > 75 tokens
    prompt = f"{filler}, make the (red hat:1.3) bigger\nturn the dog into a cat"
    phrases = ["make the red hat bigger", "turn the dog into a cat"]
    positions, lay = broadcaster.locate_phrases(tokenize, prompt, phrases)
    assert lay.length % 77 == 0 and lay.length >= 154
    flat = [t for chunk in tokenize(prompt)["l"] for t in chunk]
    for phrase, pos in zip(phrases, positions):
        want = broadcaster.content_tokens(tokenize(phrase))
        assert [int(flat[p][0]) for p in pos] == want
        assert all(p not in lay.special for p in pos)
    assert positions[1][0] > 77  # the second instruction lives in the second chunk
    # the encoder concatenates chunks along the token axis, so positions index the conditioning
    cond = broadcaster_of().clip_encoder(clip)(prompt)
    assert cond.shape[1] == lay.length


def test_attention_map_shows_the_patch(comfyui_root, sd15, node):
    """The heat-map of the instruction's words: everywhere on the plain model, only inside the
    mask on the patched one (16x16 layers, absolute shares)."""
    model, clip, _ = sd15
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0  # left half
    patched, positive, prompt = patch(node, model, clip, mask, prompt="make the hat red", routing="whole prompt")
    latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))}
    args = dict(clip=clip, prompt="make the hat red", words="hat, red", latent=latent, sigma=5.0, resolutions="32",
                seed=0, normalize=False)
    (plain,) = node.AttentionMap.execute(model=model, **args).args
    (masked,) = node.AttentionMap.execute(model=patched, **args).args
    assert plain.shape == masked.shape == (1, 128, 128, 3)
    heat = pack_module(comfyui_root, "nodes.attention.heatmap")
    zero_colour = heat.colorize(torch.zeros(1))[0]
    right = masked[0, :, 84:]          # grid columns 2-3 only (4x4 grid, bilinear upsampling)
    assert torch.allclose(right, zero_colour.expand_as(right), atol=1e-6)
    assert not torch.allclose(masked[0, :, :56], zero_colour.expand_as(masked[0, :, :56]), atol=1e-3)
    assert not torch.allclose(plain[0, :, 84:], zero_colour.expand_as(plain[0, :, 84:]), atol=1e-3)
    assert torch.equal(latent["samples"], torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))


# ----------------------------------------------------------------------------- [NEG] instructions

NEG_TEXTS = ("make the hat red\nturn the dog into a cat", "make the hat red\nturn the car into a boat")


def neg_plan(text):
    """CAMILA's verdict for a two-line prompt: line 1 [MASK], line 2 [NEG] (an all-black mask)."""
    plan_mod = pack_module(None, "nodes.executability.plan")
    first, second = text.split("\n")
    return plan_mod.EditPlan(items=(plan_mod.EditItem(first, True),
                                    plan_mod.EditItem(second, False, reason="there is no such thing")))


def routing_options(node):
    return next(i for i in node.AttentionMask.define_schema().inputs if i.id == "routing").options


def test_a_neg_instruction_never_acts_in_any_routing(comfyui_root, sd15, node):
    """CAMILA maps a [NEG] instruction to an all-black mask: no token carrying its words may act at
    any pixel. With the prompt connected beside the plan, in every routing the node offers,
    changing only the [NEG] instruction's words leaves the patched model's output bit-identical
    (nothing of it is anywhere: words, CLIP's causal end/padding tokens, the conditioning), while
    changing the executable instruction's words does change it."""
    model, clip, _ = sd15
    masks = masks_lr(128, 128)
    for routing in routing_options(node):
        texts = NEG_TEXTS + (("make the hat blue\nturn the dog into a cat",) if routing == PER_TOKEN else ())
        outs = []
        for text in texts:
            patched, positive, _ = patch(node, model, clip, masks, prompt=text, plan=neg_plan(text), routing=routing)
            outs.append(direct_call(comfyui_root, patched, positive, latent_hw=(16, 16)))
        assert torch.equal(outs[0], outs[1]), (routing, float((outs[0] - outs[1]).abs().max()))
        if len(outs) > 2:
            # the executable instruction does act: a different word moves the output far above rounding
            assert not torch.allclose(outs[0], outs[2], atol=1e-4), routing


# ----------------------------------------------------------------------------- per-segment routing

OTHER_SECOND = "make the hat red\nturn the car into a boat"   # PROMPT with only instruction 2 changed


def first_layer_outputs(comfyui_root, node, model, clip, masks, routing, texts, seed=3):
    """The controller of input 7 (a 1/32 layer, 4x4 at 128 px) on the SAME queries for each text:
    keys/values are the layer's own projections of the node's positive conditioning."""
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    ctl = pack_module(comfyui_root, "attention_patches.controller")
    layer = adapter.attn2_layers(model.get_model_object("diffusion_model"))[("input", 7, 0)]
    q = torch.randn(1, 16, layer.to_q.weight.shape[0], generator=torch.Generator().manual_seed(seed))

    def plain(q_, k_, v_, heads=8):
        b, n, hd = q_.shape
        qh, kh, vh = (t.reshape(b, -1, heads, hd // heads).transpose(1, 2) for t in (q_, k_, v_))
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, hd)

    outs = []
    for text in texts:
        patched, positive, _ = patch(node, model, clip, masks, prompt=text, routing=routing)
        ctx = positive[0][0]
        with torch.no_grad():
            call = ctl.AttentionCall(q=q, k=layer.to_k(ctx), v=layer.to_v(ctx), heads=8, is_cross=True, height=4,
                                     width=4, latent_height=16, latent_width=16, place=("input", 7, 0),
                                     branches=[0], attend=plain,
                                     project_context=lambda c: (layer.to_k(c), layer.to_v(c)))
            outs.append(controller_of(patched)(call))
    return outs


def test_per_segment_instruction_2_cannot_reach_mask_1_in_a_patched_layer(comfyui_root, sd15, node):
    """Each instruction encoded alone (its own start/end/padding), pixels in mask k attending only
    to segment k: in a patched layer, with the same queries, changing only instruction 2's text
    leaves the output at the pixels of mask 1 bit-identical. Per-token routing cannot: CLIP is
    causal, so the end/padding tokens of the joint prompt (following the union of the masks)
    carry instruction 2 into mask 1."""
    model, clip, _ = sd15
    masks = masks_lr(128, 128)
    in_first = torch.zeros(4, 4, dtype=torch.bool)
    in_first[:, :2] = True                   # the left half of the 4x4 grid: mask 1 only
    in_first = in_first.reshape(-1)
    seg = first_layer_outputs(comfyui_root, node, model, clip, masks, SEGMENT, (PROMPT, OTHER_SECOND))
    tok = first_layer_outputs(comfyui_root, node, model, clip, masks, PER_TOKEN, (PROMPT, OTHER_SECOND))
    seg_change = float((seg[0] - seg[1])[:, in_first].abs().mean())
    tok_change = float((tok[0] - tok[1])[:, in_first].abs().mean())
    print(f"first patched layer, mask-1 change when instruction 2 changes: per token {tok_change:.4g}, "
          f"per segment {seg_change:.4g}")
    assert torch.equal(seg[0][:, in_first], seg[1][:, in_first])
    assert tok_change > 1e-4      # per token: the end/padding tokens changed (far above rounding)
    # and instruction 2 does act in its own mask under per-segment routing
    assert not torch.allclose(seg[0][:, ~in_first], seg[1][:, ~in_first], atol=1e-4)


def sampled_change_in_mask_1(comfyui_root, node, model, clip, routing, resolutions, steps=4):
    """Mean |change| of the final latent inside mask 1 (left half) when only instruction 2 changes."""
    masks = masks_lr(128, 128)
    negative = encode(clip, "")
    latent = torch.zeros(1, 4, 16, 16)
    outs = []
    for text in (PROMPT, OTHER_SECOND):
        patched, positive, _ = patch(node, model, clip, masks, prompt=text, routing=routing, resolutions=resolutions)
        outs.append(sample(comfyui_root, patched, positive, negative, latent, 5.0, steps=steps))
    return float((outs[0] - outs[1])[..., :8].abs().mean()), float((outs[0] - outs[1])[..., 8:].abs().mean())


@pytest.fixture(scope="module")
def end_to_end_changes(comfyui_root, sd15, node):
    """Every cross-attention layer patched, KSampler (cfg 5, 4 steps, 128 px): mean |change| of the
    final latent inside mask 1 and mask 2 when only instruction 2 changes, per routing."""
    model, clip, _ = sd15
    every = "8,16,32,64"
    out = {routing: sampled_change_in_mask_1(comfyui_root, node, model, clip, routing, every)
           for routing in (PER_TOKEN, SEGMENT)}
    (tok_in, tok_out), (seg_in, seg_out) = out[PER_TOKEN], out[SEGMENT]
    print(f"every layer patched, final latent: mask-1 change per token {tok_in:.4g}, per segment {seg_in:.4g} "
          f"(factor {tok_in / max(seg_in, 1e-12):.2f}); mask-2 change per token {tok_out:.4g}, per segment "
          f"{seg_out:.4g}")
    return out


def test_per_segment_end_to_end_moves_mask_1_less_than_per_token(end_to_end_changes):
    """End to end per-segment routing moves mask 1 less than per-token routing (measured 1.63x:
    1.88 vs 3.07 on the tiny random SD1.5) while instruction 2 still edits its own mask."""
    (tok_in, _), (seg_in, seg_out) = end_to_end_changes[PER_TOKEN], end_to_end_changes[SEGMENT]
    # 1.25x: a margin below the measured 1.63x that no rounding-level difference could reach
    assert seg_in * 1.25 <= tok_in, (tok_in, seg_in)
    assert seg_out > 2 * seg_in, (seg_out, seg_in)   # measured 2.8x: instruction 2 acts in its own mask


@pytest.mark.xfail(strict=True, reason=(
    "issue 22's 10x goal is not met on the tiny random-weight SD1.5: per-segment routing keeps every "
    "patched cross-attention at mask-1 pixels bit-identical (the layer test above), but self-attention "
    "and convolutions carry mask 2's change into mask 1 (one Euler step already gives 1.57x, four 1.63x)"))
def test_per_segment_end_to_end_moves_mask_1_10x_less_than_per_token(end_to_end_changes):
    """Issue 22 §3's end-to-end goal: at least 10x less change inside mask 1 than per-token routing."""
    (tok_in, _), (seg_in, _) = end_to_end_changes[PER_TOKEN], end_to_end_changes[SEGMENT]
    assert seg_in * 10 <= tok_in, (tok_in, seg_in)


# ----------------------------------------------------------------------------- binary masks compose exactly


class TemperaturePack(OtherPack):
    """Another pack's attn2 replace: softmax temperature 2 (logits doubled), written out per head."""

    def __init__(self):
        super().__init__()

    def __call__(self, q, k, v, extra_options, **kw):
        self.calls += 1
        if self.first_q is None and tuple(extra_options.get("block", ())) == ("input", 7):
            self.first_q = q.detach().clone()
        heads = extra_options["n_heads"]
        b, n, hd = q.shape
        qh, kh, vh = (t.reshape(b, -1, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
        probs = (2.0 * (qh @ kh.transpose(-1, -2)) / (hd // heads) ** 0.5).softmax(dim=-1)
        return (probs @ vh).transpose(1, 2).reshape(b, n, hd)


def soft_edged_masks_128():
    """128 px, a 4x4 grid of 32 px cells at the 1/32 layers: mask 1 covers grid column 1 by 3/4 and
    column 2 by 1/8 (in, out), mask 2 covers grid row 1 of the right half by 1/2 (in)."""
    m = torch.zeros(2, 128, 128)
    m[0, :, :60] = 1.0
    m[0, :, 60:68] = 1.0
    m[1, :48, 64:] = 1.0
    return m


def cells_of(mask, grid=4):
    """Per the rule: cell (y, x) belongs to the mask when the mask covers at least half of it."""
    size = mask.shape[-1] // grid
    return [float(mask[y * size:(y + 1) * size, x * size:(x + 1) * size].sum()) / size ** 2 >= 0.5
            for y in range(grid) for x in range(grid)]


@pytest.mark.parametrize("routing", [PER_TOKEN, SEGMENT])
@pytest.mark.parametrize("pack_kind", ["scaling", "temperature"])
def test_default_binary_masks_compose_exactly_with_a_scaling_and_a_temperature_pack(comfyui_root, sd15, node,
                                                                                     routing, pack_kind):
    """Node defaults (binary masks at each layer's grid) under another pack's attn2 replace: at the
    first patched layer every pixel row equals that pack's replace applied to our modified keys and
    values, written out row by row from the rule (per token: token j from the prompt where its
    instruction's mask -- the union for start/end/padding -- covers the cell, else from the empty
    prompt; per segment: the segments of the masks covering the cell, else the empty prompt)."""
    model, clip, _ = sd15
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    other = OtherPack(scale=0.5) if pack_kind == "scaling" else TemperaturePack()
    masks = soft_edged_masks_128()
    both, positive = stacked(node, model, clip, masks, other, "before", routing=routing)
    got = attention_outputs_at_input_7(comfyui_root, both, positive, latent_hw=(16, 16))   # 128 px: 4x4 at 1/32
    q = other.first_q
    layer = adapter.attn2_layers(model.get_model_object("diffusion_model"))[("input", 7, 0)]
    first, second = PROMPT.split("\n")
    empty = encode(clip, "")[0][0]
    member = [cells_of(masks[0]), cells_of(masks[1])]
    assert any(member[0]) and any(member[1]) and not all(a or b for a, b in zip(*member))
    with torch.no_grad():
        k0, v0 = layer.to_k(empty)[0], layer.to_v(empty)[0]
        if routing == PER_TOKEN:
            def words(text):  # CLIP's content tokens: all but start (49406) and end/padding (49407)
                return [int(t[0]) for t in clip.tokenize(text)["l"][0] if int(t[0]) not in (49406, 49407)]

            tokens = [int(t[0]) for t in clip.tokenize(PROMPT)["l"][0]]
            n1, n2 = len(words(first)), len(words(second))
            assert tokens[1:1 + n1 + n2] == words(first) + words(second)   # start, instruction 1, 2, end...
            owner = [None] + [0] * n1 + [1] * n2 + [None] * (len(tokens) - 1 - n1 - n2)
            kt, vt = layer.to_k(positive[0][0])[0], layer.to_v(positive[0][0])[0]
        else:
            segs = [encode(clip, t)[0][0] for t in (first, second)]
            seg_kv = [(layer.to_k(s)[0], layer.to_v(s)[0]) for s in segs]
        rows = []
        for p in range(16):
            inside = [member[0][p], member[1][p]]
            if routing == PER_TOKEN:
                take = [any(inside) if o is None else inside[o] for o in owner]
                k = torch.stack([kt[j] if take[j] else k0[j] for j in range(len(owner))])
                v = torch.stack([vt[j] if take[j] else v0[j] for j in range(len(owner))])
            elif any(inside):
                k = torch.cat([seg_kv[i][0] for i in range(2) if inside[i]])
                v = torch.cat([seg_kv[i][1] for i in range(2) if inside[i]])
            else:
                k, v = k0, v0
            rows.append(other(q[:, p:p + 1], k[None].expand(q.shape[0], -1, -1), v[None].expand(q.shape[0], -1, -1),
                              {"n_heads": 8}))
    want = torch.cat(rows, dim=1)
    # the same fp32 attention over the same keys, grouped by row pattern in the patch and row by row
    # here: summation-order rounding of O(1) activations over <= 154 keys, far below 1e-5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert controller_of(both).rows_as_delta == 0
