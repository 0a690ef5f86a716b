"""The image stream inside ComfyUI (in-process): the tiny SD1.5 checkpoint, an IP-Adapter-format
file written from the published format (tests/fixtures/tiny_ipadapter.py) under the shipped name,
and a tiny CLIP_VISION built by ComfyUI's own ClipVisionModel class.

Layer-level checks record every attn2 call with an outermost recording controller and compare its
output with Z = inner(Q, K_txt, V_txt) + lambda * Attn(Q, K_img, V_img), the image keys/values and
tokens computed here in float64 from the file's tensors (IP-Adapter's projection, by formula).
"""

import copy
import dataclasses
import json
import math

import pytest
import torch
from fixtures.tiny_ipadapter import (
    SD15_CONTEXT,
    TINY_SD15_WIDTHS,
    ipadapter_tensors,
    write_ipadapter,
)
from host.inprocess import import_comfy, load_checkpoint, pack_module, tiny_sdxl_layout_unet

SHIPPED_NAME = "ip-adapter_sd15.safetensors"
EMBED = 24          # the tiny CLIP vision's projection width (ViT-H's would be 1024)
SEED = 11
# the file layer n drives this ComfyUI place (IP-Adapter's order: down, up, mid blocks)
SD15_N_TO_PLACE = {
    1: ("input", 1, 0), 3: ("input", 2, 0), 5: ("input", 4, 0), 7: ("input", 5, 0), 9: ("input", 7, 0),
    11: ("input", 8, 0), 13: ("output", 3, 0), 15: ("output", 4, 0), 17: ("output", 5, 0),
    19: ("output", 6, 0), 21: ("output", 7, 0), 23: ("output", 8, 0), 25: ("output", 9, 0),
    27: ("output", 10, 0), 29: ("output", 11, 0), 31: ("middle", 0, 0),
}


@pytest.fixture(scope="module")
def sd15(comfyui_root, tiny_checkpoints):
    return load_checkpoint(comfyui_root, tiny_checkpoints.sd15)


@pytest.fixture(scope="module")
def node(comfyui_root):
    return pack_module(comfyui_root, "nodes.image_stream.node")


@pytest.fixture(scope="module")
def ipadapter_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ipadapter")
    write_ipadapter(folder / SHIPPED_NAME, TINY_SD15_WIDTHS, SD15_CONTEXT, EMBED, seed=SEED)
    write_ipadapter(folder / "sdxl-shaped.safetensors", [320] * 70, SD15_CONTEXT, EMBED)
    return folder


@pytest.fixture(autouse=True)
def ipadapter_folder(comfyui_root, ipadapter_dir, monkeypatch):
    import_comfy(comfyui_root)
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(ipadapter_dir)], {".safetensors"}))


def tiny_clip_vision(comfyui_root, tmp_path, projection=EMBED, seed=3):
    """A CLIP_VISION as Load CLIP Vision returns it, from a tiny config, weights drawn here."""
    import_comfy(comfyui_root)
    import comfy.clip_vision

    config = {"hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 32, "intermediate_size": 64,
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
              "num_channels": 3, "num_hidden_layers": 2, "patch_size": 16, "projection_dim": projection}
    path = tmp_path / f"tiny_clip_vision_{projection}.json"
    path.write_text(json.dumps(config))
    cv = comfy.clip_vision.ClipVisionModel(str(path))
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.ones_like(v) if k.endswith("weight") and v.dim() == 1 else torch.randn(v.shape, generator=g) * 0.1)
          for k, v in cv.get_sd().items()}
    cv.load_sd(sd)
    return cv


@pytest.fixture(scope="module")
def clip_vision(comfyui_root, tmp_path_factory):
    return tiny_clip_vision(comfyui_root, tmp_path_factory.mktemp("clip_vision"))


def source_image(seed=1, size=64):
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def shipped_defaults(node):
    """The node's widget defaults as the UI would send them (tests run the shipped defaults)."""
    inputs = node.ImageStream.define_schema().inputs
    # the ipadapter list's default is whatever file comes first in models/ipadapter: not a setting
    return {i.id: i.default for i in inputs if getattr(i, "default", None) is not None and i.id != "ipadapter"}


def patch(node, model, clip_vision, **kw):
    args = {**shipped_defaults(node), "ipadapter": SHIPPED_NAME, "image": source_image(), **kw}
    (patched,) = node.ImageStream.execute(model=model, clip_vision=clip_vision, **args).args
    return patched


