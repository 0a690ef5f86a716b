"""The denoiser abstraction (denoiser.py) over a ComfyUI MODEL: ``apply_model`` takes sigma and
returns x0, so eps = (x - x0) / sigma; our controllers ride in the ``transformer_options`` passed
explicitly (a direct call ignores the patcher's options otherwise, notes/comfy_core_api.md
finding 3). comfy is imported lazily, inside functions only.

Gradients: ComfyUI runs nodes in inference mode, so the UNet weights are inference tensors and
autograd refuses to save them for backward (finding 1). :meth:`ComfyDenoiser.autograd_ready`
swaps every diffusion_model parameter for a normal-tensor clone *once* for the whole edit
(``comfy.utils.set_attr_param``) and puts the originals back afterwards; inputs are cloned by
the caller under ``torch.inference_mode(False)``.
"""

import contextlib

import torch

from ...attention_patches.comfy_adapter import direct_transformer_options, with_controller
from .denoiser import sigma_vector


class ComfyDenoiser:
    def __init__(self, model_patcher, extra_kwargs=None):
        """model_patcher: a (cloned) ComfyUI ModelPatcher, already loaded with load_models_gpu.
        extra_kwargs: optional fn(context) -> dict of extra apply_model kwargs (e.g. SDXL's ``y``)."""
        self.patcher = model_patcher
        self.base = model_patcher.model
        self.diffusion_model = model_patcher.get_model_object("diffusion_model")
        ms = model_patcher.get_model_object("model_sampling")
        with torch.inference_mode(False):
            self.sigma_table = ms.sigmas.detach().float().cpu().clone()
        self.extra_kwargs = extra_kwargs
        self.calls = 0

    @property
    def device(self):
        return self.patcher.load_device

    def __call__(self, x, sigma, context, concat=None, controller=None, branches=None):
        s = sigma_vector(sigma, x.shape[0], x.device)
        branches = list(branches) if branches is not None else [0]
        to = direct_transformer_options(self.patcher)
        if controller is not None:
            to = with_controller(to, self.diffusion_model, controller,
                                 self_attention=bool(getattr(controller, "needs_self_attention", False)))
        to["cond_or_uncond"] = branches
        to["sigmas"] = s
        kwargs = dict(self.extra_kwargs(context)) if self.extra_kwargs is not None else {}
        self.calls += 1
        x0 = self.base.apply_model(x, s, c_concat=concat, c_crossattn=context.to(x.device),
                                   transformer_options=to, **kwargs)
        return ((x - x0.to(x.dtype)) / s.view(-1, 1, 1, 1)).to(x.dtype)

    @contextlib.contextmanager
    def autograd_ready(self):
        import comfy.utils

        originals = {}
        with torch.inference_mode(False):
            try:
                for name, p in list(self.diffusion_model.named_parameters()):
                    originals[name] = p
                    comfy.utils.set_attr_param(self.diffusion_model, name, p.detach().clone())
                yield self
            finally:
                for name, p in originals.items():
                    comfy.utils.set_attr(self.diffusion_model, name, p)

    @contextlib.contextmanager
    def precision(self, name: str):
        # ComfyUI already chose the model's dtype (and its manual cast); nothing to change here
        yield self
