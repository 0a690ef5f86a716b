"""ContextEdit MAG Edit node (ComfyUI V3 schema).

The node only converts ComfyUI types and calls the engine (mag.py / prompts.py /
comfy_denoiser.py): the MODEL is cloned, and the LATENT, MASK and prompts are cloned under
``torch.inference_mode(False)`` before the engine sees them, so no input is ever changed.

Models: Stable Diffusion 1.x (SD1.4 / SD1.5 and fine-tunes) only. SDXL does **not** work with
this node: its UNet also needs the pooled text embedding and size conditioning (``y``), which
the engine's denoiser could take (``ComfyDenoiser(extra_kwargs=...)``) but this node does not
build, and MAG-Edit's loss layers / step sizes were only tuned for SD1.x. InstructPix2Pix
checkpoints (8 input channels) are refused too.
"""

import logging

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..attention.heatmap import colorize
from ..errors import InputError
from ..masks.token_broadcaster import clip_encoder, clip_tokenizer
from .mag import PRESETS, preset

CATEGORY = "ContextEdit/mag_edit"
MAX_STEPS = 200
# the node's names for MagConfig.constraint
CONSTRAINTS = {"token ratio": "token", "spatial ratio": "spatial", "both": "both"}
log = logging.getLogger(__name__)


def check_model(model):
    """Refuse anything that is not an SD1.x text-to-image UNet model (see the module docstring)."""
    import comfy.latent_formats

    if model is None or not hasattr(model, "get_model_object") or not hasattr(model, "model"):
        raise InputError("model", "is not a MODEL.", "Connect the MODEL output of a checkpoint loader.")
    base = model.model
    name = type(getattr(base, "model_config", None)).__name__
    try:
        unet = model.get_model_object("diffusion_model")
    except (AttributeError, KeyError):
        unet = None
    in_channels = getattr(unet, "in_channels", None)
    is_sd1 = (isinstance(getattr(base, "latent_format", None), comfy.latent_formats.SD15)
              and in_channels == 4 and not getattr(base, "adm_channels", 0))
    if not is_sd1:
        raise InputError("model", f"is a {name} model; MAG Edit works with Stable Diffusion 1.x only "
                         f"(not SDXL, InstructPix2Pix or other families).",
                         "Load an SD1.5 checkpoint (e.g. v1-5-pruned-emaonly) for this node.")


def check_latent(latent):
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")) or latent["samples"].dim() != 4:
        raise InputError("latent", "is not an image LATENT [B, 4, h, w].", "Connect VAE Encode of the source image.")
    if latent["samples"].shape[1] != 4:
        raise InputError("latent", f"has {latent['samples'].shape[1]} channels, not SD1.x's 4.",
                         "Encode the source image with the SD1.x checkpoint's VAE.")
    return latent["samples"]


def mask_for_latent(mask, latent_shape, what="mask"):
    """MASK [B, H, W] (or [H, W]) -> [B', lh, lw] in the latent's grid (area resize), refusing masks
    whose aspect ratio does not match the latent's (they belong to another image)."""
    if not torch.is_tensor(mask) or mask.dim() not in (2, 3):
        raise InputError("mask", "is not a MASK [B, H, W].", "Connect a mask of the region to edit.")
    m = mask.detach().clone().float().cpu()
    if m.dim() == 2:
        m = m.unsqueeze(0)
    b, _, lh, lw = latent_shape
    mh, mw = m.shape[-2:]
    if abs(mh * lw / mw - lh) > 1.0 or abs(mw * lh / mh - lw) > 1.0:
        raise InputError("mask", f"is {mw}x{mh} (w x h) but the image is {lw * 8}x{lh * 8}: the shapes do not match.",
                         "Use a mask made for the source image (same size, or the same aspect ratio).")
    if m.shape[0] not in (1, b):
        raise InputError("mask", f"holds {m.shape[0]} masks for {b} latents.", "Give one mask, or one per latent.")
    if (mh, mw) != (lh, lw):
        m = F.interpolate(m.unsqueeze(1), size=(lh, lw), mode="area")[:, 0]
    if not bool((m > 0.5).any()):
        raise InputError("mask", f"{'' if what == 'mask' else what + ' '}is empty at the latent's resolution "
                         "(nothing to edit).", "Paint the region to edit white (at least 8x8 image pixels).")
    return m