def test_shipped_defaults(node):
    assert shipped_defaults(node) == {"weight": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                                      "block_weights": "input:1, middle:1, output:1", "mask_mode": "everywhere",
                                      "unconditional": "KSampler negative (1)"}


def test_the_image_tooltip_says_what_insightedit_feeds(node):
    """InsightEdit's visual branch is a predicted *target*-image embedding (its IAA is trained with
    ||CLIP(I_tar) - Mapper(h)||^2); the tooltip must not call the source image InsightEdit's use."""
    tip = next(i for i in node.ImageStream.define_schema().inputs if i.id == "image").tooltip
    assert "InsightEdit's use" not in tip
    assert "target" in tip and "stand-in" in tip


def controllers_of(patched):
    from comfy.patcher_extension import WrappersMP

    found = []
    for fns in patched.wrappers[WrappersMP.DIFFUSION_MODEL].values():
        for fn in fns:
            found += [c.cell_contents for c in fn.__closure__ or () if hasattr(c.cell_contents, "places_modified")]
    return found


def stream_of(patched):
    (ctrl,) = [c for c in controllers_of(patched) if hasattr(c, "image_tokens")]
    return ctrl


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text), show_pbar=False)


def direct_call(comfyui_root, model, cond, sigma=5.0, latent_hw=(16, 16), seed=0):
    comfy = import_comfy(comfyui_root)
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    comfy.model_management.load_models_gpu([model])
    x = torch.randn(1, 4, *latent_hw, generator=torch.Generator().manual_seed(seed)) * sigma
    to = adapter.direct_transformer_options(model)
    to["cond_or_uncond"] = [0]
    to["sigmas"] = torch.tensor([sigma])
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([sigma]), c_crossattn=cond[0][0], transformer_options=to)


def with_recorder(comfyui_root, patched):
    """A clone whose outermost attn2 controller records every call (installed last = outermost)."""
    controller = pack_module(comfyui_root, "attention_patches.controller")
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")

    class Recorder(controller.AttentionController):
        def __init__(self):
            self.calls, self.places_modified = [], set()

        def __call__(self, call):
            out = call.attend(call.q, call.k, call.v)
            self.calls.append((call, out))
            return out

    rec = Recorder()
    return adapter.install_controller(patched, rec), rec


# ------------------------------------------------------------------ references (float64, by formula)


def ref_attention(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V per head, float64: q [B,N,H*D], k/v [B,T,H*D]."""
    b, n, hd = q.shape
    d = hd // heads
    qh = q.double().reshape(b, n, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.double().reshape(b, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, n, hd)


def ref_image_tokens(sd, embeds):
    """IP-Adapter's image projection: LayerNorm(reshape(W e + b, [4, C])), float64."""
    w, b = sd["image_proj.proj.weight"].double(), sd["image_proj.proj.bias"].double()
    c = sd["image_proj.norm.weight"].shape[0]
    t = (embeds.double() @ w.T + b).reshape(embeds.shape[0], -1, c)
    mean = t.mean(-1, keepdim=True)
    var = ((t - mean) ** 2).mean(-1, keepdim=True)
    return (t - mean) / torch.sqrt(var + 1e-5) * sd["image_proj.norm.weight"].double() + sd["image_proj.norm.bias"].double()


def ref_term(call, tokens, wk, wv):
    k_img = (tokens @ wk.double().T).expand(call.q.shape[0], -1, -1)
    v_img = (tokens @ wv.double().T).expand(call.q.shape[0], -1, -1)
    return ref_attention(call.q, k_img, v_img, call.heads)


def image_embeds(clip_vision, image):
    with torch.no_grad():
        return clip_vision.encode_image(image, crop=True)["image_embeds"]


def file_tensors():
    # the file is fp16 on disk: compare with what was written, as read back
    return {k: v.half().double() for k, v in ipadapter_tensors(TINY_SD15_WIDTHS, SD15_CONTEXT, EMBED, seed=SEED).items()}


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------ tests


def test_layers_follow_the_published_sd15_mapping(sd15, node, clip_vision):
    model, _, _ = sd15
    ctrl = stream_of(patch(node, model, clip_vision))
    assert list(ctrl.layers) == [SD15_N_TO_PLACE[n] for n in range(1, 32, 2)]
    sd = file_tensors()
    for n, place in SD15_N_TO_PLACE.items():
        wk, wv = ctrl.layers[place]
        assert torch.equal(wk.double(), sd[f"ip_adapter.{n}.to_k_ip.weight"])
        assert torch.equal(wv.double(), sd[f"ip_adapter.{n}.to_v_ip.weight"])


def test_lambda_zero_equals_unpatched_exactly_and_the_input_model_is_unchanged(comfyui_root, sd15, node, clip_vision):
    model, clip, _ = sd15
    before_opts = copy.deepcopy(model.model_options)
    before_wrappers = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()}
    cond = encode(clip, "a photo of a cat")
    plain = direct_call(comfyui_root, model, cond)
    # at lambda 0 every attn2 returns the inner result object itself: bit-identical by construction
    assert torch.equal(direct_call(comfyui_root, patch(node, model, clip_vision, weight=0.0), cond), plain)
    patched = patch(node, model, clip_vision, weight=1.0)
    out = direct_call(comfyui_root, patched, cond)
    assert stream_of(patched).places_modified == set(SD15_N_TO_PLACE.values())
    # random 0.02-scale weights: the image stream moves the x0 prediction by ~1e-2; 1e-4 says "it acts"
    assert (out - plain).abs().max() > 1e-4
    assert model.model_options == before_opts
    assert {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()} == before_wrappers


