"""The attention-mask patch inside ComfyUI itself (in-process): layer choice, stacking with other
packs' patches, the stock samplers' branch layouts, and the node's input checks."""

import copy

import pytest
import torch

from host.inprocess import import_comfy, load_checkpoint, pack_module


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


def patch(node, model, clip, masks, prompt=PROMPT, **kw):
    args = dict(mode="logits", routing="per instruction (FoI)", resolutions="32", start_percent=0.0,
                end_percent=1.0, strength=1.0, apply_to="text branch (auto)")
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
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_all_zeros_mask_equals_empty_prompt_everywhere(comfyui_root, sd15, node):
    model, clip, _ = sd15
    patched, positive, _ = patch(node, model, clip, torch.zeros(1, 512, 512), prompt="make the hat red",
                                 routing="whole prompt", resolutions="8,16,32,64")
    a = direct_call(comfyui_root, patched, positive)
    b = direct_call(comfyui_root, model, encode(clip, ""))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_input_model_is_not_changed(sd15, node):
    model, clip, _ = sd15
    before_opts = copy.deepcopy(model.model_options)
    before_wrappers = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()}
    patch(node, model, clip, masks_lr())
    assert model.model_options == before_opts
    assert {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()} == before_wrappers


class OtherPack:
    """Another pack's attn2 replace: scales the attention output and counts its calls."""

    def __init__(self, scale=0.5):
        self.scale, self.calls = scale, 0

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options; keep one counter
        return self

    def __call__(self, q, k, v, extra_options, **kw):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls += 1
        return optimized_attention(q, k, v, extra_options["n_heads"]) * self.scale


@pytest.mark.parametrize("order", ["before", "after"])
def test_stacks_with_another_attn2_replace(comfyui_root, sd15, node, order):
    model, clip, _ = sd15
    other = OtherPack()
    keys = [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)]
    if order == "before":
        base = model.clone()
        for blk, idx in keys:
            base.set_model_attn2_replace(other, blk, idx)
        patched, positive, _ = patch(node, base, clip, masks_lr())
        only_other = base
    else:
        patched, positive, _ = patch(node, model, clip, masks_lr())
        patched = patched.clone()
        for blk, idx in keys:
            patched.set_model_attn2_replace(other, blk, idx)
        only_other = model.clone()
        for blk, idx in keys:
            only_other.set_model_attn2_replace(other, blk, idx)
    ctrl = controller_of(patched)
    ctrl.calls_modified = 0
    both = direct_call(comfyui_root, patched, positive)
    assert other.calls == 5 and ctrl.calls_modified == 5
    other.calls = 0
    alone = direct_call(comfyui_root, only_other, positive)
    assert other.calls == 5
    plain = direct_call(comfyui_root, model, positive)
    assert not torch.allclose(both, alone, atol=1e-4)
    assert not torch.allclose(both, plain, atol=1e-4)


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
    comfy = import_comfy(comfyui_root)
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    ap = pack_module(comfyui_root, "attention_patches")
    torch.manual_seed(0)
    unet = UNetModel(image_size=32, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=2,
                     channel_mult=(1, 2, 4), num_head_channels=16, transformer_depth=[0, 0, 1, 1, 2, 2],
                     transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=2, context_dim=16,
                     use_spatial_transformer=True, use_linear_in_transformer=True, adm_in_channels=None, num_classes=None,
                     dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02)
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
        mp.build_mask_modulation(broadcaster_of().clip_tokenizer(clip), broadcaster_of().clip_encoder(clip), spec)

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
