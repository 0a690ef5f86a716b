"""Load a local vision-language model (Hugging Face folder) and ask it one question about an image.

Plain transformers, no ComfyUI: the node resolves the folder (``model_folders.resolve_model``),
calls :func:`load_vlm` with the path, wraps ``vlm.model`` in a ModelPatcher and passes ComfyUI's
interrupt check as ``should_stop`` and a ProgressBar update as ``on_token``.

Loading is local only (``local_files_only=True``, ``trust_remote_code=False``): a folder that
needs remote code, or an architecture transformers' ``AutoModelForImageTextToText`` does not
know, is refused with an :class:`InputError` naming the ``model_type``.

Devices
-------
:class:`VLM` never pins a device. ``generate`` sends its inputs to wherever ``vlm.model``'s
weights are *at call time*, so whoever moves the module -- ``vlm.to(device)`` here, or
ComfyUI's memory manager through ``ManagedModel.load`` (nodes/managed.py) in the node -- decides
where it runs. The dtype is fixed at load time (moving never casts): pick it for the device the
model will *compute* on (:func:`default_dtype` here; the node uses ComfyUI's rules,
``managed.compute_dtype``), even when loading onto the offload device first. The module must be
loaded whole (transformers modules have no ComfyUI low-VRAM casting); ManagedModel does that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError
from .box_coords import ModelFamily, family_of

# Files a processor needs next to config.json. transformers >= 5 writes processor_config.json
# (image + video processor inside); hub folders saved by older versions hold
# preprocessor_config.json.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# torch.OutOfMemoryError is a RuntimeError; it must reach ComfyUI as itself (torch < 2.5: cuda's)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", getattr(torch.cuda, "OutOfMemoryError", ()))
_EXPECTED = ("a Hugging Face vision-language model folder (config.json, processor_config.json or "
             "preprocessor_config.json, tokenizer files, *.safetensors), e.g. "
             "models/LLM/Qwen2.5-VL-3B-Instruct")


class GenerationResult(NamedTuple):
    """What :meth:`VLM.generate` returns.

    ``model_input_size`` is ``(width, height)`` in pixels of the image as the model saw it (for
    Qwen-VL: the smart-resized size, ``image_grid_thw`` w/h times the patch size), or ``None``
    when the processor does not report a patch grid.
    """

    text: str
    model_input_size: tuple[int, int] | None
    num_new_tokens: int


def default_dtype(device) -> torch.dtype:
    """bf16 on CUDA when supported, else fp16 on CUDA; fp32 everywhere else (CPU, MPS...)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.cuda.device(index):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _read_model_type(path: str) -> str:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return "(unreadable config.json)"
    model_type = data.get("model_type") if isinstance(data, dict) else None
    return str(model_type) if model_type else "(no model_type in config.json)"


def check_vlm_folder(path, input_name: str = "model_name") -> str:
    """The folder as a string, or an InputError saying which expected file is missing."""
    path = os.fspath(path) if path is not None else ""
    if not path or not os.path.isdir(path):
        raise InputError(input_name, f"'{path}' is not a folder.", f"Expected {_EXPECTED}.")
    present = set(os.listdir(path))
    if "config.json" not in present:
        raise InputError(input_name, f"'{path}' has no config.json, so it is not a Hugging Face "
                         "model folder.", f"Expected {_EXPECTED}.")
    if not present.intersection(PROCESSOR_FILES):
        raise InputError(input_name, f"'{path}' has no processor files (expected "
                         f"{' or '.join(PROCESSOR_FILES)}).",
                         "Download the whole model repository, not only the weights.")
    if not present.intersection(TOKENIZER_FILES):
        raise InputError(input_name, f"'{path}' has no tokenizer files (expected one of "
                         f"{', '.join(TOKENIZER_FILES)}).",
                         "Download the whole model repository, not only the weights.")
    if not present.intersection(WEIGHT_FILES) and not any(
            name.endswith(".safetensors") for name in present):
        raise InputError(input_name, f"'{path}' has no weights (expected model.safetensors or "
                         "model.safetensors.index.json with its shards).",
                         "Finish downloading the model.")
    return path


