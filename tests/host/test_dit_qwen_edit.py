"""Qwen-Image-Edit with the picture: the Attention Mask node's image-aware segments, in-process.

The text encoder is ComfyUI's own Qwen-Image CLIP (tokenizer, edit template, template trimming,
Qwen2.5-VL language model with picture positions), tiny and random (tests/fixtures/tiny_dit.py);
the DiT is the tiny ComfyUI QwenImage model. The stock reference is ComfyUI's own
TextEncodeQwenImageEditPlus node run on the same CLIP and image.
"""

import importlib

import pytest
import torch
from host.inprocess import dit_confinement_of, import_comfy, pack_module

LAT_HW = (12, 16)
TOK_HW = (6, 8)
PROMPT = "make the hat red\nadd a dog"


@pytest.fixture(scope="module")
def comfy(comfyui_root):
    return import_comfy(comfyui_root)


@pytest.fixture(scope="module")
def clip(comfy):
    from fixtures import tiny_dit

    return tiny_dit.tiny_qwen_vl_clip()


@pytest.fixture(scope="module")
def dit(comfy):
    from fixtures import tiny_dit

    return tiny_dit.tiny_qwen_image()


@pytest.fixture(scope="module")
def mods(comfy):
    return (pack_module(None, "nodes.attention.node"), pack_module(None, "nodes.attention.dit_node"),
            pack_module(None, "attention_patches.comfy_adapter"))


@pytest.fixture(scope="module")
def stock_plus(comfy):
    return importlib.import_module("comfy_extras.nodes_qwen").TextEncodeQwenImageEditPlus


def picture():
    """A 96 x 128 RGB IMAGE (the pixel size of a 12 x 16 latent)."""
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 96, 128, 3, generator=g)


def stock_encode(stock_plus, clip, text, image):
    out = stock_plus.execute(clip, text, image1=image)
    cond = (out.args if hasattr(out, "args") else out.result)[0]
    return cond[0][0]


def masks():
    m = torch.zeros(2, 96, 128)
    m[0, :48, :64] = 1.0     # instruction 1: top-left quarter
    m[1, 48:, :64] = 1.0     # instruction 2: bottom-left quarter; the right half is outside
    return m


def run_node(node, model, clip, image, prompt=PROMPT, m=None):
    out = node.AttentionMask.execute(model=model, clip=clip, masks=masks() if m is None else m, prompt=prompt,
                                     mode="logits", routing="per instruction (FoI)", resolutions="32",
                                     start_percent=0.0, end_percent=1.0, strength=1.0,
                                     apply_to="text branch (auto)", plan=None, image=image)
    return out.args if hasattr(out, "args") else out.result


def test_each_segment_is_encoded_as_text_encode_qwen_image_edit_plus_encodes_it(mods, clip, stock_plus):
    _node, dit_node, _ = mods
    encode = dit_node.qwen_edit_encoder(clip, picture())
    for text in ("", "make the hat red"):
        ours, _extras, ids = encode(text)
        # the same CLIP, template, picture scaling and tokens: bit-identical
        assert torch.equal(ours, stock_encode(stock_plus, clip, text, picture()))
        assert ids.count("picture") == 1


def test_the_picture_rows_do_not_depend_on_the_text_after_them(mods, clip):
    """The Qwen2.5-VL encoder is causal: measured, not assumed."""
    _node, dit_node, _ = mods
    encode = dit_node.qwen_edit_encoder(clip, picture())
    seg = pack_module(None, "nodes.attention.dit_conditioning").encode_prefixed_segments(
        encode, ["make the hat red", "add a dog"])
    n_p = seg.segments.shared[0][1]
    # 96 x 128 -> VL copy ~384^2 area -> 336 x 448 -> 24 x 32 patches -> 12 x 16 = 192 merged tokens
    assert n_p > 192
    rows = [encode(t)[0] for t in ("", "make the hat red", "add a dog")]
    scale = rows[0][:, :n_p].abs().max()
    for other in rows[1:]:
        # same inputs before row n_p, different sequence lengths: only the kernels' blocking over a
        # longer (causally masked) range differs; fp32 rounding, measured 1.2e-6 absolute on a
        # scale of 3 (4e-7 relative); 1e-5 x scale bounds it with margin, and a bidirectional
        # encoder would move these rows by O(scale)
        assert (other[:, :n_p] - rows[0][:, :n_p]).abs().max() <= 1e-5 * scale
    # the text after the prefix does change its own rows (the check above could fail)
    assert not torch.allclose(rows[1][:, n_p:n_p + 4], rows[2][:, n_p:n_p + 4])


