"""The papers' metric sets, computed for one (source, edited) pair with the benchmarks' definitions.

Inputs are 8-bit RGB arrays [H, W, 3] (ComfyUI images are quantised to 8 bits first, as the
benchmarks read saved files), an optional edit mask [H, W] (1 = edited region) and captions.
:data:`PROTOCOLS` names each set's backbones and preprocessing; references.py labels the papers'
rows the same way.

``pie`` -- PIE-Bench (cure-lab/PnPInversion ``evaluation/``), source vs edited:
    structure_distance  DINO ViT-B/8 last-layer key self-similarity MSE, whole images (dino.py)
    psnr_bg / lpips_bg / mse_bg / ssim_bg   both images x (1 - mask), whole frame scored (quirk
                        kept for comparability, see pixel.py); LPIPS with SqueezeNet; NaN when the
                        mask covers everything
    clip_whole          CLIPScore(edited, target prompt), CLIP ViT-L/14, 100 * max(cos, 0)
    clip_edited         CLIPScore(uint8(edited * mask), target prompt); NaN with an empty mask
    psnr_bg_only / mse_bg_only   ours: the same errors over background pixels only (no zeroed
                        region in the mean), reported beside the comparable numbers
  No mask given: the background is the whole image and clip_edited is NaN. The benchmark's
  decoder forces the mask border to 1 (rle.py); the runner does that, the node uses the mask as is.
  Sizes as ``evaluate.py``: an edited image of the source's size is used as is; a non-square one
  that contains the source's size (a side-by-side result) is cropped to its bottom-right
  source-sized panel (the script: ``crop((w - 512, h - 512, w, h))``, 512 being every PIE-Bench
  source); any other size is refused (the script would fail its equal-shape assert, or PIL's crop
  would pad a smaller image with black).
``magicbrush`` -- MagicBrush (``evaluation/image_eval.py``), edited vs the ground-truth target
  (``reference``; the source when none is given), the edited image resized to the reference's
  size (PIL bicubic, as ``gen_img.resize(gt_img.size)``):
    l1, l2              mean |.| / mean (.)^2 over [0, 1] pixels
    clip_i              cos of CLIP ViT-B/32 image embeddings
    dino                cos of DINO ViT-S/16 CLS tokens
    clip_t              cos(CLIP ViT-B/32 image of edited, text of the target caption)
``emu`` -- Emu Edit test protocol (no official script; the paper's definitions), source vs edited:
    clip_dir            cos(E_img(edited) - E_img(source), E_txt(target) - E_txt(source caption))
    clip_img            cos(E_img(source), E_img(edited))
    clip_out            cos(E_img(edited), E_txt(target caption))
    l1                  mean |source - edited| over [0, 1] pixels
    dino                cos of DINO ViT-S/16 CLS tokens (MagicBrush's backbone; our stated choice)
  CLIP is ViT-L/14 with InstructPix2Pix's preprocessing (``metrics/clip_similarity.py``: the [0, 1]
  image resized to 224 x 224 by bicubic ``F.interpolate``, no crop): that code computes these three
  CLIP numbers, and the Emu Edit paper's values are read as coming from it (references.py says how
  far that is checked). The edited image is resized to the source's size (PIL bicubic).
``emu_crop`` -- the same metrics with OpenAI CLIP's preprocessing (short side 224, centre crop),
  what most reimplementations use; not the protocol of the Emu Edit paper's rows.
``pixel`` -- no networks: PSNR / SSIM / MSE of the background (PIE-Bench convention, sizes as
  ``pie``), the background-only PSNR and L1 of the whole image. For quick checks without model files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from . import pixel


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    scale: float          # reported value = raw * scale (the papers' table scale)
    unit: str             # shown next to the label ("x10^3", "dB", "")
    higher_is_better: bool
    network: str = ""     # models.NETWORKS key, "" for pixel metrics


SUITES = {
    "pie": ("PIE-Bench", (
        Metric("structure_distance", "Structure distance", 1e3, "x10^3", False, "dino_b8"),
        Metric("psnr_bg", "PSNR background", 1.0, "dB", True),
        Metric("lpips_bg", "LPIPS background", 1e3, "x10^3", False, "lpips"),
        Metric("mse_bg", "MSE background", 1e4, "x10^4", False),
        Metric("ssim_bg", "SSIM background", 1e2, "x10^2", True),
        Metric("clip_whole", "CLIP whole", 1.0, "", True, "clip_l14"),
        Metric("clip_edited", "CLIP edited", 1.0, "", True, "clip_l14"),
        Metric("psnr_bg_only", "PSNR background pixels only", 1.0, "dB", True),
        Metric("mse_bg_only", "MSE background pixels only", 1e4, "x10^4", False),
    )),
    "magicbrush": ("MagicBrush", (
        Metric("l1", "L1", 1.0, "", False),
        Metric("l2", "L2", 1.0, "", False),
        Metric("clip_i", "CLIP-I", 1.0, "", True, "clip_b32"),
        Metric("dino", "DINO", 1.0, "", True, "dino_s16"),
        Metric("clip_t", "CLIP-T", 1.0, "", True, "clip_b32"),
    )),
    "emu": ("Emu Edit", (
        Metric("clip_dir", "CLIP direction", 1.0, "", True, "clip_l14"),
        Metric("clip_img", "CLIP image", 1.0, "", True, "clip_l14"),
        Metric("clip_out", "CLIP output", 1.0, "", True, "clip_l14"),
        Metric("l1", "L1", 1.0, "", False),
        Metric("dino", "DINO", 1.0, "", True, "dino_s16"),
    )),
    "emu_crop": ("Emu Edit, centre-crop CLIP", (
        Metric("clip_dir", "CLIP direction", 1.0, "", True, "clip_l14"),
        Metric("clip_img", "CLIP image", 1.0, "", True, "clip_l14"),
        Metric("clip_out", "CLIP output", 1.0, "", True, "clip_l14"),
        Metric("l1", "L1", 1.0, "", False),
        Metric("dino", "DINO", 1.0, "", True, "dino_s16"),
    )),
    "pixel": ("Pixel (no networks)", (
        Metric("psnr_bg", "PSNR background", 1.0, "dB", True),
        Metric("ssim_bg", "SSIM background", 1e2, "x10^2", True),
        Metric("mse_bg", "MSE background", 1e4, "x10^4", False),
        Metric("psnr_bg_only", "PSNR background pixels only", 1.0, "dB", True),
        Metric("l1", "L1", 1.0, "", False),
    )),
}


PROTOCOLS = {
    "pie": ("PIE-Bench evaluate.py: DINO ViT-B/8 structure distance; LPIPS SqueezeNet; CLIP ViT-L/14 as "
            "torchmetrics' CLIPScore (short side 224, centre crop); SSIM without the 5-pixel border; "
            "a non-square result cropped to its bottom-right source-sized panel"),
    "magicbrush": ("MagicBrush image_eval.py: CLIP ViT-B/32 (short side 224 bicubic, centre crop); DINO "
                   "ViT-S/16 (resize 256 bicubic, centre crop 224); the result resized to the reference"),
    "emu": ("Emu Edit definitions: CLIP ViT-L/14 with InstructPix2Pix's preprocessing (resize to 224x224, "
            "no crop); DINO ViT-S/16 (MagicBrush's, our choice); the result resized to the source"),
    "emu_crop": ("Emu Edit definitions with OpenAI CLIP preprocessing: CLIP ViT-L/14 (short side 224, "
                 "centre crop); DINO ViT-S/16 (our choice); the result resized to the source"),
    "pixel": "PIE-Bench's background PSNR / SSIM / MSE and L1; sizes as PIE-Bench's evaluate.py",
}
CLIP_PREPROCESS = {"emu": "ip2p", "emu_crop": "center_crop"}


def suite_metrics(suite: str):
    if suite not in SUITES:
        raise InputError("metric_set", f"'{suite}' is not a metric set.", f"Use one of {sorted(SUITES)}.")
    return SUITES[suite][1]


def networks_needed(suite: str) -> list:
    return sorted({m.network for m in suite_metrics(suite) if m.network})


def as_uint8(image, name: str) -> np.ndarray:
    """[H, W, 3] uint8 from uint8 or float (0..1) arrays; float is rounded, as saving a PNG does."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(name, f"must be an RGB image [H, W, 3], got shape {arr.shape}.", "Pass one RGB image.")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def resize_to(image_u8: np.ndarray, height: int, width: int) -> np.ndarray:
    if image_u8.shape[:2] == (height, width):
        return image_u8
    from PIL import Image

    return np.asarray(Image.fromarray(image_u8).resize((width, height), Image.BICUBIC))