def _supported_model_types() -> set:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def _dtype_kwarg(dtype) -> dict:
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    # transformers renamed torch_dtype -> dtype in 4.56
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_vlm(path, device=None, dtype=None, input_name: str = "model_name") -> VLM:
    """Load processor + model from a local folder; returns a :class:`VLM` in eval mode.

    ``device``: where the weights go now (default: CUDA if available, else CPU). ``dtype``:
    default :func:`default_dtype` of ``device`` (bf16/fp16 on CUDA, fp32 on CPU). ``input_name``
    is the node input errors name.
    """
    path = check_vlm_folder(path, input_name)
    device = torch.device(device) if device is not None else _default_device()
    dtype = dtype if dtype is not None else default_dtype(device)

    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as error:
        model_type = _read_model_type(path)
        raise InputError(input_name, f"'{path}' has model_type '{model_type}', which this "
                         f"transformers version cannot load without remote code ({error}).",
                         "Use a vision-language model transformers supports natively, e.g. "
                         "Qwen2.5-VL or Qwen2-VL, or upgrade transformers.") from None
    model_type = str(getattr(config, "model_type", ""))
    if model_type not in _supported_model_types():
        raise InputError(input_name, f"'{path}' holds a '{model_type}' model, which is not an "
                         "image-text-to-text (vision-language) architecture transformers knows.",
                         "Pick a vision-language model such as Qwen2.5-VL-3B-Instruct.")
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise InputError(input_name, f"the processor files in '{path}' could not be loaded "
                         f"({type(error).__name__}: {error}).",
                         "Re-download the model folder's processor and tokenizer files.") from None
    if not getattr(processor, "chat_template", None) and not getattr(
            getattr(processor, "tokenizer", None), "chat_template", None):
        raise InputError(input_name, f"'{path}' ({model_type}) has no chat template "
                         "(chat_template.jinja or chat_template.json).",
                         "Use an instruction-tuned (-Instruct) model folder.")
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, **_dtype_kwarg(dtype))
    except _OUT_OF_MEMORY:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise InputError(input_name, f"the weights in '{path}' could not be loaded "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).",
                         "Re-download the model; an interrupted download leaves truncated "
                         "*.safetensors files.") from None
    except Exception as error:  # safetensors' SafetensorError derives from Exception only
        if type(error).__name__ != "SafetensorError":
            raise
        raise InputError(input_name, f"a weights file in '{path}' is damaged ({error}).",
                         "Re-download the model's *.safetensors files.") from None
    model = model.to(device).eval()
    model.requires_grad_(False)
    return VLM(model=model, processor=processor, model_type=model_type,
               family=family_of(model_type), path=path)


