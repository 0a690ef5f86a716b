"""InsightEdit's image stream (IP-Adapter format + ImageStream controller), without ComfyUI.

References are written from the paper's formula Z = Attn(Q,K_txt,V_txt) + lambda*Attn(Q,K_img,V_img)
and IP-Adapter's published file layout, with plain loops; never from the pack's helpers.
"""

import math

import pytest
import torch
from contextedit.attention_patches.controller import AttentionCall
from contextedit.attention_patches.diffusers_adapter import (
    DiffusersHost,
    attention_modules,
)
from contextedit.attention_patches.image_stream import (
    GateMode,
    ImageStream,
    comfy_ip_order,
    diffusers_ip_order,
)
from contextedit.nodes.errors import InputError
from contextedit.nodes.image_stream.ipadapter_format import (
    check_layout,
    from_state_dict,
    load_ipadapter,
    match_layers,
)
from contextedit.nodes.image_stream.stream_patch import (
    build_image_stream,
    parse_block_weights,
)
from fixtures.tiny_ipadapter import ipadapter_tensors, write_ipadapter
from fixtures.tiny_mag import CTX, TOKENS, sd_like_unet

# ----------------------------------------------------------------------------- published layouts

# h94/IP-Adapter models/ip-adapter_sd15.safetensors: ViT-H image_embeds (1024) -> 4 tokens of 768;
# one (to_k_ip, to_v_ip) per cross-attention layer of SD1.5, numbered by diffusers' attn_processors
# (down_blocks 0-2 x 2 attentions, up_blocks 1-3 x 3 attentions, mid_block).
PUBLISHED_SD15 = {
    "image_proj.proj.weight": (3072, 1024), "image_proj.proj.bias": (3072,),
    "image_proj.norm.weight": (768,), "image_proj.norm.bias": (768,),
    "ip_adapter.1.to_k_ip.weight": (320, 768), "ip_adapter.1.to_v_ip.weight": (320, 768),
    "ip_adapter.3.to_k_ip.weight": (320, 768), "ip_adapter.3.to_v_ip.weight": (320, 768),
    "ip_adapter.5.to_k_ip.weight": (640, 768), "ip_adapter.5.to_v_ip.weight": (640, 768),
    "ip_adapter.7.to_k_ip.weight": (640, 768), "ip_adapter.7.to_v_ip.weight": (640, 768),
    "ip_adapter.9.to_k_ip.weight": (1280, 768), "ip_adapter.9.to_v_ip.weight": (1280, 768),
    "ip_adapter.11.to_k_ip.weight": (1280, 768), "ip_adapter.11.to_v_ip.weight": (1280, 768),
    "ip_adapter.13.to_k_ip.weight": (1280, 768), "ip_adapter.13.to_v_ip.weight": (1280, 768),
    "ip_adapter.15.to_k_ip.weight": (1280, 768), "ip_adapter.15.to_v_ip.weight": (1280, 768),
    "ip_adapter.17.to_k_ip.weight": (1280, 768), "ip_adapter.17.to_v_ip.weight": (1280, 768),
    "ip_adapter.19.to_k_ip.weight": (640, 768), "ip_adapter.19.to_v_ip.weight": (640, 768),
    "ip_adapter.21.to_k_ip.weight": (640, 768), "ip_adapter.21.to_v_ip.weight": (640, 768),
    "ip_adapter.23.to_k_ip.weight": (640, 768), "ip_adapter.23.to_v_ip.weight": (640, 768),
    "ip_adapter.25.to_k_ip.weight": (320, 768), "ip_adapter.25.to_v_ip.weight": (320, 768),
    "ip_adapter.27.to_k_ip.weight": (320, 768), "ip_adapter.27.to_v_ip.weight": (320, 768),
    "ip_adapter.29.to_k_ip.weight": (320, 768), "ip_adapter.29.to_v_ip.weight": (320, 768),
    "ip_adapter.31.to_k_ip.weight": (1280, 768), "ip_adapter.31.to_v_ip.weight": (1280, 768),
}