def pie_align(edited_u8: np.ndarray, height: int, width: int) -> np.ndarray:
    """The edited image as PIE-Bench's evaluate.py compares it with a (height, width) source: as is
    when the sizes match; a non-square image at least that large cropped to its bottom-right
    (height, width) panel (``tgt.crop((w - 512, h - 512, w, h))``); anything else refused."""
    h, w = edited_u8.shape[:2]
    if (h, w) == (height, width):
        return edited_u8
    if h != w and h >= height and w >= width:
        return edited_u8[h - height:, w - width:]
    raise InputError(
        "edited", f"is {w}x{h} but the source is {width}x{height}. PIE-Bench's evaluate.py compares equal "
        f"sizes; it only crops a non-square result (e.g. panels side by side) to its bottom-right "
        f"{width}x{height} panel, and this one is {'square' if h == w else 'smaller than the source'}.",
        "Give the edit at the source's size (or a side-by-side strip whose last panel is the edit); "
        "the Emu Edit set resizes instead.")


def mask_array(mask, height: int, width: int):
    """A float32 0/1 [H, W] edit mask at the image size (nearest resize, > 0.5 is edited) or None."""
    if mask is None:
        return None
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise InputError("mask", f"must be one mask [H, W], got shape {m.shape}.", "Pass a single MASK.")
    if m.shape != (height, width):
        from PIL import Image

        m = np.asarray(Image.fromarray((m > 0.5).astype(np.uint8) * 255).resize((width, height), Image.NEAREST),
                       dtype=np.float32) / 255.0
    return (m > 0.5).astype(np.float32)