def masks_for_words(mask, latent_shape, words):
    """(edit region [B', lh, lw], word masks [W, lh, lw] or None) from the MASK input.

    One mask (or one per latent): the region every edit word is scored in. As many masks as edit
    words (more than one): mask i belongs to edit word i, as MAG-Edit's reference pairs each edit
    word with its own mask; the region (update and blend) is their union."""
    n = 1 if not torch.is_tensor(mask) or mask.dim() != 3 else mask.shape[0]
    b = latent_shape[0]
    if n > 1 and n == len(words):
        per_word = torch.cat([mask_for_latent(mask[i:i + 1], latent_shape, f"mask {i + 1} (edit word '{w}')")
                              for i, w in enumerate(words)])
        return per_word.amax(dim=0, keepdim=True), per_word
    if n not in (1, b):
        raise InputError("mask", f"holds {n} masks, but there are {len(words)} edit words ({', '.join(words)}) and "
                         f"{b} latents.", "Give one mask for every edit word, one mask per edit word (in edit_words "
                         "order), or one per latent.")
    return mask_for_latent(mask, latent_shape), None


def attention_image(before, after, out_h, out_w):
    """Edit words' attention share before | after MAG's optimisation, side by side: IMAGE
    [B, out_h, 2*out_w + 4, 3]. Both halves share one colour scale (the larger peak), so the
    growth inside the mask is visible; a 4-pixel white bar separates them."""
    maps = [m for m in (before, after) if m is not None]
    if not maps:
        return None
    if before is None:
        before = after
    if after is None:
        after = before
    peak = torch.maximum(before.flatten(1).max(1).values, after.flatten(1).max(1).values).clamp_min(1e-12)
    halves = []
    for m in (before, after):
        v = (m.float().cpu() / peak.view(-1, 1, 1)).unsqueeze(1)
        v = F.interpolate(v, size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]
        halves.append(colorize(v))
    bar = torch.ones(before.shape[0], out_h, 4, 3)
    return torch.cat([halves[0], bar, halves[1]], dim=2).clamp(0, 1)


def build_config(preset_name, steps, iterations=-1, scale=-1.0, optimize_until=-1.0, blend_from=-1.0,
                 guidance=-1.0, ratio_target=-1.0, constraint="token ratio"):
    """The preset with every knob >= 0 overriding it (steps: 0 = the preset's count), optimising
    ``constraint`` (one of :data:`CONSTRAINTS`)."""
    if constraint not in CONSTRAINTS:
        raise InputError("constraint", f"'{constraint}' is not one of {tuple(CONSTRAINTS)}.",
                         "Pick token ratio, spatial ratio or both.")
    if int(steps) != 0 and not 2 <= int(steps) <= MAX_STEPS:
        raise InputError("steps", f"{steps} is outside 2..{MAX_STEPS}.",
                         "Use 0 for the preset's count (paper 50, fast 30), or 2 to 200.")
    overrides = {"steps": int(steps)} if int(steps) > 0 else {}
    overrides["constraint"] = CONSTRAINTS[constraint]
    if iterations >= 0:
        overrides["iterations"] = int(iterations)
    if scale >= 0:
        overrides["scale"] = float(scale)
    if optimize_until >= 0:
        overrides["optimize_fraction"] = float(optimize_until)
    if blend_from >= 0:
        overrides["blend_from_fraction"] = float(blend_from)
    if guidance >= 0:
        if guidance < 1.0:
            raise InputError("guidance", f"{guidance} is below 1.", "Use -1 (preset) or a CFG scale >= 1 (7.5 is usual).")
        overrides["guidance"] = float(guidance)
    if ratio_target >= 0:
        overrides["ratio_target"] = None if ratio_target >= 1.0 else float(ratio_target)
    return preset(preset_name, **overrides)


class MagEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditMAGEdit",
            display_name="ContextEdit MAG Edit",
            category=CATEGORY,
            description=(
                "MAG-Edit (mask-based attention-adjusted guidance): edits the masked region of a source image so "
                "it matches the target prompt, leaving the rest as it was. The source latent is inverted under "
                "the source prompt; during the first sampling steps the latent inside the mask is optimised until "
                "the edit words dominate the cross-attention there, prompt-to-prompt injection keeps the layout, "
                "and in the last steps everything outside the mask is copied from the reconstruction. "
                "Stable Diffusion 1.x only (not SDXL). Slow: the 'paper' preset runs hundreds of UNet passes; "
                "'fast' a few dozen more than plain sampling. Cancel works at any time (every step checks)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x model (cloned, never changed). SDXL and InstructPix2Pix are not supported."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint (encodes the prompts and finds the edit words)."),
                io.String.Input("source_prompt", multiline=True, default="",
                                tooltip="Describes the source image, e.g. 'a cat sitting on a bench'."),
                io.String.Input("target_prompt", multiline=True, default="",
                                tooltip="The source prompt with the edit applied, e.g. 'a dog sitting on a bench'. Words not in the source prompt are the edit words unless edit_words names them."),
                io.Latent.Input("latent", tooltip="The source image's latent (VAE Encode with the same checkpoint's VAE)."),
                io.Mask.Input("mask", tooltip="Region to edit (white). The source image's size or any size with its aspect ratio; it is resized to the latent (8x8 pixel cells). A batch with one mask per edit word (in edit_words order, or the order the new words appear in the target prompt) scores each word inside its own mask, as MAG-Edit's reference pairs each edit word with its mask; the edit region is then their union."),
                io.Combo.Input("preset", options=list(PRESETS), default="fast",
                               tooltip="paper: the paper's settings (50 steps, null-text inversion, 15 iterations on the first half of the steps; slow). fast: 30 steps, direct inversion, up to 4 iterations on the first third of the steps, stopping early once the edit words hold 80% of the attention in the mask."),
                io.String.Input("edit_words", default="",
                                tooltip="Words of the target prompt whose attention is raised inside the mask, separated by ','. Empty = the words the target prompt adds to the source prompt."),
                io.String.Input("negative_words", default="",
                                tooltip="Optional words whose attention is pushed down inside the mask (e.g. the source object's colour), separated by ','."),
                io.Int.Input("steps", default=0, min=0, max=MAX_STEPS,
                             tooltip="DDIM steps for the inversion and the edit; 0 = the preset's (paper 50, fast 30). The other windows are fractions of this count."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Not used by the edit, which is deterministic (inversion, no random noise); change it only to force a re-run."),
                io.Combo.Input("constraint", options=list(CONSTRAINTS), default="token ratio", optional=True,
                               tooltip="What the latent optimisation raises inside the mask. token ratio: at masked pixels, the edit words' share of the attention (MAG-Edit's released code; both presets). spatial ratio: the share of the edit words' attention mass that lies inside the mask (loss 3 - 4*ratio, MAG-Edit's compute_ca_SR). both: the sum of the two losses. The paper picks one per edit."),
                io.Int.Input("iterations", default=-1, min=-1, max=100, optional=True,
                             tooltip="Optimisation iterations per optimised step; -1 = the preset's (paper 15, fast 4)."),
                io.Float.Input("scale", default=-1.0, min=-1.0, max=100.0, step=0.1, optional=True,
                               tooltip="Step size of the latent update (scale * sigma * gradient); -1 = the preset's (2.5). Larger = stronger, riskier edits."),
                io.Float.Input("optimize_until", default=-1.0, min=-1.0, max=1.0, step=0.01, optional=True,
                               tooltip="Fraction of the steps (from the start) that are optimised; -1 = the preset's (paper 0.5, fast 1/3)."),
                io.Float.Input("blend_from", default=-1.0, min=-1.0, max=1.0, step=0.01, optional=True,
                               tooltip="From this fraction of the steps on, everything outside the mask is taken from the reconstruction; -1 = the preset's (0.7). 1 = never blend."),
                io.Float.Input("guidance", default=-1.0, min=-1.0, max=30.0, step=0.1, optional=True,
                               tooltip="Classifier-free guidance scale of the sampling steps; -1 = the preset's (7.5)."),
                io.Float.Input("ratio_target", default=-1.0, min=-1.0, max=1.0, step=0.01, optional=True,
                               tooltip="Stop a step's iterations once the constraint's ratio (with both: each of the two) reaches this value; -1 = the preset's (paper: never, fast: 0.8); 1 = never stop early."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The edited latent (decode it with VAE Decode)."),
                io.Image.Output(display_name="attention",
                                tooltip="The edit words' share of the cross-attention before | after the optimisation, side by side, on one colour scale (yellow = high)."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, source_prompt, target_prompt, latent, mask, preset, edit_words, negative_words,
                steps, seed, constraint="token ratio", iterations=-1, scale=-1.0, optimize_until=-1.0,
                blend_from=-1.0, guidance=-1.0, ratio_target=-1.0) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        from .comfy_denoiser import ComfyDenoiser
        from .mag import mag_edit
        from .prompts import EditPrompts, prepare_prompts

        check_model(model)
        if clip is None or not hasattr(clip, "tokenize"):
            raise InputError("clip", "is not a CLIP.", "Connect the CLIP output of the same checkpoint loader.")
        samples_in = check_latent(latent)
        config = build_config(preset, steps, iterations, scale, optimize_until, blend_from, guidance, ratio_target,
                              constraint)
        prompts = prepare_prompts(clip_tokenizer(clip), clip_encoder(clip), source_prompt, target_prompt,
                                  edit_words, negative_words)
        mask_lat, word_masks = masks_for_words(mask, tuple(samples_in.shape), prompts.edit_words)
        unet = model.get_model_object("diffusion_model")
        attn = next((m for n, m in unet.named_modules() if n.endswith("attn2")), None)
        if attn is not None and attn.to_k.weight.shape[1] != prompts.target_context.shape[-1]:
            raise InputError("clip", f"produces {prompts.target_context.shape[-1]}-wide text features but the model "
                             f"expects {attn.to_k.weight.shape[1]}.", "Use the CLIP of the same checkpoint as the model.")

        patcher = model.clone()
        mm.load_models_gpu([patcher])
        # progress units: DDIM inversion, the reconstruction walk, the edit (N steps each)
        pbar = comfy.utils.ProgressBar(3 * config.steps)

        def progress():
            pbar.update(1)
            mm.throw_exception_if_processing_interrupted()

        with torch.inference_mode(False):
            device = patcher.load_device
            den = ComfyDenoiser(patcher)
            x0 = patcher.model.process_latent_in(samples_in.detach().clone().float()).to(device)
            m = mask_lat.clone()
            p = EditPrompts(**{k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in vars(prompts).items()})
            wm = word_masks.clone() if word_masks is not None else None
            result = mag_edit(den, x0, m, p, config, progress=progress, word_masks=wm)
            edited = patcher.model.process_latent_out(result.latent.detach().float()).cpu()
            edited = edited.to(samples_in.dtype)
            image = attention_image(result.map_before, result.map_after, samples_in.shape[-2] * 8,
                                    samples_in.shape[-1] * 8)
        if image is None:
            log.warning("ContextEdit MAG Edit: no step was optimised (optimize_until = 0), so there is no "
                            "attention map; the attention output is black.")
            image = torch.zeros(samples_in.shape[0], samples_in.shape[-2] * 8, samples_in.shape[-1] * 16 + 4, 3)
        out = {k: v for k, v in latent.items() if k != "samples"}
        out["samples"] = edited
        return io.NodeOutput(out, image)


NODES = [MagEdit]
