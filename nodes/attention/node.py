"""ContextEdit Attention Mask / Attention Map nodes (ComfyUI V3 schema).

The node converts ComfyUI types and calls the engine (mask_patch.py, heatmap.py,
attention_patches/); the input MODEL is cloned, never changed.
"""

import logging

import torch
from comfy_api.latest import io

from ...attention_patches import LayerSelector, ModulationMode
from ...attention_patches.capture import AttentionCapture
from ...attention_patches.comfy_adapter import direct_transformer_options, install_controller
from ..comfy_model import sigma_window, unet_cross_attention_layers
from ..errors import InputError
from ..executability.plan import as_plan_list
from ..masks.token_broadcaster import clip_encoder, clip_tokenizer, locate_phrases
from . import heatmap
from .dit_node import dit_family, patch_dit_model
from .mask_patch import (BRANCH_CHOICES, DEFAULT_MASK_EDGES, DEFAULT_ROUTING, MASK_EDGES, ROUTING_SEGMENT, ROUTINGS,
                         build_mask_modulation, instructions_from, parse_downscales, split_prompt)

EditPlan = io.Custom("EDIT_PLAN")
CATEGORY = "ContextEdit/attention"


def _check_model(model, context_dim=None):
    layers = unet_cross_attention_layers(model)
    if context_dim is not None:
        module = next(iter(layers.values()))
        expected = module.to_k.weight.shape[1]
        if expected != context_dim:
            raise InputError("clip", f"produces {context_dim}-wide text features but the model expects {expected}.",
                             "Use the CLIP output of the same checkpoint loader as the model.")
    return layers


class AttentionMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditAttentionMask",
            display_name="ContextEdit Attention Mask",
            category=CATEGORY,
            description=(
                "CAMILA cross-attention mask modulation: in the chosen UNet layers the prompt only acts inside "
                "the masks (binary at each layer's grid: a cell is in a mask when the mask covers at least half "
                "of it); everywhere else the model attends to the empty prompt (image-only conditioning), so "
                "unmasked regions stay as they are. With several instructions each is encoded on its own and "
                "pixels in its mask attend only to it (CAMILA's per-token mask and FoI's routing are options). "
                "Instructions a connected plan marks [NEG] are not encoded at all. Wraps other packs' "
                "attention patches. Works with KSampler, cfg 1 and InstructPix2Pix DualCFGGuider. On FLUX.1 "
                "(Kontext) and Qwen-Image(-Edit), detected from the model, it confines each separately encoded "
                "instruction to its mask in every joint-attention block (or those named in dit_blocks)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (it is cloned, never changed): SD1.x / SDXL / InstructPix2Pix, or FLUX.1 (Kontext) / Qwen-Image(-Edit)."),
                io.Clip.Input("clip", tooltip="The text encoder of the same model (checkpoint CLIP; DualCLIPLoader flux; CLIPLoader qwen_image): used to find each instruction's tokens (SD) or encode each instruction on its own (FLUX.1 / Qwen-Image), and to encode the empty prompt."),
                io.Mask.Input("masks", tooltip="One mask per instruction [N,H,W], in instruction order (white = edit here). A single mask confines the whole prompt."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Edit instructions, one per line (or separated by ';'). Leave empty when a plan is connected. Encode the same text for sampling (or use this node's conditioning output)."),
                io.Combo.Input("mode", options=[m.value for m in ModulationMode], default=ModulationMode.LOGITS.value,
                               tooltip="SD only; matters only with mask_edges 'soft' (with binary masks both are the same attention). logits: CAMILA's softmax((X*M + Y*(1-M))/sqrt(d)), values mixed the same way; output: M*Attn(text) + (1-M)*Attn(empty) per pixel (needs FoI or whole-prompt routing when there are several instructions)."),
                io.Combo.Input("routing", options=list(ROUTINGS), default=DEFAULT_ROUTING,
                               tooltip="per segment (encoded apart, the default): each instruction is encoded on its own (its own start/end/padding) and pixels in mask k attend only to instruction k's encoding, outside every mask to the empty prompt, so instructions cannot hear each other (use this node's positive output). per token (CAMILA): M[pixel, word] is the mask of the word's instruction, so a pixel in mask 1 uses the prompt for instruction 1's words and the empty prompt for instruction 2's; start/end/padding tokens follow the union of the masks (CLIP is causal, so they carry every instruction into every mask). per instruction (FoI): pixels in mask k attend only to start/end tokens and instruction k's words. whole prompt: every word follows the union of the masks. A pixel in several masks sees all of their instructions."),
                io.String.Input("resolutions", default="32",
                                tooltip="SD only (FLUX.1 / Qwen-Image: see dit_blocks). Which layers to patch, as image downscale factors: 32 = the 16x16 layers at 512 px (CAMILA's choice); '16,32' adds the 32x32 layers. Chosen by resolution, so SDXL works too."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which the patch starts acting (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress after which the patch stops acting (1 = last step)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1 = full modulation, 0 = no effect; in between blends the patched and unpatched attention outputs."),
                io.Combo.Input("apply_to", options=list(BRANCH_CHOICES), default=list(BRANCH_CHOICES)[0],
                               tooltip="Which conditioning branch is the text branch. auto = the branch whose conditioning is this prompt's encoding (works with KSampler and DualCFGGuider)."),
                EditPlan.Input("plan", optional=True,
                               tooltip="Optional EDIT_PLAN: its executable instructions replace the prompt text (the prompt is not encoded); [NEG] instructions are dropped with their masks and are in no token at all."),
                io.Image.Input("image", optional=True,
                               tooltip="Qwen-Image-Edit only: the image being edited. Its text encoder (CLIPLoader type qwen_image) then reads the picture with every instruction, as TextEncodeQwenImageEditPlus does (one picture, its VL copy at ~384x384). Ignored for SD and FLUX models (noted in the log)."),
                io.String.Input("dit_blocks", default="", optional=True,
                                tooltip="FLUX.1 / Qwen-Image only: which joint-attention blocks are confined. Empty (or 'all') = every block. Comma-separated: 'double', 'single' (FLUX.1), 'double:0-9', 'single:3'. Qwen-Image's blocks are all 'double'. Ignored for SD models (use resolutions)."),
                io.Combo.Input("mask_edges", options=list(MASK_EDGES), default=DEFAULT_MASK_EDGES, optional=True,
                               tooltip="SD only (FLUX.1 / Qwen-Image tokens are always binary). binary (CAMILA's binary masks): at each patched layer's grid a cell is in a mask when the mask covers at least half of it; every pixel is then one attention call over modified keys/values, so another pack's attention patch on the same layers composes exactly, whatever it does. soft: cells on a mask's edge keep the covered fraction (0 < M < 1); there our change is added on top of the other pack's result, which is exact only for packs that add a term (IP-Adapter style), not for packs that scale or reshape the attention. Not with per-segment routing."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="A patched clone of the input model."),
                io.Conditioning.Output(display_name="positive",
                                       tooltip="The prompt this patch expects, encoded with the given CLIP: use it as the positive conditioning."),
                io.String.Output(display_name="prompt", tooltip="The prompt text that was encoded (instructions joined)."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, masks, prompt, mode, routing, resolutions, start_percent, end_percent, strength,
                apply_to, plan=None, image=None, dit_blocks="", mask_edges=DEFAULT_MASK_EDGES) -> io.NodeOutput:
        if clip is None or not hasattr(clip, "tokenize"):
            raise InputError("clip", "is not a CLIP.", "Connect the CLIP output of your checkpoint loader.")
        if plan is not None:
            plans = as_plan_list(plan, "plan")
            if len(plans) != 1:
                raise InputError("plan", f"holds {len(plans)} plans (one per image).",
                                 "Patch with one image's plan (edit a batch image by image).")
            plan = plans[0]
        if dit_family(model) is not None:  # FLUX.1 (Kontext) / Qwen-Image(-Edit): joint-attention confinement
            return io.NodeOutput(*patch_dit_model(model, clip, masks, prompt, plan, routing, start_percent,
                                                  end_percent, strength, apply_to, image=image,
                                                  dit_blocks=dit_blocks, mask_edges=mask_edges))
        if image is not None:
            logging.info("ContextEdit Attention Mask: 'image' is used only with Qwen-Image(-Edit); ignored for this "
                         "SD model.")
        if dit_blocks and dit_blocks.strip():
            logging.info("ContextEdit Attention Mask: 'dit_blocks' applies to FLUX.1 / Qwen-Image only; this SD "
                         "model is patched by 'resolutions'.")
        _check_model(model)
        downscales = parse_downscales(resolutions)
        spec = instructions_from(prompt, plan, masks)
        if not spec.instructions:
            logging.warning("ContextEdit Attention Mask: the plan has no executable instruction; the model is left "
                            "unpatched and the prompt is empty, so nothing is edited.")
            empty = clip.encode_from_tokens_scheduled(clip.tokenize(""), show_pbar=False)
            return io.NodeOutput(model.clone(), empty, "")
        encode = clip_encoder(clip)
        sigma_max, sigma_min = sigma_window(model, start_percent, end_percent)
        controller = build_mask_modulation(
            clip_tokenizer(clip), encode, spec, mode=mode, routing=routing, downscales=downscales,
            sigma_max=sigma_max, sigma_min=sigma_min, strength=strength, branch=apply_to,
            mask_edges=mask_edges or DEFAULT_MASK_EDGES,
        )
        _check_model(model, controller.prompt_context.shape[-1])
        patched = install_controller(model, controller)
        if routing == ROUTING_SEGMENT:
            # the instructions' own encodings, concatenated; global vectors (SDXL's pooled output)
            # from the empty prompt, so no instruction acts everywhere through them
            extras = dict(clip.encode_from_tokens_scheduled(clip.tokenize(""), show_pbar=False)[0][1])
            positive = [[controller.prompt_context, extras]]
        else:
            positive = clip.encode_from_tokens_scheduled(clip.tokenize(spec.prompt), show_pbar=False)
        return io.NodeOutput(patched, positive, spec.prompt)


class AttentionMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditAttentionMap",
            display_name="ContextEdit Attention Map",
            category=CATEGORY,
            description=(
                "Runs one denoising call and renders how much cross-attention the chosen words receive in the "
                "chosen layers as a heat-map. Give it a model patched by ContextEdit Attention Mask to see the "
                "patch's effect (attention outside the masks drops to zero)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="Model to probe; patched models show the patched attention."),
                io.Clip.Input("clip", tooltip="CLIP used to find the words' tokens in the prompt."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The text the conditioning was encoded from (needed to locate the words)."),
                io.String.Input("words", default="",
                                tooltip="Words or phrases of the prompt to show, separated by ','. Empty = the whole prompt."),
                io.Latent.Input("latent", tooltip="Latent of the image (e.g. VAE Encode or InstructPix2Pix latent)."),
                io.Float.Input("sigma", default=7.0, min=0.01, max=200.0, step=0.01,
                               tooltip="Noise level of the probe call (larger = earlier in sampling; SD1 spans ~0.03..14.6)."),
                io.String.Input("resolutions", default="32",
                                tooltip="Layers to average, as image downscale factors (32 = 16x16 layers at 512 px)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the probe noise."),
                io.Boolean.Input("normalize", default=True,
                                 tooltip="Stretch each map to its maximum; off shows the absolute attention share (0..1)."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Conditioning to run with (needed for InstructPix2Pix: its image latent rides in it). Default: the prompt encoded with the CLIP."),
                io.Image.Input("image", optional=True, tooltip="Optional image to overlay the heat-map on."),
            ],
            outputs=[io.Image.Output(display_name="heatmap", tooltip="Attention heat-map, one per latent in the batch.")],
        )

    @classmethod
    def execute(cls, model, clip, prompt, words, latent, sigma, resolutions, seed, normalize, conditioning=None,
                image=None) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.sampler_helpers
        import comfy.samplers

        _check_model(model)
        if not prompt or not prompt.strip():
            raise InputError("prompt", "is empty.", "Give the text the conditioning was encoded from.")
        if not isinstance(latent, dict) or "samples" not in latent:
            raise InputError("latent", "is not a LATENT.", "Connect a LATENT (e.g. from VAE Encode).")
        phrases = [w.strip() for w in words.split(",") if w.strip()] or [" ".join(split_prompt(prompt))]
        positions, lay = locate_phrases(clip_tokenizer(clip), prompt, phrases, input_name="words")
        capture = AttentionCapture([p for ps in positions for p in ps], LayerSelector(parse_downscales(resolutions)),
                                   prompt_length=lay.length)
        if conditioning is None:
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompt), show_pbar=False)

        probe = install_controller(model, capture)
        mm.load_models_gpu([probe])
        device = probe.load_device
        base = probe.model
        samples = latent["samples"].clone().float()
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(samples.shape, generator=gen)
        x = (base.process_latent_in(samples) + sigma * noise).to(device)
        conds = comfy.sampler_helpers.convert_cond(conditioning)[:1]
        conds = comfy.samplers.encode_model_conds(base.extra_conds, conds, x, device, "positive",
                                                  latent_image=samples.to(device), seed=int(seed))
        kwargs = {k: v.process_cond(batch_size=x.shape[0], area=None).cond for k, v in conds[0]["model_conds"].items()}
        sigmas = torch.full((x.shape[0],), float(sigma), device=device)
        to = direct_transformer_options(probe)
        to["cond_or_uncond"] = [0]
        to["sigmas"] = sigmas
        with torch.no_grad():
            base.apply_model(x, sigmas, transformer_options=to, **kwargs)
        if not capture.maps:
            raise InputError("resolutions", f"'{resolutions}' selects no cross-attention layer at this latent size.",
                             "Try 16 or 32.")
        h, w = samples.shape[-2] * 8, samples.shape[-1] * 8
        return io.NodeOutput(heatmap.render(capture.maps, h, w, branch=0, normalize=normalize, background=image))


NODES = [AttentionMask, AttentionMap]