def _pie_pixels(src, edt, keep, out, with_lpips, models):
    a, b = pixel.pie_masked(src, keep), pixel.pie_masked(edt, keep)
    out["psnr_bg"] = pixel.psnr(a, b)
    out["ssim_bg"] = pixel.ssim(a, b)
    out["mse_bg"] = pixel.mse(a[0], b[0])
    if with_lpips:
        from .lpips_net import lpips_distance

        out["lpips_bg"] = lpips_distance(models.get("lpips"), a, b)
    out["psnr_bg_only"] = pixel.psnr_background_only(src, edt, keep)
    out["mse_bg_only"] = pixel.mse_background_only(src, edt, keep)


def compute(suite: str, source, edited, models=None, *, mask=None, reference=None,
            source_caption: str = "", target_caption: str = "") -> dict:
    """Raw metric values {key: float} of one set (NaN where a metric is undefined for the input)."""
    metrics = suite_metrics(suite)
    src = as_uint8(source, "source")
    edt = as_uint8(edited, "edited")
    height, width = src.shape[:2]
    if networks_needed(suite) and models is None:
        raise InputError("metric_set", f"'{suite}' needs networks ({', '.join(networks_needed(suite))}).",
                         "Pass MetricModels (model files in models/metrics).")
    for metric in metrics:
        if metric.key in ("clip_whole", "clip_edited", "clip_out", "clip_dir", "clip_t") and not (
                target_caption or "").strip():
            raise InputError("target_caption", f"is empty but the {SUITES[suite][0]} set needs it.",
                             "Give the caption (prompt) of the edited image.")
        if metric.key == "clip_dir" and not (source_caption or "").strip():
            raise InputError("source_caption", "is empty but CLIP direction similarity needs it.",
                             "Give the caption of the source image.")
    out = {}
    if suite == "magicbrush":
        ref = as_uint8(reference, "reference") if reference is not None else src
        gen = resize_to(edt, *ref.shape[:2])
        a, b = pixel.unit_tensor(gen), pixel.unit_tensor(ref)
        out["l1"], out["l2"] = pixel.l1(a, b), pixel.l2(a, b)
        from . import clip_sim, dino

        clip = models.get("clip_b32")
        img = clip.image_features([gen, ref])
        txt = clip.text_features([target_caption])
        out["clip_i"] = clip_sim.cosine(img[0], img[1])
        out["clip_t"] = clip_sim.cosine(img[0], txt[0])
        out["dino"] = dino.dino_similarity(models.get("dino_s16"), gen, ref)
        return out

    edt = pie_align(edt, height, width) if suite in ("pie", "pixel") else resize_to(edt, height, width)
    m = mask_array(mask, height, width)
    edit_region = m if m is not None else np.zeros((height, width), np.float32)
    keep = 1.0 - edit_region
    if suite in ("pie", "pixel"):
        if keep.sum() == 0:
            for k in ("psnr_bg", "ssim_bg", "mse_bg", "lpips_bg", "psnr_bg_only", "mse_bg_only"):
                out[k] = float("nan")
        else:
            _pie_pixels(src, edt, keep, out, suite == "pie", models)
    if suite == "pixel":
        out["l1"] = pixel.l1(pixel.unit_tensor(src), pixel.unit_tensor(edt))
    elif suite == "pie":
        from . import clip_sim, dino

        out["structure_distance"] = dino.structure_distance(models.get("dino_b8"), src, edt)
        clip = models.get("clip_l14")
        out["clip_whole"] = clip_sim.clip_score(clip, edt, target_caption)
        if edit_region.sum() == 0:
            out["clip_edited"] = float("nan")
        else:
            region = np.uint8(edt * edit_region[..., None])  # PIE-Bench: np.uint8(img * mask)
            out["clip_edited"] = clip_sim.clip_score(clip, region, target_caption)
    elif suite in ("emu", "emu_crop"):
        from . import clip_sim, dino

        clip = models.get("clip_l14")
        img = clip.image_features([src, edt], preprocess=CLIP_PREPROCESS[suite])
        txt = clip.text_features([source_caption, target_caption])
        out["clip_dir"] = clip_sim.cosine(img[1] - img[0], txt[1] - txt[0])
        out["clip_img"] = clip_sim.cosine(img[0], img[1])
        out["clip_out"] = clip_sim.cosine(img[1], txt[1])
        out["l1"] = pixel.l1(pixel.unit_tensor(src), pixel.unit_tensor(edt))
        out["dino"] = dino.dino_similarity(models.get("dino_s16"), src, edt)
    return {m.key: out[m.key] for m in metrics}


