"""ContextEdit Image Stream node (ComfyUI V3 schema).

Converts ComfyUI types (MODEL, CLIP_VISION, IMAGE, MASK) and calls the engine (stream_patch.py,
attention_patches/image_stream.py); the input MODEL is cloned, never changed.
"""

import torch
from comfy_api.latest import io

from ...attention_patches.comfy_adapter import install_controller
from ...attention_patches.image_stream import GateMode, comfy_ip_order
from ..comfy_model import sigma_window, unet_cross_attention_layers
from ..errors import InputError
from ..model_folders import check_model, combo_options, list_models, resolve_model
from .ipadapter_format import load_ipadapter
from .stream_patch import (
    DEFAULT_BLOCK_WEIGHTS,
    DEFAULT_LAMBDA,
    UNCOND_CHOICES,
    build_image_stream,
)

CATEGORY = "ContextEdit/attention"


def _ipadapter_options():
    try:
        names = list_models("ipadapter")
    except Exception:  # noqa: BLE001 - outside ComfyUI (schema listing in tests) there is no folder_paths
        names = []
    return combo_options("ipadapter", names)


def model_layers(model):
    """The MODEL's cross-attention places in IP-Adapter order and their (inner, context) widths."""
    layers = unet_cross_attention_layers(model)
    places = comfy_ip_order(layers)
    widths = [tuple(layers[p].to_k.weight.shape) for p in places]
    return places, widths


class ImageStream(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        ipadapters = _ipadapter_options()  # a default: the frontend shows no "undefined"
        return io.Schema(
            node_id="ContextEditImageStream",
            display_name="ContextEdit Image Stream",
            category=CATEGORY,
            description=(
                "InsightEdit's decoupled cross-attention: Z = Attn(Q, K_txt, V_txt) + lambda * Attn(Q, K_img, V_img). "
                "The image tokens come from a plain IP-Adapter file (models/ipadapter) applied to a CLIP vision "
                "embedding of the image. InsightEdit feeds a predicted target-image embedding from its MLLM (no "
                "published weights); here the embedding is the CLIP vision embedding of the image you connect "
                "as a stand-in (the source image approximates the target's background, a reference image steers the "
                "edit region). The term is "
                "added to whatever the layer computes, so it stacks with Attention Mask and other packs' patches."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x / SDXL / InstructPix2Pix model to patch (it is cloned, never changed)."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model the IP-Adapter was trained with (ViT-H for ip-adapter_sd15 and ip-adapter_sdxl_vit-h, ViT-bigG for ip-adapter_sdxl), from Load CLIP Vision."),
                io.Combo.Input("ipadapter", options=ipadapters, default=ipadapters[0],
                               tooltip="A plain IP-Adapter file in models/ipadapter (image_proj + ip_adapter.N.to_k_ip/to_v_ip): ip-adapter_sd15, _light, ip-adapter_sdxl(_vit-h). Plus / FaceID variants are not supported."),
                io.Image.Input("image", tooltip="The image whose CLIP vision embedding feeds the image stream. InsightEdit feeds a predicted embedding of the target (edited) image, which its MLLM adapter (IAA, trained to match CLIP of the target image; weights not published) produces; here you connect a real image as a stand-in: the source image (its unchanged parts approximate the target's background) or a reference image of the wanted result. One image, or one per latent."),
                io.Float.Input("weight", default=DEFAULT_LAMBDA, min=0.0, max=5.0, step=0.05,
                               tooltip="lambda: how strongly the image stream adds to cross-attention. 0 = unpatched; 1 = IP-Adapter's own scale."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which the image stream starts acting (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress after which it stops acting (1 = last step)."),
                io.String.Input("block_weights", default=DEFAULT_BLOCK_WEIGHTS,
                                tooltip="Per-block multipliers of lambda: 'input:1, middle:1, output:1', a single block as 'output 3: 0', or one number per cross-attention layer in the IP-Adapter file's order (16 for SD1.5, 70 for SDXL)."),
                io.Combo.Input("mask_mode", options=[g.value for g in GateMode], default=GateMode.EVERYWHERE.value,
                               tooltip="Where the image term acts: everywhere; outside the edit masks (keep the background like the source image); inside the edit masks (steer the edit region with a reference image)."),
                io.Combo.Input("unconditional", options=list(UNCOND_CHOICES), default=next(iter(UNCOND_CHOICES)),
                               tooltip="Which conditioning branch is unconditional: it gets IP-Adapter's zero-image tokens, as IP-Adapter does for CFG. KSampler: negative (1); DualCFGGuider: negative (0)."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Edit masks [N,H,W] (their union is used), needed for the 'outside' / 'inside' modes; resized to each layer's grid."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="A patched clone of the input model.")],
        )

    @classmethod
    def validate_inputs(cls, ipadapter):
        # replaces ComfyUI's "Value not in list" with the folders searched and the download source
        return check_model("ipadapter", ipadapter)

    @classmethod
    def execute(cls, model, clip_vision, ipadapter, image, weight, start_percent, end_percent, block_weights,
                mask_mode, unconditional, masks=None) -> io.NodeOutput:
        places, widths = model_layers(model)
        if clip_vision is None or not hasattr(clip_vision, "encode_image"):
            raise InputError("clip_vision", "is not a CLIP_VISION.", "Connect Load CLIP Vision's output.")
        if not torch.is_tensor(image) or image.dim() != 4 or image.shape[-1] < 3:
            raise InputError("image", "is not an IMAGE [B,H,W,C].", "Connect an IMAGE (e.g. from Load Image).")
        if weight < 0:
            raise InputError("weight", f"is {weight}.", "Use lambda >= 0.")
        weights = load_ipadapter(resolve_model("ipadapter", ipadapter))
        embeds = clip_vision.encode_image(image[..., :3], crop=True)["image_embeds"]
        sigma_max, sigma_min = sigma_window(model, start_percent, end_percent)
        controller = build_image_stream(
            weights, places, widths, embeds.float().cpu(), scale=weight, block_weights=block_weights,
            mask=masks, gate=mask_mode, unconditional=unconditional, sigma_max=sigma_max, sigma_min=sigma_min)
        return io.NodeOutput(install_controller(model, controller))


NODES = [ImageStream]
