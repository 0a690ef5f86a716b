"""The MAG Edit node inside ComfyUI (in-process, CPU, the tiny SD1.5 checkpoint at 16x16 latents):
outputs, inputs and weights left untouched, gradients through ComfyUI's own (inference-tensor)
weights, input checks naming the input, and cancellation through ComfyUI's interrupt flag.
(test_mag_comfy.py covers the engine's numbers on the ComfyUI denoiser.)"""

import dataclasses
import threading

import pytest
import torch

from host.inprocess import load_checkpoint, pack_module

SOURCE, TARGET = "a cat on a table", "a dog on a table"


@pytest.fixture(scope="module")
def sd15(comfyui_root, tiny_checkpoints):
    """The tiny SD1.5 model with its UNet weights as inference tensors, as CheckpointLoaderSimple
    gives them inside ComfyUI (restored afterwards: the checkpoint is shared with other tests)."""
    model, clip, vae = load_checkpoint(comfyui_root, tiny_checkpoints.sd15)
    import comfy.utils
    dm = model.model.diffusion_model
    shared = dict(dm.named_parameters())
    with torch.inference_mode():
        for k, v in shared.items():
            comfy.utils.set_attr_param(dm, k, v.detach().clone())
    try:
        yield model, clip, vae
    finally:
        for k, v in shared.items():
            comfy.utils.set_attr(dm, k, v)


@pytest.fixture(scope="module")
def node(comfyui_root):
    return pack_module(comfyui_root, "nodes.mag_edit.node")


def inputs(seed=0):
    with torch.inference_mode():  # ComfyUI's node outputs are inference tensors
        latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))}
        mask = torch.zeros(1, 128, 128)
        mask[:, 32:96, 32:96] = 1.0
    return latent, mask


def run(node, model, clip, latent, mask, **kw):
    args = {"source_prompt": SOURCE, "target_prompt": TARGET, "preset": "fast", "edit_words": "",
            "negative_words": "", "steps": 3, "seed": 0, "iterations": 2, "optimize_until": 0.67}
    args.update(kw)
    with torch.inference_mode():  # as ComfyUI runs every node
        out = node.MagEdit.execute(model=model, clip=clip, latent=latent, mask=mask, **args)
    return out.args if hasattr(out, "args") else out.result


def test_node_edits_inside_the_mask_and_changes_no_input(comfyui_root, sd15, node):
    model, clip, _ = sd15
    dm = model.model.diffusion_model
    latent, mask = inputs()
    latent_copy, mask_copy = latent["samples"].clone(), mask.clone()
    weights = {k: v.clone() for k, v in list(dm.state_dict().items())[:8]}
    params = dict(dm.named_parameters())
    clip_weights = {k: v.clone() for k, v in list(clip.cond_stage_model.state_dict().items())[:4]}
    options = repr(model.model_options)

    out_latent, image = run(node, model, clip, latent, mask)

    samples = out_latent["samples"]
    assert samples.shape == latent["samples"].shape and torch.isfinite(samples).all()
    assert image.shape == (1, 128, 2 * 128 + 4, 3)
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    # direct inversion reconstructs exactly, and the last step blends: outside the dilated mask
    # the source comes back, inside it the latent was edited
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[3:13, 3:13] = False
    torch.testing.assert_close(samples[..., outside], latent_copy[..., outside], atol=2e-3, rtol=0)
    assert (samples[..., 4:12, 4:12] - latent_copy[..., 4:12, 4:12]).abs().max() > 1e-2
    # nothing the node was given changed
    assert torch.equal(latent["samples"], latent_copy) and torch.equal(mask, mask_copy)
    assert set(out_latent) == set(latent)
    for k, v in list(dm.state_dict().items())[:8]:
        assert torch.equal(v, weights[k])
    assert all(p is params[k] for k, p in dm.named_parameters())
    assert next(dm.parameters()).is_inference()
    for k, v in list(clip.cond_stage_model.state_dict().items())[:4]:
        assert torch.equal(v, clip_weights[k])
    assert repr(model.model_options) == options