# ComfyUI's SD1.5 attn2 places (block, id, transformer index) with their inner widths, listed in
# ComfyUI's module order (input blocks, middle block, output blocks)...
COMFY_SD15 = {
    ("input", 1, 0): 320, ("input", 2, 0): 320, ("input", 4, 0): 640, ("input", 5, 0): 640,
    ("input", 7, 0): 1280, ("input", 8, 0): 1280, ("middle", 0, 0): 1280,
    ("output", 3, 0): 1280, ("output", 4, 0): 1280, ("output", 5, 0): 1280, ("output", 6, 0): 640,
    ("output", 7, 0): 640, ("output", 8, 0): 640, ("output", 9, 0): 320, ("output", 10, 0): 320,
    ("output", 11, 0): 320,
}
# ... and the place each file layer n drives (the convention ComfyUI IP-Adapter packs use:
# input 1,2,4,5,7,8, output 3..11, then middle).
SD15_N_TO_PLACE = {
    1: ("input", 1, 0), 3: ("input", 2, 0), 5: ("input", 4, 0), 7: ("input", 5, 0), 9: ("input", 7, 0),
    11: ("input", 8, 0), 13: ("output", 3, 0), 15: ("output", 4, 0), 17: ("output", 5, 0),
    19: ("output", 6, 0), 21: ("output", 7, 0), 23: ("output", 8, 0), 25: ("output", 9, 0),
    27: ("output", 10, 0), 29: ("output", 11, 0), 31: ("middle", 0, 0),
}


