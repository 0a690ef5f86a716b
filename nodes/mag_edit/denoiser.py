"""The one denoiser abstraction our own loops (inversion, MAG optimisation) call.

    eps = denoiser(x, sigma, context, concat=None, controller=None, branches=None)

``x`` is in ComfyUI's sigma parameterisation, x = x0 + sigma * eps (the latent after
``process_latent_in``); ``sigma`` a float or a per-sample tensor; ``context`` the cross-attention
conditioning [B, T, C]; ``concat`` an optional channel concat (InstructPix2Pix); ``controller``
an attention controller (attention_patches) acting during this call; ``branches`` the
cond_or_uncond id of each equal batch chunk (0 = positive/text, 1 = negative), default all 0.

With that parameterisation DDIM (eta=0) is Euler in sigma, x_next = x + (sigma_next - sigma)*eps,
and the variance-preserving latent is x / sqrt(1 + sigma^2) (notes/comfy_core_api.md section 3).

Every denoiser also offers

* ``sigma_table``: the model's 1000 training sigmas (ascending, timestep 0..999), for schedules;
* ``autograd_ready()``: a context in which gradients may flow to the *inputs* (the weights stay
  frozen and receive none);
* ``precision(name)``: a context selecting the compute precision ("fp32" / "bf16" / "auto").

This file holds the diffusers adapter (tests, benchmarks, scripts); the ComfyUI adapter is in
comfy_denoiser.py (it imports comfy lazily).
"""

import contextlib

import torch

from ...attention_patches.diffusers_adapter import DiffusersHost


def sigma_vector(sigma, batch: int, device=None) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise ValueError(f"sigma has {s.numel()} values for a batch of {batch}")
    if bool((s <= 0).any()):
        raise ValueError("the denoiser needs sigma > 0 (eps is undefined at sigma 0)")
    return s


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt().float()


def nearest_timestep(sigma: torch.Tensor, sigma_table: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ModelSamplingDiscrete.timestep: the nearest training step in log sigma."""
    log_sigmas = sigma_table.log().to(sigma.device)
    return (sigma.log()[None, :] - log_sigmas[:, None]).abs().argmin(dim=0)


class DiffusersDenoiser:
    """eps-prediction ``UNet2DConditionModel`` + its scheduler's alphas_cumprod.

    sigma -> timestep by the nearest training sigma (abar = 1/(1+sigma^2)); the UNet sees the
    variance-preserving input x / sqrt(1 + sigma^2), exactly as ComfyUI's apply_model feeds it.
    """

    def __init__(self, unet, alphas_cumprod: torch.Tensor):
        self.unet = unet
        self.sigma_table = sigmas_from_alphas_cumprod(alphas_cumprod.detach().cpu())
        self.autocast_dtype = None
        self.calls = 0

    @classmethod
    def from_scheduler(cls, unet, scheduler):
        return cls(unet, scheduler.alphas_cumprod)

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def __call__(self, x, sigma, context, concat=None, controller=None, branches=None):
        s = sigma_vector(sigma, x.shape[0], x.device)
        t = nearest_timestep(s, self.sigma_table)
        x_in = x / (1 + s ** 2).sqrt().view(-1, 1, 1, 1)
        if concat is not None:
            x_in = torch.cat([x_in, concat.to(x_in)], dim=1)
        branches = list(branches) if branches is not None else [0]
        dtype = next(self.unet.parameters()).dtype
        use_autocast = self.autocast_dtype is not None and x.device.type == "cuda"
        self.calls += 1
        # without a controller the UNet runs with its own attention processors, untouched
        host = DiffusersHost(self.unet, branches=branches, sigma=s)
        with host.attach(controller) if controller is not None else contextlib.nullcontext():
            with torch.autocast("cuda", dtype=self.autocast_dtype, enabled=use_autocast):
                out = self.unet(x_in.to(dtype), t.to(x.device),
                                encoder_hidden_states=context.to(x.device, dtype)).sample
        return out.to(x.dtype)

    @contextlib.contextmanager
    def autograd_ready(self):
        """Freeze the weights (no parameter gradients are built), restore the flags afterwards."""
        flags = [(p, p.requires_grad) for p in self.unet.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield self
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextlib.contextmanager
    def precision(self, name: str):
        """'bf16' autocasts on CUDA (no-op on CPU); 'fp32' / 'auto' leave the weights' dtype."""
        previous = self.autocast_dtype
        self.autocast_dtype = torch.bfloat16 if name == "bf16" else None
        try:
            yield self
        finally:
            self.autocast_dtype = previous
