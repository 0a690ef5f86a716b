"""The ContextEdit Attention Mask node on FLUX.1 (Kontext-style) and Qwen-Image models, in-process.

The models are the tiny ComfyUI-class DiTs of tests/fixtures/tiny_dit.py, built 768 wide on the
text side so that a real ComfyUI CLIP object (the tiny SD1.5 checkpoint's CLIP-L: tokenize,
encode_from_tokens, pooled output) can drive the node's real encoding path. What is checked is the
node: model detection, instruction/mask pairing (prompt lines and EDIT_PLAN), the returned
conditioning, the patch on a clone, and the edit's confinement end to end through the sampler.
"""

import pytest
import torch
from host.inprocess import dit_confinement_of, load_checkpoint, pack_module

FAMILIES = ("flux", "qwen_image")
LAT_HW = (12, 16)
PROMPT = "make the hat red\nadd a dog"


@pytest.fixture(scope="module")
def sd15(comfyui_root, tiny_checkpoints):
    return load_checkpoint(comfyui_root, tiny_checkpoints.sd15)


@pytest.fixture(scope="module")
def node(comfyui_root):
    return pack_module(comfyui_root, "nodes.attention.node")


@pytest.fixture(scope="module")
def models(sd15):
    from fixtures import tiny_dit

    return {"flux": tiny_dit.tiny_flux(context_in_dim=768, vec_in_dim=768),
            "qwen_image": tiny_dit.tiny_qwen_image(joint_attention_dim=768)}


def masks():
    m = torch.zeros(2, 96, 128)
    m[0, :48, :64] = 1.0     # instruction 1: top-left quarter
    m[1, 48:, :64] = 1.0     # instruction 2: bottom-left quarter; the right half is outside
    return m


def run(node, model, clip, prompt=PROMPT, plan=None, m=None, **kw):
    args = {"mode": "logits", "routing": "per instruction (FoI)", "resolutions": "32", "start_percent": 0.0,
            "end_percent": 1.0, "strength": 1.0, "apply_to": "text branch (auto)"}
    args.update(kw)
    out = node.AttentionMask.execute(model=model, clip=clip, masks=masks() if m is None else m, prompt=prompt,
                                     plan=plan, **args)
    return out.args if hasattr(out, "args") else out.result


def encode(clip, text):
    out = dict(clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True))
    return out.pop("cond"), out


def latent_shape(family):
    return (1, 16, 1, *LAT_HW) if family == "qwen_image" else (1, 16, *LAT_HW)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_node_detects_the_model_and_returns_segment_conditioning(node, models, sd15, family):
    model, clip = models[family], sd15[1]
    wrappers_before = {k: dict(v) for k, v in model.wrappers.items()}
    patched, positive, prompt = run(node, model, clip)
    assert prompt == PROMPT
    assert patched is not model
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before   # input MODEL unchanged
    ours = [k for keys in patched.wrappers.values() for k in keys if k.startswith("contextedit_dit_confine")]
    assert len(ours) == 1
    parts = [encode(clip, t) for t in ("", "make the hat red", "add a dog")]
    # the same encoder on the same text: bit-identical, each part encoded on its own
    assert torch.equal(positive[0][0], torch.cat([p[0] for p in parts], dim=1))
    assert torch.equal(positive[0][1]["pooled_output"], parts[0][1]["pooled_output"])