def test_the_node_returns_the_picture_once_and_each_instruction_after_it(mods, dit, clip):
    node, dit_node, _ = mods
    patched, positive, prompt = run_node(node, dit, clip, picture())
    assert prompt == PROMPT
    conf = dit_confinement_of(patched)
    encode = dit_node.qwen_edit_encoder(clip, picture())
    full = [encode(t)[0] for t in ("", "make the hat red", "add a dog")]
    n_p = conf.segments.shared[0][1]
    want = torch.cat([full[0][:, :n_p]] + [f[:, n_p:] for f in full], dim=1)
    # the same encoder on the same texts: bit-identical
    assert torch.equal(positive[0][0], want)
    assert conf.segments.offsets == (n_p,) * 3
    starts = [n_p + sum(f.shape[1] - n_p for f in full[:i]) for i in range(3)]
    assert conf.segments.segments == tuple((s, s + f.shape[1] - n_p) for s, f in zip(starts, full))
    # without the image the node keeps the text-only path (no shared part, no offsets)
    text_only = dit_confinement_of(run_node(node, dit, clip, None)[0])
    assert text_only.segments.shared == () and text_only.segments.offsets == ()


def test_the_image_is_refused_clearly_with_a_foreign_clip_or_a_batch(mods, dit, clip, comfyui_root, tiny_checkpoints):
    from host.inprocess import load_checkpoint

    node, _dit_node, _ = mods
    errors = pack_module(None, "nodes.errors")
    sd15_clip = load_checkpoint(comfyui_root, tiny_checkpoints.sd15)[1]
    with pytest.raises(errors.InputError, match="qwen_image") as e:
        run_node(node, dit, sd15_clip, picture())
    assert e.value.input_name == "clip"
    with pytest.raises(errors.InputError, match="one picture") as e:
        run_node(node, dit, clip, picture().repeat(2, 1, 1, 1))
    assert e.value.input_name == "image"


def test_flux_ignores_the_image_and_says_so(mods, comfyui_root, tiny_checkpoints, caplog):
    from fixtures import tiny_dit
    from host.inprocess import load_checkpoint

    node, _dit_node, _ = mods
    sd15_clip = load_checkpoint(comfyui_root, tiny_checkpoints.sd15)[1]
    flux = tiny_dit.tiny_flux(context_in_dim=768, vec_in_dim=768)
    with caplog.at_level("INFO"):
        _, with_image, _ = run_node(node, flux, sd15_clip, picture())
    assert any("'image' is used only with Qwen-Image" in r.getMessage() for r in caplog.records)
    _, without, _ = run_node(node, flux, sd15_clip, None)
    # the same text-only encoding either way: bit-identical
    assert torch.equal(with_image[0][0], without[0][0])


def call(adapter, model, x, context, ref, sigma=0.7):
    to = adapter.direct_transformer_options(model)
    to["cond_or_uncond"] = [0]
    to["sigmas"] = torch.full((1,), sigma)
    with torch.no_grad():
        return model.model.apply_model(x, torch.full((1,), sigma), c_crossattn=context, transformer_options=to,
                                       ref_latents=[ref])


