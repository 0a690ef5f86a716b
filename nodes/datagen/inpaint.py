"""Editing pairs by inpainting: remove an object, replace it; each pair also stored reversed.

InsightEdit (``3_1_remove_add_construction.py``) builds, per object that passed the object
filter (targets.py): a *remove* pair (source -> inpainted without the object) and its reverse *add*
pair (inpainted -> source, instruction "add the ..."); its replace script does the same with a
proposed replacement class (*replace* both ways), prompting the inpainter with that short class
name (``text_guided_prompt=replace_class``; the replacement's detailed caption is only stored).
The inpainting mask is the object's SAM mask grown as the repo grows it (:func:`dilate_erode`):
40 iterations of a 5x5 binary dilation, then 15 iterations of a 5x5 binary erosion of the dilated
mask (scipy semantics: pixels outside the image count as background, so the erosion also eats 30 px
in from the image border). The repo's Gaussian blur of the dilated mask is computed but never used
there, so it is left out here. Each pair stores that grown mask (``inpaint_mask``, COCO RLE) beside
the raw segmentation, and the export writes both.

The inpainter is a plain diffusers inpainting pipeline (SD1.5 / SDXL inpainting, a UNet with 9
input channels) loaded from a local single file (``from_single_file`` with a local diffusers
folder as ``config``) or a local diffusers folder, never from the hub. PowerPaint's removal task
prompt is its "empty scene blur" prefix; plain SD inpainting has no task tokens, so the class name
goes into the negative prompt instead. Images are resized so the short side is ``resolution``
(the repo: 640) with both sides floored to a multiple of 8, inpainted, and the result is resized
back to the source size so a pair's two images align pixel for pixel.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from ..errors import InputError

DILATE_ITERATIONS = 40
ERODE_ITERATIONS = 15
KERNEL = 5
RESOLUTION = 640
STEPS = 45
GUIDANCE = 12.0
REMOVE_PROMPT = "empty scene blur"
REMOVE_NEGATIVE = "{name}, object, text, watermark"
REPLACE_NEGATIVE = "worst quality, low quality, normal quality, bad quality, blurry"


def dilate_erode(mask, dilate_iterations: int = DILATE_ITERATIONS,
                 erode_iterations: int = ERODE_ITERATIONS, kernel: int = KERNEL) -> np.ndarray:
    """InsightEdit's mask growth on a 2-D 0/1 mask -> uint8 0/1.

    n iterations of a k x k square dilation equal one dilation by a ((k-1)n+1)-wide square, and
    the same for erosion with an outside of background, so each is one separable max-pool.
    """
    x = torch.as_tensor(np.asarray(mask) != 0, dtype=torch.float32)[None, None]
    reach = (kernel - 1) // 2
    if dilate_iterations > 0:
        r = reach * dilate_iterations
        x = torch.nn.functional.max_pool2d(x, (1, 2 * r + 1), stride=1, padding=(0, r))
        x = torch.nn.functional.max_pool2d(x, (2 * r + 1, 1), stride=1, padding=(r, 0))
    if erode_iterations > 0:
        r = reach * erode_iterations
        inverse = torch.nn.functional.pad(1.0 - x, (r, r, r, r), value=1.0)  # outside = background
        inverse = torch.nn.functional.max_pool2d(inverse, (1, 2 * r + 1), stride=1)
        inverse = torch.nn.functional.max_pool2d(inverse, (2 * r + 1, 1), stride=1)
        x = 1.0 - inverse
    return x[0, 0].to(torch.uint8).numpy()


def working_size(width: int, height: int, resolution: int = RESOLUTION) -> tuple[int, int]:
    """(w, h) with the short side scaled to ``resolution`` and both floored to multiples of 8."""
    if width <= height:
        w, h = resolution, int(height / width * resolution)
    else:
        w, h = int(width / height * resolution), resolution
    return max(8, w - w % 8), max(8, h - h % 8)


def slug(text: str) -> str:
    """A file-name-safe lower-case form of a class name (as the repo's preprocess_class_name)."""
    return re.sub(r"[^a-z0-9]+", "_", text.casefold()).strip("_")[:40] or "object"


def _is_sdxl_file(path: str) -> bool:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            return any(k.startswith("conditioner.embedders.1.") for k in handle.keys())  # noqa: SIM118 - safe_open is no dict
    return False


class Inpainter:
    """A local diffusers inpainting pipeline; ``inpaint(image, mask, prompt, negative, seed)``."""

    def __init__(self, path, config=None, device=None, dtype=None, steps: int = STEPS,
                 guidance: float = GUIDANCE, resolution: int = RESOLUTION):
        from diffusers import (
            StableDiffusionInpaintPipeline,
            StableDiffusionXLInpaintPipeline,
        )

        path = os.fspath(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        if os.path.isdir(path):
            index = os.path.join(path, "model_index.json")
            if not os.path.isfile(index):
                raise InputError("inpainter", f"'{path}' has no model_index.json, so it is not a "
                                 "diffusers pipeline folder.", "Pass an inpainting checkpoint file "
                                 "(with --inpaint-config) or a diffusers inpainting folder.")
            with open(index, encoding="utf-8") as handle:
                sdxl = "XL" in handle.read()
            cls = StableDiffusionXLInpaintPipeline if sdxl else StableDiffusionInpaintPipeline
            pipe = cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype,
                                       safety_checker=None, requires_safety_checker=False)
        elif os.path.isfile(path):
            if not config or not os.path.isdir(config):
                raise InputError("inpaint_config", f"a single-file checkpoint needs a local diffusers "
                                 f"folder with its component configs, got {config!r}.",
                                 "Pass --inpaint-config pointing at e.g. a stable-diffusion-inpainting "
                                 "folder (model_index.json + */config.json; weights not needed).")
            sdxl = _is_sdxl_file(path)
            cls = StableDiffusionXLInpaintPipeline if sdxl else StableDiffusionInpaintPipeline
            kwargs = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
            pipe = cls.from_single_file(path, config=os.fspath(config), local_files_only=True,
                                        torch_dtype=dtype, **kwargs)
        else:
            raise InputError("inpainter", f"'{path}' does not exist.",
                             "Pass an inpainting checkpoint file or diffusers folder.")
        self.unet_in_channels = int(pipe.unet.config.in_channels)
        if self.unet_in_channels != 9:
            raise InputError("inpainter", f"'{os.path.basename(path)}' has a UNet with "
                             f"{self.unet_in_channels} input channels; an inpainting model has 9 "
                             "(latent + mask + masked-image latent).",
                             "Use an inpainting checkpoint such as sd-v1-5-inpainting or "
                             "sd_xl_base_1.0_inpainting.")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.device = device
        self.sdxl = sdxl
        self.name = os.path.basename(path.rstrip("/"))
        self.steps, self.guidance, self.resolution = int(steps), float(guidance), int(resolution)

    def settings(self) -> dict:
        return {"inpainter": self.name, "sdxl": self.sdxl, "steps": self.steps,
                "guidance": self.guidance, "resolution": self.resolution}

    def inpaint(self, image, mask, prompt: str, negative_prompt: str, seed: int):
        """Inpaint ``mask`` (2-D 0/1, source size) of PIL ``image``; PIL result at the source size."""
        from PIL import Image

        width, height = image.size
        w, h = working_size(width, height, self.resolution)
        mask_image = Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255, mode="L")
        generator = torch.Generator("cpu").manual_seed(int(seed))
        result = self.pipe(prompt=prompt, negative_prompt=negative_prompt,
                           image=image.convert("RGB").resize((w, h), Image.BICUBIC),
                           mask_image=mask_image.resize((w, h), Image.NEAREST), width=w, height=h,
                           num_inference_steps=self.steps, guidance_scale=self.guidance,
                           strength=1.0, generator=generator).images[0]
        return result.resize((width, height), Image.BICUBIC)


