"""ComfyUI adapter: run controllers inside ComfyUI's UNet through attn2 replace functions.

ComfyUI keeps one replace function per layer key in ``transformer_options["patches_replace"]
["attn2"]`` and a plain assignment clobbers whatever another pack put there (notes/comfy_core_api
§2). So we never write that dict at patch time. Instead the patch is a DIFFUSION_MODEL wrapper
that, on every UNet call, copies ``transformer_options`` and installs, for every cross-attention
layer, a replace that runs our controller *around whatever replace would have run* for that layer
(3-tuple key first, then 2-tuple, as ComfyUI looks them up). Packs that patched before us, after
us, or that wrap like we do, all keep acting; the caller's dicts and the input MODEL are never
modified.
"""

import re
import uuid

from .controller import AttentionCall

# input_blocks.<id>.<pos>.transformer_blocks.<i>.attn2 and middle_block.<pos>.transformer_blocks.<i>.attn2
ATTN2_PATH = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.\d+\.transformer_blocks\.(\d+)\.attn2$"
                        r"|^(middle_block)\.\d+\.transformer_blocks\.(\d+)\.attn2$")
# the same places' self-attention (attn1)
ATTN1_PATH = re.compile(ATTN2_PATH.pattern.replace("attn2", "attn1"))
_BLOCK_NAMES = {"input_blocks": "input", "output_blocks": "output", "middle_block": "middle"}
WRAPPER_PREFIX = "contextedit_attention"


def attn2_layers(diffusion_model):
    """{(block, id, index): attn2 module} for every cross-attention layer of a ComfyUI UNet."""
    return _layers(diffusion_model, ATTN2_PATH)


def attn1_layers(diffusion_model):
    """{(block, id, index): attn1 module} for every self-attention layer of a ComfyUI UNet."""
    return _layers(diffusion_model, ATTN1_PATH)


def _layers(diffusion_model, pattern):
    layers = {}
    for name, module in diffusion_model.named_modules():
        m = pattern.match(name)
        if m is None:
            continue
        if m.group(1):
            group, block_id, index = m.group(1), int(m.group(2)), int(m.group(3))
        else:  # ComfyUI calls the whole middle block ("middle", 0)
            group, block_id, index = m.group(4), 0, int(m.group(5))
        layers[(_BLOCK_NAMES[group], block_id, index)] = module
    return layers


def _default_attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


def make_replace(controller, module, previous, default_attention=_default_attention, is_cross=True):
    """An attn2 (or, with ``is_cross=False``, attn1) replace function ``fn(q, k, v, extra_options)``
    running ``controller`` around ``previous`` (another replace function, or None for ComfyUI's own
    attention)."""

    def replace(q, k, v, extra_options, **kwargs):
        if previous is not None:
            def attend(q_, k_, v_):
                return previous(q_, k_, v_, extra_options, **kwargs)
        else:
            def attend(q_, k_, v_):
                return default_attention(q_, k_, v_, extra_options)

        h, w = extra_options["activations_shape"][-2:]
        lh, lw = extra_options.get("original_shape", extra_options["activations_shape"])[-2:]
        block = extra_options.get("block") or ("?", -1)
        call = AttentionCall(
            q=q, k=k, v=v,
            heads=extra_options["n_heads"],
            is_cross=is_cross,
            height=int(h), width=int(w),
            latent_height=int(lh), latent_width=int(lw),
            place=(block[0], block[1], extra_options.get("block_index", 0)),
            branches=list(extra_options.get("cond_or_uncond", [0])),
            attend=attend,
            project_context=lambda ctx: (module.to_k(ctx), module.to_v(ctx)),
            sigma=extra_options.get("sigmas"),
            # a copy: ComfyUI's dict is shared by every layer of this call
            extra={**extra_options, "contextedit_inner": getattr(previous, "contextedit_controller", None)},
        )
        return controller(call)

    replace.contextedit_controller = controller  # lets tests and other tools see who is here
    return replace


def with_controller(transformer_options, diffusion_model, controller, self_attention=False):
    """A copy of ``transformer_options`` whose attn2 replaces run ``controller`` first.

    ``self_attention=True`` routes the attn1 (self-attention) calls through the controller too, in
    the same wrapping style (``AttentionCall.is_cross`` tells them apart). Routing attn1 makes
    ComfyUI project q/k/v itself and call the replace, so only ask for it when a controller acts
    on self-attention.
    """
    to = dict(transformer_options)
    replaces = dict(to.get("patches_replace", {}))
    kinds = [("attn2", attn2_layers, True)]
    if self_attention:
        kinds.append(("attn1", attn1_layers, False))
    for kind, find_layers, is_cross in kinds:
        slot = dict(replaces.get(kind, {}))
        for key, module in find_layers(diffusion_model).items():
            previous = slot.get(key, slot.get(key[:2]))
            slot[key] = make_replace(controller, module, previous, is_cross=is_cross)
        replaces[kind] = slot
    to["patches_replace"] = replaces
    return to


def install_controller(model_patcher, controller, key=None):
    """Return a clone of ``model_patcher`` with ``controller`` on every attn2 call.

    The input patcher (and its model_options) is left exactly as it was.
    """
    from comfy.patcher_extension import WrappersMP

    patched = model_patcher.clone()
    key = key or f"{WRAPPER_PREFIX}_{uuid.uuid4().hex[:8]}"

    def diffusion_model_wrapper(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
        to = with_controller(transformer_options, executor.class_obj, controller)
        return executor(x, timesteps, context, y, control, to, *args, **kwargs)

    patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, key, diffusion_model_wrapper)
    return patched


def direct_transformer_options(model_patcher):
    """transformer_options for a direct ``apply_model`` call that still runs the patcher's
    patches and wrappers (ComfyUI only merges wrappers in when *it* samples)."""
    import copy

    to = copy.copy(model_patcher.model_options.get("transformer_options", {}))
    wrappers = {}
    for wtype, by_key in model_patcher.wrappers.items():
        wrappers[wtype] = {k: list(v) for k, v in by_key.items()}
    for wtype, by_key in to.get("wrappers", {}).items():
        merged = wrappers.setdefault(wtype, {})
        for k, v in by_key.items():
            merged[k] = merged.get(k, []) + [w for w in v if w not in merged.get(k, [])]
    to["wrappers"] = wrappers
    return to
