"""The MAG-Edit engine on a real ComfyUI MODEL (in-process, CPU): the ComfyUI denoiser adapter
gives eps = (x - x0)/sigma, gradients reach the latent although ComfyUI's weights and inputs are
inference tensors (notes/comfy_core_api.md finding 1), and the model is left as it was."""

import pytest
import torch

from host.inprocess import load_checkpoint, pack_module


@pytest.fixture(scope="module")
def sd15(comfyui_root, tiny_checkpoints):
    return load_checkpoint(comfyui_root, tiny_checkpoints.sd15)


def _tok(clip):
    return lambda text: clip.tokenize(text, return_word_ids=True)


def _enc(clip):
    return lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text), show_pbar=False)[0][0]


def test_comfy_denoiser_runs_mag_under_inference_mode(comfyui_root, sd15):
    import comfy.model_management as mm

    import comfy.utils

    model, clip, _ = sd15
    dm = model.model.diffusion_model
    shared = dict(dm.named_parameters())
    try:
        with torch.inference_mode():  # as ComfyUI loads a checkpoint: the weights become inference tensors
            for k, v in shared.items():
                comfy.utils.set_attr_param(dm, k, v.detach().clone())
        assert next(dm.parameters()).is_inference()
        _run(cd_mod(comfyui_root), model, clip, comfyui_root, mm)
    finally:  # the checkpoint is shared with other tests
        for k, v in shared.items():
            comfy.utils.set_attr(dm, k, v)


def cd_mod(root):
    return pack_module(root, "nodes.mag_edit.comfy_denoiser")


def _run(cd, model, clip, comfyui_root, mm):
    mag = pack_module(comfyui_root, "nodes.mag_edit.mag")
    prompts_mod = pack_module(comfyui_root, "nodes.mag_edit.prompts")
    with torch.inference_mode():  # as ComfyUI runs a node
        patcher = model.clone()
        mm.load_models_gpu([patcher])
        p = prompts_mod.prepare_prompts(_tok(clip), _enc(clip), "a cat on a table", "a dog on a table")
        x0 = torch.randn(1, 4, 16, 16)
        mask = torch.zeros(1, 128, 128)
        mask[:, 32:96, 32:96] = 1.0
        weights_before = {k: v.clone() for k, v in list(patcher.model.diffusion_model.state_dict().items())[:5]}
        params_before = dict(patcher.model.diffusion_model.named_parameters())
        with torch.inference_mode(False):
            den = cd.ComfyDenoiser(patcher)
            x0c, maskc = x0.clone(), mask.clone()
            p = prompts_mod.EditPrompts(**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in vars(p).items()})
            # eps matches apply_model's own parameterisation
            sigma = float(den.sigma_table[500])
            x = x0c + sigma * torch.randn_like(x0c)
            with torch.no_grad():
                eps = den(x, sigma, p.target_context)
                x0_pred = patcher.model.apply_model(x, torch.tensor([sigma]), c_crossattn=p.target_context)
            torch.testing.assert_close(x - sigma * eps, x0_pred, atol=1e-3, rtol=1e-3)
            cfg = mag.preset("fast", steps=3, iterations=2, optimize_fraction=0.67)
            result = mag.mag_edit(den, x0c, maskc, p, cfg)
        assert len(result.history[0].ratios) >= 1
        assert result.history[0].ratio_after is not None
        assert torch.isfinite(result.latent).all()
        for k, v in list(patcher.model.diffusion_model.state_dict().items())[:5]:
            assert torch.equal(v, weights_before[k])
        # the original parameter objects are back (the clones lived only during the edit)
        assert all(p_ is params_before[k] for k, p_ in patcher.model.diffusion_model.named_parameters())