def mean_results(per_image: list) -> dict:
    """Mean of each metric over a batch, skipping NaN (undefined) values; NaN when none is defined."""
    out = {}
    for key in per_image[0] if per_image else []:
        values = [r[key] for r in per_image if not math.isnan(r[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def compute_batch(suite: str, sources, editeds, models=None, *, masks=None, references=None,
                  source_caption: str = "", target_caption: str = "", on_pair=None):
    """Pairs i of a batch (a batch of 1 broadcasts); returns (mean, per-image list).

    ``on_pair(done, n)`` runs before each pair and after the last one: progress, and the place to
    stop between pairs by raising (ComfyUI's interrupt check)."""
    n = max(len(sources), len(editeds))
    for name, batch in (("source", sources), ("edited", editeds), ("mask", masks), ("reference", references)):
        if batch is not None and len(batch) not in (1, n):
            raise InputError(name, f"has a batch of {len(batch)} but the other inputs have {n}.",
                             "Give one item or as many as the edited batch.")

    def pick(batch, i):
        return None if batch is None else batch[i if len(batch) > 1 else 0]

    per_image = []
    for i in range(n):
        if on_pair is not None:
            on_pair(i, n)
        per_image.append(compute(suite, pick(sources, i), pick(editeds, i), models, mask=pick(masks, i),
                                 reference=pick(references, i), source_caption=source_caption,
                                 target_caption=target_caption))
    if on_pair is not None:
        on_pair(n, n)
    return mean_results(per_image), per_image