# ---- images ----------------------------------------------------------------------------------
def to_pil(image, input_name: str = "image"):
    """A PIL RGB image from PIL, or an [H, W, 3|4] (or [1, H, W, C]) uint8 / float 0..1 array."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu")
        if array.is_floating_point():
            array = array.float()
        array = array.numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InputError(input_name, f"must be a PIL image or an [H, W, 3] array, got "
                         f"{type(image).__name__}.", "Connect an IMAGE.")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise InputError(input_name, f"must be [H, W, 3], got shape {tuple(array.shape)}.",
                         "Pass one image (slice the batch first).")
    if np.issubdtype(array.dtype, np.floating):
        array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]), mode="RGB")


# ---- generation hooks ------------------------------------------------------------------------
def _criteria(prompt_len: int, max_new_tokens: int, should_stop, on_token):
    """A StoppingCriteria calling ``on_token(n, max)`` and ``should_stop()`` after every token."""
    from transformers import StoppingCriteria

    class _Hooks(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            n = int(input_ids.shape[-1]) - prompt_len
            if on_token is not None:
                on_token(n, max_new_tokens)
            stop = bool(should_stop()) if should_stop is not None else False  # may raise
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool,
                              device=input_ids.device)

    return _Hooks()


# Qwen2-VL's grounding tokens are special tokens of its tokenizer: skip_special_tokens would delete
# them and leave "a cat(120,80),(410,390)", losing which numbers are a box and which text is its label.
GROUNDING_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                    "<|quad_start|>", "<|quad_end|>")


def decode_reply(tokenizer, token_ids) -> str:
    """The generated text without chat/padding special tokens but with grounding tags kept."""
    text = tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    specials = sorted((t for t in getattr(tokenizer, "all_special_tokens", ()) if t and t not in GROUNDING_TOKENS),
                      key=len, reverse=True)
    for token in specials:
        text = text.replace(token, "")
    return text


@dataclass
class VLM:
    """A loaded vision-language model.

    ``model`` is the Hugging Face nn.Module (wrap it in a ModelPatcher); ``family`` says how it
    writes boxes (``family.convention`` is a box_coords convention; ``family.known`` is False
    when it was a guess).
    """

    model: torch.nn.Module
    processor: object
    model_type: str
    family: ModelFamily
    path: str = ""

    @property
    def box_convention(self) -> str:
        return self.family.convention

    @property
    def device(self) -> torch.device:
        """Where the weights are now (inputs follow them)."""
        for parameter in self.model.parameters():
            return parameter.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for parameter in self.model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.float32

    def to(self, device) -> VLM:
        """Move the weights (dtype unchanged); returns self. Same effect as a ModelPatcher load."""
        self.model.to(device)
        return self

    def _patch_size(self) -> int | None:
        image_processor = getattr(self.processor, "image_processor", None)
        patch = getattr(image_processor, "patch_size", None)
        if isinstance(patch, dict):
            patch = patch.get("height")
        return int(patch) if isinstance(patch, int) and patch > 0 else None

    def _input_size(self, grid) -> tuple[int, int] | None:
        patch = self._patch_size()
        if grid is None or patch is None:
            return None
        _, grid_h, grid_w = (int(v) for v in grid[0].tolist())
        return grid_w * patch, grid_h * patch

    def model_input_size(self, image) -> tuple[int, int] | None:
        """``(width, height)`` the model will see ``image`` at (None if the processor has no
        patch grid). Runs the image processor only; lets a prompt state the size up front."""
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None:
            return None
        try:
            processed = image_processor(images=[to_pil(image)], return_tensors="pt")
        except ValueError as error:
            raise InputError("image", f"the model's image processor refused it ({error}).",
                             "Resize or crop the image.") from None
        return self._input_size(processed.get("image_grid_thw"))

    def build_chat(self, prompt_text: str, n_images: int = 1) -> str:
        content = [{"type": "image"} for _ in range(n_images)]
        messages = [{"role": "user", "content": content + [{"type": "text", "text": prompt_text}]}]
        template_owner = self.processor
        if not getattr(self.processor, "chat_template", None):
            template_owner = self.processor.tokenizer
        return template_owner.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def generate(self, image, prompt_text: str, max_new_tokens: int = 512,
                 should_stop: Callable[[], bool] | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> GenerationResult:
        """Greedy answer to ``prompt_text`` about ``image``; returns only the new text.

        ``image`` may also be a list of images (e.g. an edit's source and result): they are shown
        in that order before the text; ``model_input_size`` is then the first image's.

        ``should_stop()`` runs after every generated token: returning True ends generation
        early (the text so far is returned); raising (ComfyUI's interrupt) propagates. It is
        also called once before the prompt is encoded. ``on_token(n_generated, max_new_tokens)``
        runs after every token (progress bar).
        """
        if not isinstance(prompt_text, str) or not prompt_text.strip():
            raise InputError("prompt", "is empty.", "Pass the question for the model.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 1:
            raise InputError("max_new_tokens", f"must be a positive integer, got "
                             f"{max_new_tokens!r}.", "Use e.g. 512.")
        if should_stop is not None and should_stop():
            return GenerationResult("", None, 0)
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise InputError("image", "is an empty list.", "Pass at least one image.")
        pils = [to_pil(one) for one in images]
        chat = self.build_chat(prompt_text, len(pils))
        try:
            inputs = self.processor(text=[chat], images=pils, return_tensors="pt")
        except ValueError as error:
            raise InputError("image", f"the model's processor refused it ({error}).",
                             "Resize or crop the image.") from None
        input_size = self._input_size(inputs.get("image_grid_thw"))
        device, dtype = self.device, self.dtype
        inputs = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
                  if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        prompt_len = int(inputs["input_ids"].shape[-1])

        from transformers import StoppingCriteriaList

        criteria = StoppingCriteriaList([_criteria(prompt_len, max_new_tokens, should_stop,
                                                   on_token)])
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                # a checkpoint's generation_config may ask for sampling; greedy ignores these
                temperature=None, top_p=None, top_k=None,
                stopping_criteria=criteria,
            )
        new_tokens = output[:, prompt_len:]
        text = decode_reply(self.processor.tokenizer if hasattr(self.processor, "tokenizer") else self.processor,
                            new_tokens[0])
        return GenerationResult(text, input_size, int(new_tokens.shape[-1]))
