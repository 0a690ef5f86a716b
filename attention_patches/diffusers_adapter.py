"""diffusers adapter: run controllers inside a ``UNet2DConditionModel`` as attention processors.

The same controllers as in ComfyUI; what ComfyUI passes in ``extra_options`` we keep in a small
``DiffusersHost`` state object: the latent size (recorded by a forward pre-hook on the UNet), the
branch id of each batch chunk (``branches``, like ComfyUI's cond_or_uncond) and the current sigma.
Processors we replace are restored by :meth:`DiffusersHost.detach`.
"""

import weakref

import torch
import torch.nn.functional as F

from .controller import AttentionCall, grid_for_tokens, merge_heads, split_heads


def sdpa(q, k, v, heads, attn_mask=None):
    out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                                         attn_mask=attn_mask)
    return merge_heads(out)


_MODULES = weakref.WeakKeyDictionary()


def attention_modules(unet):
    """[(place, Attention module)] of a UNet, named like diffusers' ``attn_processors`` keys
    (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor``). Found once per UNet:
    walking the module tree on every call (``set_attn_processor``) costs milliseconds."""
    found = _MODULES.get(unet)
    if found is None:
        found = [(f"{name}.processor", m) for name, m in unet.named_modules()
                 if hasattr(m, "set_processor") and hasattr(m, "get_processor")]
        _MODULES[unet] = found
    return found


class DiffusersHost:
    """Attach controllers to a diffusers UNet; a context manager that detaches on exit."""

    def __init__(self, unet, branches=(0,), sigma=None):
        self.unet = unet
        self.branches = list(branches)
        self.sigma = sigma
        self.latent_hw = None
        self._originals = None
        self._hook = None

    def _record_shape(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.latent_hw = tuple(sample.shape[-2:])

    def attach(self, controller):
        if self._originals is not None:
            raise RuntimeError("a controller is already attached; detach() first")
        modules = attention_modules(self.unet)
        self._originals = [(m, m.get_processor()) for _, m in modules]
        for name, m in modules:
            m.set_processor(ControlledProcessor(controller, name, self))
        self._hook = self.unet.register_forward_pre_hook(self._record_shape, with_kwargs=True)
        return self

    def detach(self):
        if self._originals is not None:
            for m, processor in self._originals:
                m.set_processor(processor)
            self._originals = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()


class ControlledProcessor:
    """Mirrors diffusers' default AttnProcessor, with the attention itself done by a controller."""

    def __init__(self, controller, name, host: DiffusersHost):
        self.controller = controller
        self.name = name
        self.host = host

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)
        batch, n_q, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1]
                                                         if encoder_hidden_states is not None else n_q, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)

        latent_hw = self.host.latent_hw
        if latent_hw is None:
            raise RuntimeError("DiffusersHost: the UNet forward pre-hook did not run; call the UNet itself")
        h, w = grid_for_tokens(n_q, *latent_hw)
        heads = attn.heads

        def attend(q_, k_, v_):
            return sdpa(q_, k_, v_, heads, attention_mask)

        def project_context(ctx):
            if attn.norm_cross:
                ctx = attn.norm_encoder_hidden_states(ctx)
            return attn.to_k(ctx), attn.to_v(ctx)

        sigma = self.host.sigma
        if sigma is not None and not torch.is_tensor(sigma):
            sigma = torch.tensor([float(sigma)])
        call = AttentionCall(
            q=q, k=k, v=v, heads=heads, is_cross=is_cross, height=h, width=w,
            latent_height=latent_hw[0], latent_width=latent_hw[1], place=self.name,
            branches=self.host.branches, attend=attend, project_context=project_context, sigma=sigma,
            context=context,
        )
        out = self.controller(call).to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