def pair_plans(item_id: str, annotation: dict, index: int, replace: bool = True) -> list:
    """The inpaintings one object asks for: [(kind, prompt, negative, file stem, target class)]."""
    name = annotation["class_name"]
    base = f"{item_id}_{index + 1}_{slug(name)}"
    plans = [("remove", REMOVE_PROMPT, REMOVE_NEGATIVE.format(name=name), base + "_removed", "")]
    target = annotation.get("replace_with", "").strip()
    if replace and target and target.casefold() != name.casefold():
        # the short class name, as 3_2_replace_construction.py's text_guided_prompt=replace_class
        plans.append(("replace", target, REPLACE_NEGATIVE, f"{base}_to_{slug(target)}", target))
    return plans


def pairs_for(kind: str, source: str, generated: str, name: str, target: str) -> list:
    """(task_type, origin, target, instructions, class_origin, class_target) of a forward pair and
    its reverse, with InsightEdit's template instructions."""
    if kind == "remove":
        return [("remove", source, generated, [f"remove the {name}"], name, ""),
                ("add", generated, source, [f"add the {name}"], "", name)]
    return [("replace", source, generated, [f"change the {name} to {target}",
                                            f"replace the {name} with {target}"], name, target),
            ("replace", generated, source, [f"change the {target} to {name}",
                                            f"replace the {target} with {name}"], target, name)]