def test_latent_gets_a_gradient_through_comfys_inference_weights(comfyui_root, sd15):
    import comfy.model_management as mm

    cd = pack_module(comfyui_root, "nodes.mag_edit.comfy_denoiser")
    model, clip, _ = sd15
    with torch.inference_mode():
        patcher = model.clone()
        mm.load_models_gpu([patcher])
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(TARGET), show_pbar=False)[0][0]
        with torch.inference_mode(False):
            den = cd.ComfyDenoiser(patcher)
            with den.autograd_ready(), torch.enable_grad():
                x = torch.randn(1, 4, 16, 16).requires_grad_(True)
                eps = den(x, 5.0, cond.clone())
                (grad,) = torch.autograd.grad(eps.square().mean(), [x])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def bad(case, sd15, ip2p_model):
    model, clip, _ = sd15
    latent, mask = inputs()
    kw = {}
    if case == "mask_shape":
        mask = torch.ones(1, 128, 64)
    elif case == "mask_empty":
        mask = torch.zeros(1, 128, 128)
    elif case == "mask_count":
        mask = torch.ones(3, 128, 128)
    elif case == "edit_word_absent":
        kw["edit_words"] = "giraffe"
    elif case == "source_empty":
        kw["source_prompt"] = "  "
    elif case == "target_empty":
        kw["target_prompt"] = ""
    elif case == "no_new_word":
        kw["target_prompt"] = SOURCE
    elif case == "not_a_model":
        model = object()
    elif case == "ip2p_model":
        model = ip2p_model
    elif case == "latent":
        latent = {"samples": torch.zeros(1, 16, 16)}
    elif case == "guidance":
        kw["guidance"] = 0.5
    elif case == "preset":
        kw["preset"] = "slowest"
    elif case == "steps":
        kw["steps"] = 1
    elif case == "constraint":
        kw["constraint"] = "area ratio"
    return model, clip, latent, mask, kw