def sample(comfy, model, family, positive, ref, steps=6):
    import node_helpers

    positive = node_helpers.conditioning_set_values(positive, {"reference_latents": [ref]}, append=True)
    if family == "flux":
        positive = node_helpers.conditioning_set_values(positive, {"guidance": 3.5})
    noise = torch.randn(latent_shape(family), generator=torch.Generator().manual_seed(5))
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, positive, ref.clone(),
                               seed=5, disable_pbar=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_changing_an_instruction_barely_moves_the_outside_through_the_node(comfyui_root, node, models, sd15, family):
    """Stock pipeline: unpatched model, the prompt encoded as one text (CLIPTextEncode). Node: the
    patched model and the node's conditioning. Instruction 2 changes; the right half is outside."""
    from host.inprocess import import_comfy

    comfy = import_comfy(comfyui_root)
    model, clip = models[family], sd15[1]
    ref = torch.randn(latent_shape(family), generator=torch.Generator().manual_seed(4))
    outside = torch.zeros(LAT_HW, dtype=torch.bool)
    outside[:, LAT_HW[1] // 2:] = True

    def change(out_a, out_b):
        return (out_a - out_b)[..., outside].abs().mean().item()

    other = "make the hat red\nturn the car into a boat"
    stock = change(*(sample(comfy, model, family, clip.encode_from_tokens_scheduled(clip.tokenize(p)), ref)
                     for p in (PROMPT, other)))
    confined = []
    for p in (PROMPT, other):
        patched, positive, _ = run(node, model, clip, prompt=p)
        confined.append(sample(comfy, patched, family, positive, ref))
    ours = change(*confined)
    assert stock >= 10 * ours, (stock, ours)


def test_a_plan_pairs_masks_as_for_sd(node, models, sd15):
    plan_mod = pack_module(None, "nodes.executability.plan")
    plan = plan_mod.EditPlan(items=(plan_mod.EditItem("make the hat red", True),
                                    plan_mod.EditItem("remove the sky", False, reason="no sky"),
                                    plan_mod.EditItem("add a dog", True)))
    m = torch.zeros(3, 96, 128)
    m[0, :48, :64] = 1.0
    m[2, 48:, :64] = 1.0
    _patched, positive, _ = run(node, models["flux"], sd15[1], prompt="", plan=plan, m=m)
    parts = [encode(sd15[1], t)[0] for t in ("", "make the hat red", "add a dog")]
    # bit-identical: the same encoder on the same texts, the non-executable item dropped
    assert torch.equal(positive[0][0], torch.cat(parts, dim=1))

    none = plan_mod.EditPlan(items=(plan_mod.EditItem("remove the sky", False),))
    unpatched, _empty, text = run(node, models["flux"], sd15[1], prompt="", plan=none, m=m[:1])
    assert text == "" and not any(k.startswith("contextedit_dit_confine")
                                  for keys in unpatched.wrappers.values() for k in keys)


def test_unsupported_models_and_mismatched_text_encoders_are_named(node, models, sd15):
    from fixtures import tiny_dit

    errors = pack_module(None, "nodes.errors")
    with pytest.raises(errors.InputError, match="Flux.2") as e:
        run(node, tiny_dit.tiny_flux2(), sd15[1])
    assert e.value.input_name == "model"
    with pytest.raises(errors.InputError, match="768-wide") as e:
        run(node, tiny_dit.tiny_flux(), sd15[1])     # a 32-wide FLUX.1 with a 768-wide CLIP
    assert e.value.input_name == "clip"
    with pytest.raises(errors.InputError) as e:
        run(node, models["qwen_image"], sd15[1], m=masks()[:1].repeat(3, 1, 1))   # 3 masks, 2 instructions
    assert e.value.input_name == "masks"
    dit_node = pack_module(None, "nodes.attention.dit_node")
    assert dit_node.dit_family(sd15[0]) is None     # SD models keep the UNet path


def test_whole_prompt_routing_gives_one_segment_over_the_union_of_the_masks(node, models, sd15):
    clip = sd15[1]
    patched, positive, _ = run(node, models["qwen_image"], clip, routing="whole prompt")
    parts = [encode(clip, t)[0] for t in ("", PROMPT)]
    # bit-identical: the same encoder on the same texts
    assert torch.equal(positive[0][0], torch.cat(parts, dim=1))
    conf = dit_confinement_of(patched)
    assert conf.segments.instructions == 1
    assert torch.equal(conf.masks[0], masks().amax(dim=0))


def test_dit_blocks_text_reads_as_the_blocks_it_names(comfyui_root):
    dit_node = pack_module(comfyui_root, "nodes.attention.dit_node")
    errors = pack_module(None, "nodes.errors")
    flux, qwen = {"double": 3, "single": 4}, {"double": 2}
    parse = dit_node.parse_dit_blocks
    assert parse("", flux) is None and parse(" All ", flux) is None
    assert parse("double", flux) == {("double", 0), ("double", 1), ("double", 2)}
    assert parse("single:1-2, double:0", flux) == {("single", 1), ("single", 2), ("double", 0)}
    assert parse("single:3", flux) == {("single", 3)}
    for bad, said in (("triple", "no block type"), ("double:3", "outside"), ("single:2-1", "outside"),
                      ("double:a", "not an index"), ("single", "no block type")):
        with pytest.raises(errors.InputError, match=said) as e:
            parse(bad, qwen if bad == "single" else flux)
        assert e.value.input_name == "dit_blocks"


@pytest.mark.parametrize("family", FAMILIES)
def test_dit_blocks_confines_only_the_named_blocks(comfyui_root, node, models, sd15, family):
    """With 'double:0' only the first block's attention is confined: one confined attention call per
    model call instead of one per block, and an output unlike both the unpatched and the all-blocks one."""
    from host.inprocess import import_comfy

    comfy = import_comfy(comfyui_root)
    model, clip = models[family], sd15[1]
    dm = model.get_model_object("diffusion_model")
    counts = ({"double": len(dm.transformer_blocks)} if family == "qwen_image"
              else {"double": len(dm.double_blocks), "single": len(dm.single_blocks)})
    assert pack_module(None, "attention_patches.comfy_dit_adapter").joint_block_counts(model) == counts
    n_blocks = sum(counts.values())
    assert n_blocks > 1
    ref = torch.randn(latent_shape(family), generator=torch.Generator().manual_seed(4))
    every, positive, _ = run(node, model, clip)
    first, positive_first, _ = run(node, model, clip, dit_blocks="double:0")
    assert torch.equal(positive[0][0], positive_first[0][0])   # the conditioning does not depend on it
    outs = {}
    for name, m in (("unpatched", model), ("every", every), ("first", first)):
        outs[name] = sample(comfy, m, family, positive, ref, steps=1)   # cfg 1, one step: one model call
    assert dit_confinement_of(every).calls == n_blocks
    assert dit_confinement_of(first).calls == 1 and dit_confinement_of(first).blocks == {("double", 0)}
    scale = outs["unpatched"].abs().max()
    # each patch changes the output: measured 0.095 / 0.108 (FLUX.1) and 0.062 / 0.056 (Qwen-Image) of
    # scale; 1e-4 only rules out rounding-level differences
    assert (outs["first"] - outs["unpatched"]).abs().max() > 1e-4 * scale
    assert (outs["first"] - outs["every"]).abs().max() > 1e-4 * scale


@pytest.mark.parametrize("family", FAMILIES)
def test_a_neg_instruction_never_acts_in_any_routing(comfyui_root, node, models, sd15, family):
    """CAMILA's [NEG] is an all-black mask: with the prompt connected beside a plan whose item 2 is
    [NEG] (items 1 and 3 executable, so 'whole prompt' joins several instructions), changing only
    item 2's words leaves the sampled output bit-identical in every routing the node offers, on
    FLUX.1 and Qwen-Image; changing item 1's words does change it."""
    from host.inprocess import import_comfy

    comfy = import_comfy(comfyui_root)
    plan_mod = pack_module(None, "nodes.executability.plan")
    model, clip = models[family], sd15[1]
    ref = torch.randn(latent_shape(family), generator=torch.Generator().manual_seed(4))
    routings = next(i for i in node.AttentionMask.define_schema().inputs if i.id == "routing").options
    m = torch.zeros(3, 96, 128)
    m[0, :48, :64] = 1.0
    m[1, :, 64:] = 1.0        # the [NEG] item's mask (dropped with it)
    m[2, 48:, :64] = 1.0
    texts = ("make the hat red\nturn the dog into a cat\nadd a dog",
             "make the hat red\nturn the car into a boat\nadd a dog",
             "make the hat blue\nturn the dog into a cat\nadd a dog")
    for routing in routings:
        outs = []
        for text in (texts if routing == routings[0] else texts[:2]):
            first, second, third = text.split("\n")
            plan = plan_mod.EditPlan(items=(plan_mod.EditItem(first, True), plan_mod.EditItem(second, False),
                                            plan_mod.EditItem(third, True)))
            patched, positive, _ = run(node, model, clip, prompt=text, plan=plan, m=m, routing=routing)
            outs.append(sample(comfy, patched, family, positive, ref, steps=1))
        assert torch.equal(outs[0], outs[1]), (routing, float((outs[0] - outs[1]).abs().max()))
        if len(outs) > 2:
            # one step of a random DiT: a changed executable instruction moves the output far above rounding
            assert not torch.allclose(outs[0], outs[2], atol=1e-5), routing