class OtherPack:
    """Another pack's attn2 replace (set_model_attn2_replace): halves the attention output."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options, **kw):
        from comfy.ldm.modules.attention import optimized_attention

        return optimized_attention(q, k, v, extra_options["n_heads"]) * 0.5


def add_other(model):
    out = model.clone()
    for place in SD15_N_TO_PLACE.values():
        out.set_model_attn2_replace(OtherPack(), place[0], place[1], place[2])
    return out


@pytest.mark.parametrize("other, weight", [("none", 0.5), ("none", 2.0), ("installed before", 1.0),
                                           ("installed after", 1.0)])
def test_every_layer_is_inner_attention_plus_lambda_image_attention(comfyui_root, sd15, node, clip_vision, other,
                                                                     weight):
    model, clip, _ = sd15
    base = add_other(model) if other == "installed before" else model
    patched = patch(node, base, clip_vision, weight=weight)
    if other == "installed after":
        patched = add_other(patched)
    probe, rec = with_recorder(comfyui_root, patched)
    direct_call(comfyui_root, probe, encode(clip, "a photo of a cat"))
    sd = file_tensors()
    image = source_image()
    tokens = ref_image_tokens(sd, image_embeds(clip_vision, image))
    seen = set()
    for call, out in rec.calls:
        n = next(n for n, p in SD15_N_TO_PLACE.items() if p == call.place)
        inner = ref_attention(call.q, call.k, call.v, call.heads) * (1.0 if other == "none" else 0.5)
        term = ref_term(call, tokens, sd[f"ip_adapter.{n}.to_k_ip.weight"], sd[f"ip_adapter.{n}.to_v_ip.weight"])
        # fp32 attention (dot products over <= 40-wide heads, softmax over 77 or 4 keys) against float64:
        # relative error ~1e-6 of the output's magnitude; 1e-4 leaves room for fp32 image-key projection
        assert rel_err(out, inner + weight * term) < 1e-4, call.place
        # and the term is not negligible next to the text attention (else this check would be vacuous)
        assert float((weight * term).abs().max()) > 0.05 * float(inner.abs().max()), call.place
        seen.add(call.place)
    assert seen == set(SD15_N_TO_PLACE.values())


def test_the_term_is_linear_in_lambda_in_the_first_patched_layer(comfyui_root, sd15, node, clip_vision):
    """Input 1 is the first cross-attention: its queries do not depend on lambda, so its output
    must move by exactly lambda times one fixed term."""
    model, clip, _ = sd15
    cond = encode(clip, "a photo of a cat")
    outs = {}
    for weight in (0.0, 1.0, 3.0):
        probe, rec = with_recorder(comfyui_root, patch(node, model, clip_vision, weight=weight))
        direct_call(comfyui_root, probe, cond)
        outs[weight] = next(out for call, out in rec.calls if call.place == ("input", 1, 0)).double()
    d1, d3 = outs[1.0] - outs[0.0], outs[3.0] - outs[0.0]
    # the same fp32 term times 1 and 3 added to fp32 outputs: rounding ~1e-7 relative to the outputs
    assert rel_err(d3, 3.0 * d1) < 1e-4


@pytest.mark.parametrize("mode", ["inside the edit masks", "outside the edit masks"])
def test_mask_modes_give_zero_term_where_gated_off(comfyui_root, sd15, node, clip_vision, mode):
    model, clip, _ = sd15
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0  # left half; latent 16x16 -> grids 16, 8, 4, 2 wide: the edge falls on cells
    probe, rec = with_recorder(comfyui_root, patch(node, model, clip_vision, mask_mode=mode, masks=mask))
    direct_call(comfyui_root, probe, encode(clip, "a photo of a cat"))
    for call, out in rec.calls:
        inner = call.attend(call.q, call.k, call.v)  # the recorder's inner: our patch; recompute stock:
        adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
        stock = adapter._default_attention(call.q, call.k, call.v, {"n_heads": call.heads})
        delta = (inner - stock).reshape(call.q.shape[0], call.height, call.width, -1)
        off = delta[:, :, call.width // 2:] if mode.startswith("inside") else delta[:, :, : call.width // 2]
        on = delta[:, :, : call.width // 2] if mode.startswith("inside") else delta[:, :, call.width // 2:]
        # stock attention recomputed on the same inputs by the same kernel is bit-identical, and the
        # term is multiplied by an exact 0 there
        assert torch.equal(off, torch.zeros_like(off)), call.place
        # the term through 0.02-scale random weights is >> 1e-5 where it acts
        assert on.abs().max() > 1e-5, call.place


def test_sigma_window_from_start_and_end_percent(comfyui_root, sd15, node, clip_vision):
    model, clip, _ = sd15
    cond = encode(clip, "a photo of a cat")
    late = patch(node, model, clip_vision, start_percent=0.5, end_percent=1.0)
    # sigma 14 is the first step of SD1 sampling (progress 0): outside the window, so unpatched
    assert torch.equal(direct_call(comfyui_root, late, cond, sigma=14.0), direct_call(comfyui_root, model, cond, sigma=14.0))
    # sigma 0.5 is late in sampling: inside the window; a visible change (>1e-4, see above)
    assert (direct_call(comfyui_root, late, cond, sigma=0.5) - direct_call(comfyui_root, model, cond, sigma=0.5)).abs().max() > 1e-4


@pytest.mark.parametrize("order", ["mask then stream", "stream then mask"])
def test_composes_with_the_attention_mask_patch_in_both_orders(comfyui_root, sd15, node, clip_vision, order):
    """Installed together with CAMILA's mask modulation, each layer is (mask-modulated attention) +
    lambda * image term, whichever patch was applied first. With the image stream inside the mask
    patch ("stream then mask": the later patch wraps the earlier one), this needs MaskModulation to
    compute through ``call.attend`` (the inner replace) instead of overwriting its result."""
    model, clip, _ = sd15
    ap = pack_module(comfyui_root, "attention_patches")
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    prompt = encode(clip, "make the hat red")[0][0]
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0
    camila = ap.MaskModulation(mask, encode(clip, "")[0][0], prompt_context=prompt, branches=[0],
                               selector=ap.LayerSelector(downscales=(8, 16, 32, 64)))
    if order == "mask then stream":
        both = patch(node, adapter.install_controller(model, camila), clip_vision)
    else:
        both = adapter.install_controller(patch(node, model, clip_vision), camila)
    probe, rec = with_recorder(comfyui_root, both)
    direct_call(comfyui_root, probe, encode(clip, "make the hat red"))
    sd = file_tensors()
    tokens = ref_image_tokens(sd, image_embeds(clip_vision, source_image()))
    assert len(rec.calls) == 16
    for call, out in rec.calls:
        n = next(n for n, p in SD15_N_TO_PLACE.items() if p == call.place)

        def stock(q_, k_, v_, heads=call.heads):
            return adapter._default_attention(q_, k_, v_, {"n_heads": heads})

        mask_alone = camila(dataclasses.replace(call, attend=stock))
        term = ref_term(call, tokens, sd[f"ip_adapter.{n}.to_k_ip.weight"], sd[f"ip_adapter.{n}.to_v_ip.weight"])
        # fp32 kernels vs the float64 term, as in the layer test above
        assert rel_err(out, mask_alone.double() + term) < 1e-4, call.place
        # the mask's own effect is present: it differs from plain attention in the right half
        assert rel_err(mask_alone, stock(call.q, call.k, call.v)) > 1e-3, call.place


def test_bad_inputs_name_the_input(comfyui_root, sd15, node, clip_vision, tmp_path):
    errors = pack_module(comfyui_root, "nodes.errors")
    model, _, _ = sd15
    with pytest.raises(errors.InputError, match="70 cross-attention layers") as e:
        patch(node, model, clip_vision, ipadapter="sdxl-shaped.safetensors")
    assert e.value.input_name == "ipadapter"
    with pytest.raises(errors.InputError, match=r"expects \[batch, 24\]") as e:
        patch(node, model, tiny_clip_vision(comfyui_root, tmp_path, projection=16))
    assert e.value.input_name == "clip_vision"
    with pytest.raises(errors.InputError) as e:
        patch(node, model, clip_vision, mask_mode="outside the edit masks")
    assert e.value.input_name == "masks"
    with pytest.raises(errors.ModelNotFoundError, match="ipadapter"):
        patch(node, model, clip_vision, ipadapter="missing.safetensors")


def test_ksampler_cfg_runs_with_the_stream(comfyui_root, sd15, node, clip_vision):
    comfy = import_comfy(comfyui_root)
    model, clip, _ = sd15
    patched = patch(node, model, clip_vision)
    latent = torch.zeros(1, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample(patched, noise, 2, 5.0, "euler", "normal", encode(clip, "a cat"), encode(clip, ""),
                              latent, seed=0, disable_pbar=True)
    assert torch.isfinite(out).all() and stream_of(patched).calls_modified == 2 * 16


def test_sdxl_layout_unet_gets_the_term_in_every_cross_attention(comfyui_root):
    """A ComfyUI UNet with SDXL's block layout (tiny channels, depths 1 and 2, linear proj): every
    attn2 place, transformer index 1 included, is driven by its own file layer."""
    adapter = pack_module(comfyui_root, "attention_patches.comfy_adapter")
    stream_mod = pack_module(comfyui_root, "attention_patches.image_stream")
    engine = pack_module(comfyui_root, "nodes.image_stream.stream_patch")
    fmt = pack_module(comfyui_root, "nodes.image_stream.ipadapter_format")
    unet = tiny_sdxl_layout_unet(comfyui_root)
    layers = adapter.attn2_layers(unet)
    places = stream_mod.comfy_ip_order(layers)
    assert places[:4] == [("input", 4, 0), ("input", 5, 0), ("input", 7, 0), ("input", 7, 1)]
    assert places[-2:] == [("middle", 0, 0), ("middle", 0, 1)]
    widths = [tuple(layers[p].to_k.weight.shape) for p in places]
    weights = fmt.from_state_dict(ipadapter_tensors([w[0] for w in widths], 16, 8, seed=2))
    embeds = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))

    controller = pack_module(comfyui_root, "attention_patches.controller")

    class Delta(controller.AttentionController):
        """Outermost: per place, how far the output moved from the stock attention."""

        def __init__(self):
            self.delta, self.places_modified = {}, set()

        def __call__(self, call):
            out = call.attend(call.q, call.k, call.v)
            stock = adapter._default_attention(call.q, call.k, call.v, {"n_heads": call.heads})
            self.delta[call.place] = float((out - stock).abs().max())
            return out

    def run(stream):
        to = adapter.with_controller({"cond_or_uncond": [0]}, unet, stream) if stream is not None else {
            "cond_or_uncond": [0]}
        probe = Delta()
        to = adapter.with_controller(to, unet, probe)
        with torch.no_grad():
            return unet(x, torch.tensor([10.0]), context=ctx, transformer_options=to), probe

    plain, _ = run(None)
    off = engine.build_image_stream(weights, places, widths, embeds, scale=0.0)
    # lambda 0: every attn2 returns the stock attention's own output: bit-identical
    assert torch.equal(run(off)[0], plain)
    on = engine.build_image_stream(weights, places, widths, embeds)
    _, probe = run(on)
    assert on.places_modified == set(places) == set(probe.delta)
    # the stock attention recomputed on the same q/k/v is bit-identical, so any nonzero delta is the
    # image term; with LayerNorm'd image tokens it was 0.075 at the smallest here, far above 1e-5
    assert min(probe.delta.values()) > 1e-5, probe.delta