BAD = {"mask_shape": "mask", "mask_empty": "mask", "mask_count": "mask", "edit_word_absent": "edit_words",
       "source_empty": "source_prompt", "target_empty": "target_prompt", "no_new_word": "target_prompt",
       "not_a_model": "model", "ip2p_model": "model", "latent": "latent", "guidance": "guidance",
       "preset": "preset", "steps": "steps", "constraint": "constraint"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_name_the_input(comfyui_root, tiny_checkpoints, sd15, node, case):
    errors = pack_module(comfyui_root, "nodes.errors")
    ip2p = load_checkpoint(comfyui_root, tiny_checkpoints.ip2p)[0] if case == "ip2p_model" else None
    model, clip, latent, mask, kw = bad(case, sd15, ip2p)
    with pytest.raises(errors.InputError) as err:
        run(node, model, clip, latent, mask, **kw)
    assert err.value.input_name == BAD[case], str(err.value)


def test_steps_zero_means_the_presets_count(node):
    assert node.build_config("fast", 0).steps == 30
    assert node.build_config("paper", 0).steps == 50
    cfg = node.build_config("fast", 12, optimize_until=0.5)
    assert cfg.steps == 12 and cfg.step_counts()["optimize"] == 6 and cfg.inversion == "direct"


def test_constraint_input_is_listed_and_reaches_the_engine(node):
    spec = node.MagEdit.INPUT_TYPES()["optional"]["constraint"]
    options = spec[1].get("options", spec[0])
    assert list(options) == ["token ratio", "spatial ratio", "both"]
    assert spec[1]["default"] == "token ratio"
    for name, engine in (("token ratio", "token"), ("spatial ratio", "spatial"), ("both", "both")):
        assert node.build_config("paper", 0, constraint=name).constraint == engine
        assert node.build_config("fast", 0, constraint=name).constraint == engine


def test_node_defaults_give_the_paper_preset_unchanged(comfyui_root, node):
    """preset=paper with every other widget at its default is exactly MAG-Edit's settings
    (pinned field by field in tests/test_mag_edit.py::test_paper_preset_is_pinned)."""
    mag = pack_module(comfyui_root, "nodes.mag_edit.mag")
    optional = node.MagEdit.INPUT_TYPES()["optional"]
    defaults = {k: optional[k][1]["default"] for k in ("iterations", "scale", "optimize_until", "blend_from",
                                                        "guidance", "ratio_target", "constraint")}
    steps = node.MagEdit.INPUT_TYPES()["required"]["steps"][1]["default"]
    cfg = node.build_config("paper", steps, **defaults)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(mag.PRESETS["paper"])


def test_spatial_ratio_constraint_edits_differently(comfyui_root, sd15, node):
    model, clip, _ = sd15
    latent, mask = inputs()
    token, _ = run(node, model, clip, latent, mask, ratio_target=1.0)
    spatial, _ = run(node, model, clip, latent, mask, ratio_target=1.0, constraint="spatial ratio")
    inside = (token["samples"] - spatial["samples"])[..., 4:12, 4:12]
    assert float(inside.abs().max()) > 1e-3  # another loss, another latent update inside the mask


def test_interrupt_from_the_progress_callback_stops_at_once_and_next_run_works(comfyui_root, sd15, node,
                                                                               progress_hook):
    import comfy.model_management as mm

    model, clip, _ = sd15
    dm = model.model.diffusion_model
    params = dict(dm.named_parameters())
    latent, mask = inputs()

    def interrupt_at_second(value, total):
        if value == 2:
            mm.interrupt_current_processing(True)

    calls = progress_hook(interrupt_at_second)
    with pytest.raises(mm.InterruptProcessingException):
        run(node, model, clip, latent, mask)
    assert [v for v, _ in calls] == [1, 2]  # no further step after the flag was set
    assert calls[0][1] == 9  # 3 units (inversion, reconstruction, edit) per step
    assert all(p is params[k] for k, p in dm.named_parameters())  # the weights were put back

    mm.interrupt_current_processing(False)
    calls.clear()
    progress_hook(lambda value, total: None)
    out_latent, _image = run(node, model, clip, latent, mask)
    assert out_latent["samples"].shape == latent["samples"].shape
    assert [v for v, _ in calls] == list(range(1, 10))


def test_interrupt_from_another_thread_stops_inside_the_running_step(comfyui_root, sd15, node, progress_hook):
    """The flag set while a UNet pass runs (as POST /interrupt does) stops the node before that
    step ends: every ComfyUI layer checks it."""
    import comfy.model_management as mm

    model, clip, _ = sd15
    latent, mask = inputs()
    started = threading.Event()

    def on_progress(value, total):
        if value == 1:
            started.set()

    calls = progress_hook(on_progress)
    timer = threading.Thread(target=lambda: started.wait(60) and mm.interrupt_current_processing(True))
    timer.start()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(node, model, clip, latent, mask, steps=6)
    finally:
        timer.join()
    assert len(calls) <= 2  # stopped within the step that was running when the flag was set


def mag_graph(ckpt_name, steps):
    """EmptyLatentImage as the source (no upload needed) -> MAG Edit -> VAE Decode -> Save."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "3": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "4": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "5": {"class_type": "MaskComposite", "inputs": {"destination": ["3", 0], "source": ["4", 0], "x": 32,
                                                        "y": 32, "operation": "add"}},
        "6": {"class_type": "ContextEditMAGEdit", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "source_prompt": SOURCE, "target_prompt": TARGET,
            "latent": ["2", 0], "mask": ["5", 0], "preset": "fast", "edit_words": "", "negative_words": "",
            "steps": steps, "seed": 0, "iterations": 2, "optimize_until": 0.5}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "mag_interrupt"}},
    }


def test_post_interrupt_cancels_a_running_edit_and_the_next_one_runs(comfy_server, tiny_checkpoints):
    import time

    from host.server import PromptFailed

    # 100 steps = 300 progress units and ~100 optimisation forwards: minutes on CPU if not stopped
    prompt_id = comfy_server.queue_prompt(mag_graph(tiny_checkpoints.sd15_name, steps=100))
    t0 = time.monotonic()
    while not any(item[1] == prompt_id for item in comfy_server._get("/queue").json().get("queue_running", [])):
        assert time.monotonic() - t0 < 60, "the prompt never started"
        time.sleep(0.1)
    time.sleep(3.0)
    comfy_server.interrupt()
    t_interrupt = time.monotonic()
    with pytest.raises(PromptFailed) as err:
        comfy_server.wait(prompt_id, timeout=120)
    stopped_after = time.monotonic() - t_interrupt
    kinds = {kind: data for kind, data in err.value.status.get("messages", [])}
    assert "execution_interrupted" in kinds, err.value
    assert kinds["execution_interrupted"]["node_type"] == "ContextEditMAGEdit"
    assert stopped_after < 15, f"took {stopped_after:.1f} s to stop"

    entry = comfy_server.run(mag_graph(tiny_checkpoints.sd15_name, steps=2), timeout=300)
    refs = comfy_server.output_images(entry, "8")
    assert len(refs) == 1 and comfy_server.get_image(**refs[0]).size == (128, 128)


def test_a_mask_batch_gives_one_mask_per_edit_word(node):
    """As many masks as edit words (more than one): mask i scores edit word i and the edit region is
    their union; one mask serves every word; any other count names the input."""
    errors = pack_module(None, "nodes.errors")
    left, right = torch.zeros(1, 128, 128), torch.zeros(1, 128, 128)
    left[:, :, :48] = 1.0
    right[:, :, 80:] = 1.0
    region, per_word = node.masks_for_words(torch.cat([left, right]), (1, 4, 16, 16), ["black", "dog"])
    assert per_word.shape == (2, 16, 16)
    assert torch.equal(per_word[0] > 0.5, left[0, ::8, ::8] > 0.5) and torch.equal(per_word[1] > 0.5,
                                                                                     right[0, ::8, ::8] > 0.5)
    assert torch.equal(region[0], per_word.amax(dim=0))
    region, per_word = node.masks_for_words(left, (1, 4, 16, 16), ["black", "dog"])
    assert per_word is None and region.shape == (1, 16, 16)
    with pytest.raises(errors.InputError) as e:
        node.masks_for_words(torch.cat([left, right, left]), (1, 4, 16, 16), ["black", "dog"])
    assert e.value.input_name == "mask" and "2 edit words" in str(e.value)
    with pytest.raises(errors.InputError, match="edit word .dog."):
        node.masks_for_words(torch.cat([left, torch.zeros(1, 128, 128)]), (1, 4, 16, 16), ["black", "dog"])