def first_block(model, run):
    """(text stream, image stream) outputs of the first transformer block during ``run()``."""
    seen = []
    handle = model.model.diffusion_model.transformer_blocks[0].register_forward_hook(
        lambda _m, _i, out: seen.append((out[0].detach().clone(), out[1].detach().clone())))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_one_all_covering_mask_equals_the_unpatched_model_on_the_standalone_encoding(comfy, mods, clip,
                                                                                     stock_plus):
    """Stock: the unpatched model on TextEncodeQwenImageEditPlus's [P | S1]. Patched: one mask over
    everything and the node's [P | S0 | S1]. Image queries and S1's text queries then see exactly
    P, S1 (at their standalone positions) and every image token, as in the stock run. P's own text
    queries see P and the image only (so nothing of an instruction reaches pixels outside the masks
    through P): P's text-stream rows differ from the stock run's, and with them every block after
    the first. So: a one-block model equals the stock one as a whole; in a two-block model the
    first block's image stream and S1 rows are equal and P's rows are not (the two-block model's
    final output then differs by 7.8e-5 of its scale on these weights, measured, not asserted)."""
    from fixtures import tiny_dit

    node, _dit_node, adapter = mods
    g = torch.Generator().manual_seed(1)
    x, ref = torch.randn(1, 16, 1, *LAT_HW, generator=g), torch.randn(1, 16, 1, *LAT_HW, generator=g)
    image, text = picture(), "make the hat red"
    stock = stock_encode(stock_plus, clip, text, image)
    every = torch.ones(1, 96, 128)

    one_block = tiny_dit.tiny_qwen_image(num_layers=1)
    patched, positive, _ = run_node(node, one_block, clip, image, prompt=text, m=every)
    got, want = call(adapter, patched, x, positive[0][0], ref), call(adapter, one_block, x, stock, ref)
    # the same attention over the same keys, gathered and split differently, text RoPE applied as
    # two composed rotations, and the prefix rows from a shorter encoding (4e-7 relative, see the
    # causality test): fp32 rounding, measured 1.5e-7 x the output scale; 2e-5 x scale bounds it
    assert (got - want).abs().max() <= 2e-5 * want.abs().max()

    two_blocks = tiny_dit.tiny_qwen_image()
    patched, positive, _ = run_node(node, two_blocks, clip, image, prompt=text, m=every)
    conf = dit_confinement_of(patched)
    n_p = conf.segments.shared[0][1]
    s1 = conf.segments.segments[1]
    txt_p, img_p = first_block(two_blocks, lambda: call(adapter, patched, x, positive[0][0], ref))
    txt_s, img_s = first_block(two_blocks, lambda: call(adapter, two_blocks, x, stock, ref))
    scale = img_s.abs().max()
    # as above: regrouping and rotation rounding, one block (measured 6e-8 x scale); 2e-5 x scale
    assert (img_p - img_s).abs().max() <= 2e-5 * scale
    assert (txt_p[:, s1[0]:s1[1]] - txt_s[:, n_p:]).abs().max() <= 2e-5 * txt_s.abs().max()
    # P's rows: 10x the equality bound above (measured 3.5e-3 x scale)
    assert (txt_p[:, :n_p] - txt_s[:, :n_p]).abs().max() > 2e-4 * txt_s.abs().max()


def test_changing_an_instruction_barely_moves_the_outside_with_the_picture(comfy, mods, dit, clip, stock_plus):
    """End to end through the sampler: stock = the unpatched model on TextEncodeQwenImageEditPlus's
    encoding of the whole prompt; ours = the node's model and conditioning, with the image.
    Instruction 2 changes; the right half is outside both masks."""
    import node_helpers

    node, _dit_node, _ = mods
    image = picture()
    ref = torch.randn(1, 16, 1, *LAT_HW, generator=torch.Generator().manual_seed(4))
    outside = torch.zeros(LAT_HW, dtype=torch.bool)
    outside[:, LAT_HW[1] // 2:] = True

    def sample(model, positive):
        positive = node_helpers.conditioning_set_values(positive, {"reference_latents": [ref]}, append=True)
        noise = torch.randn(1, 16, 1, *LAT_HW, generator=torch.Generator().manual_seed(5))
        return comfy.sample.sample(model, noise, 6, 1.0, "euler", "simple", positive, positive, ref.clone(),
                                   seed=5, disable_pbar=True)

    def change(a, b):
        return (a - b)[..., outside].abs().mean().item()

    other = "make the hat red\nturn the car into a boat"
    stock = change(*(sample(dit, [[stock_encode(stock_plus, clip, p, image), {}]]) for p in (PROMPT, other)))
    ours = []
    for p in (PROMPT, other):
        patched, positive, _ = run_node(node, dit, clip, image, prompt=p)
        ours.append(sample(patched, positive))
    ours = change(*ours)
    assert stock >= 10 * ours, (stock, ours)
