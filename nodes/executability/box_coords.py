"""Box coordinates as vision-language models write them -> source-image pixels.

Model families disagree (notes/algorithms.md section 7):

* ``absolute`` -- Qwen2.5-VL: absolute pixels of the image *the model saw*, i.e. the source image
  after Qwen's smart resize (each side a multiple of 28). Rescale by ``W / input_w`` and
  ``H / input_h``. The runtime knows the input size exactly from ``image_grid_thw``
  (``grid_w * 14``, ``grid_h * 14``); without it we recompute it with :func:`smart_resize`.
* ``relative_1000`` -- Qwen2-VL and Qwen3-VL: 0..1000 relative to the image, whatever its size.
* ``source_pixels`` -- already source-image pixels (e.g. Florence-2 after its post-processing).

Sizes are ``(width, height)`` throughout this module, except :func:`smart_resize`, which keeps
Qwen's ``(height, width)`` argument and result order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ..errors import InputError

ABSOLUTE = "absolute"
RELATIVE_1000 = "relative_1000"
SOURCE_PIXELS = "source_pixels"
CONVENTIONS = (ABSOLUTE, RELATIVE_1000, SOURCE_PIXELS)

# Qwen2.5-VL's preprocessor_config.json (and qwen_vl_utils): 4*28*28 .. 16384*28*28 pixels.
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 16384 * 28 * 28
QWEN_MAX_RATIO = 200


def smart_resize(height: int, width: int, factor: int = QWEN_FACTOR,
                 min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_MAX_PIXELS) -> Tuple[int, int]:
    """Qwen-VL's input size for a ``height`` x ``width`` image, as ``(height, width)``.

    Each side is rounded to the nearest multiple of ``factor`` (at least ``factor``). If the
    area then exceeds ``max_pixels`` both sides are scaled down by the same factor and floored to
    multiples of ``factor``; if it is below ``min_pixels`` they are scaled up and ceiled. The
    aspect ratio is kept as closely as those multiples allow. Python's ``round`` (ties to even)
    is used, as in Qwen's reference code.
    """
    for name, value in (("height", height), ("width", width), ("factor", factor),
                        ("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(name, f"must be a positive integer, got {value!r}.",
                             "Pass the image size in pixels.")
    if min_pixels > max_pixels:
        raise InputError("min_pixels", f"({min_pixels}) exceeds max_pixels ({max_pixels}).",
                         "Use min_pixels <= max_pixels.")
    if max(height, width) / min(height, width) > QWEN_MAX_RATIO:
        raise InputError(
            "image", f"{width}x{height} has an aspect ratio above {QWEN_MAX_RATIO}:1, which "
            "Qwen-VL does not accept.", "Crop or pad the image first.",
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ModelFamily:
    """How a model family writes boxes. ``note`` is non-empty when we had to guess."""

    model_type: str
    convention: str
    known: bool
    note: str = ""


def family_of(model_type: str) -> ModelFamily:
    """Map a transformers ``model_type`` (or architecture name) to its box convention.

    ``qwen2_5_vl`` -> absolute; ``qwen2_vl``, ``qwen3_vl`` (and ``qwen3_vl_moe``) ->
    relative_1000; anything else -> relative_1000 with a note saying it was a guess.
    """
    text = str(model_type or "")
    key = "".join(ch if ch.isalnum() else "_" for ch in text.lower())
    key = key.replace("qwen2_5", "qwen25").replace("qwen2__5", "qwen25")
    if "qwen25_vl" in key or "qwen25vl" in key:
        return ModelFamily(text, ABSOLUTE, True)
    if "qwen2_vl" in key or "qwen2vl" in key or "qwen3_vl" in key or "qwen3vl" in key:
        return ModelFamily(text, RELATIVE_1000, True)
    return ModelFamily(
        text, RELATIVE_1000, False,
        f"unknown model type {text!r}: assuming boxes are 0-1000 relative coordinates "
        "(Qwen2-VL / Qwen3-VL style); check the boxes in the report.",
    )


def check_size(size, name: str) -> Tuple[int, int]:
    """``(width, height)`` with positive integer sides, or an InputError naming ``name``."""
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        return int(size[0]), int(size[1])
    raise InputError(name, f"must be (width, height) with two positive integers, got {size!r}.",
                     "Pass the size in pixels.")


def check_convention(convention) -> str:
    if convention not in CONVENTIONS:
        raise InputError("convention", f"must be one of {', '.join(CONVENTIONS)}, got "
                         f"{convention!r}.", "Use family_of(model_type).convention.")
    return convention


def model_input_size_for(image_size, model_input_size=None) -> Tuple[int, int]:
    """The ``(width, height)`` an absolute-pixel model saw: given, or Qwen's smart resize."""
    if model_input_size is not None:
        return check_size(model_input_size, "model_input_size")
    width, height = check_size(image_size, "image_size")
    h_bar, w_bar = smart_resize(height, width)
    return w_bar, h_bar


def _as_float(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def to_source_pixels(box: Sequence, convention: str, image_size,
                     model_input_size=None) -> Optional[Tuple[float, float, float, float]]:
    """Convert one model box to source pixels ``(x1, y1, x2, y2)``, or ``None`` if unusable.

    Corners given in the wrong order are swapped, the box is clamped to the image, and a box
    that is not four finite numbers or has no area after clamping gives ``None``.
    ``model_input_size`` (width, height) matters for ``absolute`` only; ``None`` means
    Qwen's smart resize of ``image_size`` with its default pixel limits.
    """
    check_convention(convention)
    width, height = check_size(image_size, "image_size")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    values = [_as_float(v) for v in box]
    if any(v is None for v in values):
        return None
    x1, y1, x2, y2 = values
    if convention == ABSOLUTE:
        in_w, in_h = model_input_size_for((width, height), model_input_size)
        x1, x2 = x1 * width / in_w, x2 * width / in_w
        y1, y2 = y1 * height / in_h, y2 * height / in_h
    elif convention == RELATIVE_1000:
        x1, x2 = x1 * width / 1000, x2 * width / 1000
        y1, y2 = y1 * height / 1000, y2 * height / 1000
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    # "+ 0.0" turns a clamped -0.0 into 0.0
    x1, x2 = min(max(x1, 0.0), float(width)) + 0.0, min(max(x2, 0.0), float(width)) + 0.0
    y1, y2 = min(max(y1, 0.0), float(height)) + 0.0, min(max(y2, 0.0), float(height)) + 0.0
    if not (x1 < x2 and y1 < y2):
        return None
    return (x1, y1, x2, y2)
