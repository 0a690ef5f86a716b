"""Checks and conversions on ComfyUI MODEL objects shared by the pack's patch nodes (duck-typed:
no comfy import, so engines and tests can use them outside ComfyUI)."""

from ..attention_patches.comfy_adapter import attn2_layers
from .errors import InputError


def unet_cross_attention_layers(model) -> dict:
    """{place: attn2 module} of a UNet MODEL (SD1.x / SDXL / InstructPix2Pix), or an InputError
    naming ``model`` when it is not one."""
    if model is None or not hasattr(model, "get_model_object"):
        raise InputError("model", "is not a MODEL.", "Connect a model from a checkpoint loader.")
    try:
        layers = attn2_layers(model.get_model_object("diffusion_model"))
    except Exception:  # noqa: BLE001 - any other model type simply has no such layers
        layers = {}
    if not layers:
        raise InputError("model", "has no UNet cross-attention layers (SD1.x / SDXL / InstructPix2Pix expected).",
                         "Use a Stable Diffusion 1.x or SDXL family checkpoint.")
    return layers


def sigma_window(model, start_percent: float, end_percent: float) -> tuple:
    """(sigma_max, sigma_min) of the sampling-progress window [start_percent, end_percent], from the
    MODEL's own noise schedule; an InputError naming ``start_percent`` for an empty/invalid range."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise InputError("start_percent", f"{start_percent}..{end_percent} is not a valid range.",
                         "Use 0 <= start_percent <= end_percent <= 1.")
    ms = model.get_model_object("model_sampling")
    return float(ms.percent_to_sigma(start_percent)), float(ms.percent_to_sigma(end_percent))