def meta_state_dict(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_published_sd15_layout_loads_and_maps_layer_n_to_its_comfy_block():
    assert check_layout(PUBLISHED_SD15) == list(range(1, 32, 2))
    weights = from_state_dict(meta_state_dict(PUBLISHED_SD15), "ip-adapter_sd15.safetensors")
    assert (weights.embed_dim, weights.context_dim, weights.num_tokens) == (1024, 768, 4)
    places = comfy_ip_order(COMFY_SD15)
    assert places == [SD15_N_TO_PLACE[n] for n in range(1, 32, 2)]
    layers = match_layers(weights, places, [(COMFY_SD15[p], 768) for p in places])
    for n, place in SD15_N_TO_PLACE.items():
        assert layers[place][0] is weights.layers[(n - 1) // 2][0]
        assert tuple(layers[place][0].shape) == PUBLISHED_SD15[f"ip_adapter.{n}.to_k_ip.weight"]


def test_published_sdxl_layout_has_70_layers_in_comfy_order():
    # ip-adapter_sdxl: ViT-bigG (1280) -> 4 tokens of 2048; down_blocks.1 (2 attentions x depth 2, 640),
    # down_blocks.2 (2 x 10, 1280), up_blocks.0 (3 x 10, 1280), up_blocks.1 (3 x 2, 640), mid (10, 1280)
    widths = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    shapes = {"image_proj.proj.weight": (8192, 1280), "image_proj.proj.bias": (8192,),
              "image_proj.norm.weight": (2048,), "image_proj.norm.bias": (2048,)}
    for i, w in enumerate(widths):
        shapes[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = (w, 2048)
        shapes[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = (w, 2048)
    comfy = {}
    for block_id, depth, width in ((4, 2, 640), (5, 2, 640), (7, 10, 1280), (8, 10, 1280)):
        comfy.update({("input", block_id, t): width for t in range(depth)})
    comfy.update({("middle", 0, t): 1280 for t in range(10)})
    for block_id, depth, width in ((0, 10, 1280), (1, 10, 1280), (2, 10, 1280), (3, 2, 640), (4, 2, 640), (5, 2, 640)):
        comfy.update({("output", block_id, t): width for t in range(depth)})
    places = comfy_ip_order(comfy)
    assert places[:5] == [("input", 4, 0), ("input", 4, 1), ("input", 5, 0), ("input", 5, 1), ("input", 7, 0)]
    assert places[24] == ("output", 0, 0) and places[59] == ("output", 5, 1) and places[60] == ("middle", 0, 0)
    weights = from_state_dict(meta_state_dict(shapes), "ip-adapter_sdxl.safetensors")
    layers = match_layers(weights, places, [(comfy[p], 2048) for p in places])
    assert len(layers) == 70
    sd15 = from_state_dict(meta_state_dict(PUBLISHED_SD15), "ip-adapter_sd15.safetensors")
    with pytest.raises(InputError, match=r"16 cross-attention layers \(SD1.x\) but the model has 70 \(SDXL\)"):
        match_layers(sd15, places, [(comfy[p], 2048) for p in places])


def test_diffusers_order_is_attn_processors_order():
    """IP-Adapter numbers its layers by position in ``unet.attn_processors``: layer n of the file is
    processor n of that dict."""
    unet = sd_like_unet()
    names = list(unet.attn_processors)
    ours = diffusers_ip_order(attention_modules(unet))
    assert len(ours) == 10  # 3 down + 6 up (layers_per_block + 1) + 1 mid
    for i, name in enumerate(ours):
        assert names.index(name) == 2 * i + 1 and name.endswith("attn2.processor")


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_file_formats_round_trip(tmp_path, suffix):
    path = write_ipadapter(tmp_path / f"ip{suffix}", [16, 16, 32], CTX, 24, tokens=2, seed=3)
    w = load_ipadapter(str(path))
    ref = ipadapter_tensors([16, 16, 32], CTX, 24, tokens=2, seed=3)
    assert w.layer_widths == [16, 16, 32] and w.num_tokens == 2 and w.embed_dim == 24
    assert torch.equal(w.proj_weight, ref["image_proj.proj.weight"].half())
    assert torch.equal(w.layers[2][1], ref["ip_adapter.5.to_v_ip.weight"].half())


def test_foreign_and_other_variant_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    plus = {"image_proj.latents": torch.zeros(1, 16, 8), "image_proj.proj_in.weight": torch.zeros(8, 8),
            "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 8), "ip_adapter.1.to_v_ip.weight": torch.zeros(4, 8)}
    save_file(plus, str(tmp_path / "plus.safetensors"))
    with pytest.raises(InputError, match="IP-Adapter Plus") as e:
        load_ipadapter(str(tmp_path / "plus.safetensors"))
    assert e.value.input_name == "ipadapter"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(InputError, match="not an IP-Adapter file"):
        load_ipadapter(str(tmp_path / "ckpt.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError, match="could not be read"):
        load_ipadapter(str(tmp_path / "junk.safetensors"))
    sd = ipadapter_tensors([16, 16], CTX, 24)
    del sd["ip_adapter.3.to_v_ip.weight"]
    with pytest.raises(InputError, match="layer 3 lacks to_v_ip"):
        from_state_dict(sd)
    sd = ipadapter_tensors([16, 16], CTX, 24)
    sd["ip_adapter.3.lora.weight"] = torch.zeros(1)
    with pytest.raises(InputError, match="unexpected key 'ip_adapter.3.lora.weight'"):
        from_state_dict(sd)


def test_widths_that_do_not_match_the_model_are_refused():
    w = from_state_dict(ipadapter_tensors([16, 16], CTX, 24))
    with pytest.raises(InputError, match=r"layer 3 is \(16, 32\) but the model's cross-attention at b needs \(32, 32\)"):
        match_layers(w, ["a", "b"], [(16, CTX), (32, CTX)])
    with pytest.raises(InputError, match="expects \\[batch, 24\\]") as e:
        w.image_tokens(torch.zeros(1, 32))
    assert e.value.input_name == "clip_vision"


def test_image_tokens_are_ip_adapters_projection():
    """tokens = LayerNorm(reshape(W e + b, [c, C])): by hand, token by token."""
    sd = ipadapter_tensors([16], 8, 5, tokens=3, seed=1)
    sd["image_proj.norm.weight"] = torch.linspace(0.5, 1.5, 8)
    sd["image_proj.norm.bias"] = torch.linspace(-0.1, 0.1, 8)
    sd["image_proj.proj.bias"] = torch.linspace(-0.2, 0.2, 24)
    w = from_state_dict(sd)
    e = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    got = w.image_tokens(e)
    for b in range(2):
        for t in range(3):
            x = [sum(float(sd["image_proj.proj.weight"][t * 8 + c, j]) * float(e[b, j]) for j in range(5))
                 + float(sd["image_proj.proj.bias"][t * 8 + c]) for c in range(8)]
            mean = sum(x) / 8
            var = sum((xi - mean) ** 2 for xi in x) / 8
            for c in range(8):
                ref = (x[c] - mean) / math.sqrt(var + 1e-5) * float(sd["image_proj.norm.weight"][c]) \
                    + float(sd["image_proj.norm.bias"][c])
                # fp32 projection of 5 products + LayerNorm over 8: error ~1e-6 on values of order 1
                assert abs(float(got[b, t, c]) - ref) < 1e-5


# ----------------------------------------------------------------------------- the formula

HEADS, DIM = 2, 4


def ref_attention(q, keys, values, heads):
    """Attn(Q, K, V) for one sample by loops: q [Nq, H*D], keys/values [T, H*D] -> [Nq, H*D]."""
    d = q.shape[1] // heads
    out = torch.zeros(q.shape[0], q.shape[1], dtype=torch.float64)
    for p in range(q.shape[0]):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            scores = [float((q[p, cols].double() * keys[j, cols].double()).sum()) / math.sqrt(d)
                      for j in range(keys.shape[0])]
            top = max(scores)
            ex = [math.exp(s - top) for s in scores]
            for j in range(keys.shape[0]):
                out[p, cols] += ex[j] / sum(ex) * values[j, cols].double()
    return out


def project(tokens, w):
    """tokens [c, C] x W [inner, C]^T by loops."""
    out = torch.zeros(tokens.shape[0], w.shape[0], dtype=torch.float64)
    for t in range(tokens.shape[0]):
        for i in range(w.shape[0]):
            out[t, i] = sum(float(tokens[t, c]) * float(w[i, c]) for c in range(tokens.shape[1]))
    return out


def make_call(place="L", branches=(0, 1), h=2, w=3, sigma=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(branches)
    q = torch.randn(b, h * w, HEADS * DIM, generator=g)
    k = torch.randn(b, 5, HEADS * DIM, generator=g)
    v = torch.randn(b, 5, HEADS * DIM, generator=g)

    def stock(q_, k_, v_):
        return torch.nn.functional.scaled_dot_product_attention(
            q_.view(b, -1, HEADS, DIM).transpose(1, 2), k_.view(b, -1, HEADS, DIM).transpose(1, 2),
            v_.view(b, -1, HEADS, DIM).transpose(1, 2)).transpose(1, 2).reshape(b, -1, HEADS * DIM)

    return AttentionCall(q=q, k=k, v=v, heads=HEADS, is_cross=True, height=h, width=w, latent_height=h,
                         latent_width=w, place=place, branches=list(branches), attend=stock, sigma=sigma)


def stream(scale=1.0, gate=GateMode.EVERYWHERE, mask=None, seed=5, **kw):
    g = torch.Generator().manual_seed(seed)
    wk, wv = torch.randn(HEADS * DIM, 6, generator=g), torch.randn(HEADS * DIM, 6, generator=g)
    image = torch.randn(1, 3, 6, generator=g)
    uncond = torch.randn(1, 3, 6, generator=g)
    ctrl = ImageStream({"L": (wk, wv)}, image, scale=scale, uncond_tokens=uncond, mask=mask, gate=gate, **kw)
    return ctrl, wk, wv, image[0], uncond[0]


def test_output_is_text_attention_plus_lambda_image_attention():
    ctrl, wk, wv, image, uncond = stream(scale=0.7)
    call = make_call(branches=(0, 1))
    z = ctrl(call)
    for b, tokens in ((0, image), (1, uncond)):  # branch 1 (KSampler negative) gets the zero-image tokens
        text = ref_attention(call.q[b], call.k[b], call.v[b], HEADS)
        img = ref_attention(call.q[b], project(tokens, wk), project(tokens, wv), HEADS)
        # fp32 attention over <= 5 keys of unit-scale values vs an fp64 loop: ~1e-6
        torch.testing.assert_close(z[b].double(), text + 0.7 * img, atol=1e-5, rtol=1e-5)
    assert ctrl.calls_modified == 1 and ctrl.places_modified == {"L"}


def test_lambda_zero_is_exactly_the_inner_attention_and_the_term_is_linear_in_lambda():
    call = make_call()
    inner = call.attend(call.q, call.k, call.v)
    assert torch.equal(stream(scale=0.0)[0](call), inner)
    d1 = stream(scale=1.0)[0](call) - inner
    d3 = stream(scale=3.0)[0](call) - inner
    # the same fp32 term scaled by 1 and 3, each added to values of order 1 and subtracted back: ~1e-6
    torch.testing.assert_close(d3, 3.0 * d1, atol=1e-5, rtol=1e-5)
    assert d1.abs().max() > 1e-2


@pytest.mark.parametrize("gate", [GateMode.INSIDE, GateMode.OUTSIDE])
def test_mask_modes_confine_the_term(gate):
    mask = torch.zeros(4, 6)
    mask[:, :2] = 1.0          # left third of a 2x3 grid: column 0 of every row
    ctrl = stream(gate=gate, mask=mask)[0]
    call = make_call(h=2, w=3)
    delta = ctrl(call) - call.attend(call.q, call.k, call.v)
    inside = torch.tensor([c == 0 for r in range(2) for c in range(3)])
    on, off = (inside, ~inside) if gate is GateMode.INSIDE else (~inside, inside)
    # gated-off cells: the term is multiplied by an exact 0, so out == inner bit for bit
    assert torch.equal(delta[:, off], torch.zeros_like(delta[:, off]))
    # gated-on cells: the term is of order 1 (unit-scale random q/k/v), far above 1e-3
    assert (delta[:, on].abs().amax(dim=-1) > 1e-3).all()
    full = stream()[0](call) - call.attend(call.q, call.k, call.v)
    # gate exactly 1 there: the same fp32 operations as the ungated term, bit for bit
    torch.testing.assert_close(delta[:, on], full[:, on], atol=0, rtol=0)


def test_soft_mask_cells_take_the_covered_fraction():
    mask = torch.zeros(2, 6)
    mask[:, :1] = 1.0          # half of column 0's cells (each cell is 1x2 pixels)
    ctrl = stream(gate=GateMode.INSIDE, mask=mask)[0]
    call = make_call(h=2, w=3)
    delta = ctrl(call) - call.attend(call.q, call.k, call.v)
    full = stream()[0](call) - call.attend(call.q, call.k, call.v)
    # half of a term of order 1, in fp32: ~1e-7 rounding
    torch.testing.assert_close(delta[:, [0, 3]], 0.5 * full[:, [0, 3]], atol=1e-6, rtol=1e-5)


def test_sigma_window_and_block_weights():
    call_late = make_call(sigma=torch.tensor([0.5]))
    call_early = make_call(sigma=torch.tensor([10.0]))
    ctrl = stream(sigma_max=5.0, sigma_min=0.1)[0]
    assert torch.equal(ctrl(call_early), call_early.attend(call_early.q, call_early.k, call_early.v))
    assert not torch.equal(ctrl(call_late), call_late.attend(call_late.q, call_late.k, call_late.v))
    off = stream(block_weights={"L": 0.0})[0]
    assert torch.equal(off(call_late), call_late.attend(call_late.q, call_late.k, call_late.v))
    other = make_call(place="not-patched")
    assert torch.equal(stream()[0](other), other.attend(other.q, other.k, other.v))


def test_block_weight_strings():
    places = [("input", 1, 0), ("input", 2, 0), ("output", 3, 0), ("middle", 0, 0)]
    assert parse_block_weights("", places) == dict.fromkeys(places, 1.0)
    w = parse_block_weights("input:0.5, middle:0, output 3: 2", places)
    assert w == {("input", 1, 0): 0.5, ("input", 2, 0): 0.5, ("output", 3, 0): 2.0, ("middle", 0, 0): 0.0}
    assert parse_block_weights("1, 0, 0.25, 1", places)[("output", 3, 0)] == 0.25
    with pytest.raises(InputError, match="lists 3 numbers but the model has 4") as e:
        parse_block_weights("1, 0, 1", places)
    assert e.value.input_name == "block_weights"
    with pytest.raises(InputError, match="'output 9: 1' matches no cross-attention layer"):
        parse_block_weights("output 9: 1", places)
    with pytest.raises(InputError, match="cannot read 'upper:1'"):
        parse_block_weights("upper:1", places)


# ----------------------------------------------------------------------------- diffusers host


def unet_stream(unet, scale, gate="everywhere", mask=None, seed=7):
    modules = attention_modules(unet)
    places = diffusers_ip_order(modules)
    by_name = dict(modules)
    widths = [tuple(by_name[p].to_k.weight.shape) for p in places]
    w = from_state_dict(ipadapter_tensors([wd[0] for wd in widths], CTX, 24, seed=seed))
    embeds = torch.randn(1, 24, generator=torch.Generator().manual_seed(seed))
    return build_image_stream(w, places, widths, embeds, scale=scale, gate=gate, mask=mask,
                              unconditional="none (image on every branch)")


def run_unet(unet, controller, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, TOKENS, CTX, generator=g)
    with torch.no_grad():
        if controller is None:
            return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
        with DiffusersHost(unet, branches=(0,)).attach(controller):
            return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample


class Recorder:
    """Outer controller: keeps (place, inner output, composed output) of each cross-attention."""

    def __init__(self, inner):
        self.inner, self.rows = inner, []

    def __call__(self, call):
        plain = call.attend(call.q, call.k, call.v)
        out = self.inner(call)
        if call.is_cross:
            self.rows.append((call.place, call.height, call.width, plain, out))
        return out


def test_diffusers_unet_lambda_zero_is_unpatched_and_every_layer_gets_the_term():
    unet = sd_like_unet()
    plain = run_unet(unet, None)
    ctrl = unet_stream(unet, 0.0)
    # bit-identical: at lambda 0 the controller returns the host's own attention output unchanged
    assert torch.equal(run_unet(unet, ctrl), plain)
    ctrl = unet_stream(unet, 1.0)
    assert not torch.allclose(run_unet(unet, ctrl), plain, atol=1e-4)
    assert ctrl.places_modified == set(diffusers_ip_order(attention_modules(unet)))


def test_diffusers_unet_outside_mode_leaves_masked_cells_alone():
    unet = sd_like_unet()
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1.0  # left half: at every level (16, 8, 4 cells wide) the boundary falls on a cell edge
    rec = Recorder(unet_stream(unet, 1.0, gate="outside the edit masks", mask=mask))
    run_unet(unet, rec)
    assert len(rec.rows) == 10
    for place, h, w, plain, out in rec.rows:
        delta = (out - plain).reshape(1, h, w, -1)
        assert torch.equal(delta[:, :, : w // 2], torch.zeros_like(delta[:, :, : w // 2])), place
        # the term through random 0.02-scale weights is ~1e-2 at the smallest; 1e-4 only says "present"
        assert delta[:, :, w // 2:].abs().amax() > 1e-4, place


def test_ipadapter_folder_is_registered_additively(tmp_path):
    from types import SimpleNamespace

    from contextedit.nodes.model_folders import register_model_folders, resolve_model

    mine = tmp_path / "shared_ipadapter"
    table = {"ipadapter": ([str(mine)], {".safetensors"})}  # e.g. from extra_model_paths.yaml or another pack
    fp = SimpleNamespace(models_dir=str(tmp_path / "models"), folder_names_and_paths=table)
    register_model_folders(fp)
    paths, exts = fp.folder_names_and_paths["ipadapter"]
    assert paths == [str(mine), str(tmp_path / "models" / "ipadapter")] and {".safetensors", ".bin"} <= exts
    write_ipadapter(mine / "ip-adapter_sd15.bin", [16], CTX, 24)
    assert resolve_model("ipadapter", "ip-adapter_sd15.bin", fp) == str(mine / "ip-adapter_sd15.bin")
