"""Segment Anything: load a checkpoint safely, decode box (and point) prompts into masks.

Plain torch + segment-anything, no ComfyUI. The node resolves the file in ``models/sams``, calls
:func:`load_sam` with the path, wraps ``decoder.model`` in a ModelPatcher and calls
:meth:`SamDecoder.masks_from_boxes` / :func:`masks_for_plan`.

Loading never unpickles code: ``.safetensors`` through safetensors, anything else through
``torch.load(weights_only=True)``. The architecture is read from the state dict itself (embed
dim, depth, heads, which blocks attend globally), so vit_b / vit_l / vit_h and non-standard
encoders (distilled or test models) load without a "model type" setting, then the model is
built with segment-anything's own ``_build_sam`` and loaded with ``strict=True``.

The model stays float32 (SamPredictor feeds float32 images) and is used wherever its weights are
at call time (``decoder.to(device)`` or a ModelPatcher load move it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .box_masks import boxes_to_mask, dilate_mask, feather_mask

_EXPECTED_FILE = ("a segment-anything checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, "
                  "sam_vit_h_4b8939.pth, or the same state dict as .safetensors)")

# SAM's fixed design (segment_anything.build_sam._build_sam): 1024 px input, patch 16
_IMAGE_EMBEDDING = 1024 // 16
_WINDOW_SIZE = 14
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArch:
    """Image-encoder dims; ``name`` is vit_b / vit_l / vit_h for the published ones, else
    ``custom``."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]

    def build_kwargs(self) -> dict:
        """Keyword arguments of ``segment_anything.build_sam._build_sam``."""
        return {
            "encoder_embed_dim": self.encoder_embed_dim,
            "encoder_depth": self.encoder_depth,
            "encoder_num_heads": self.encoder_num_heads,
            "encoder_global_attn_indexes": list(self.encoder_global_attn_indexes),
        }


# segment_anything.build_sam.build_sam_vit_{b,l,h}
STANDARD_ARCHS = {
    "vit_b": SamArch("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
}

_BLOCK_KEY = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


# ---- reading checkpoints ---------------------------------------------------------------------
def read_state_dict(path, input_name: str = "sam_model") -> dict:
    """The checkpoint's state dict (CPU tensors), loaded without unpickling code."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{path}' is not a file.", f"Expected {_EXPECTED_FILE}.")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            data = load_file(path, device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every loader failure means "not a usable file"
        raise InputError(
            input_name,
            f"'{name}' could not be read as a weights file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}).",
            f"Expected {_EXPECTED_FILE}; a .pth must be a plain state dict (weights_only "
            "loading), a .safetensors a flat tensor file. Re-download it if it is truncated.",
        ) from None
    # some re-packaged checkpoints nest the state dict
    for wrapper in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict) and not any(
                isinstance(v, torch.Tensor) for v in data.values()):
            data = data[wrapper]
    if not isinstance(data, dict) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise InputError(input_name, f"'{name}' does not hold a state dict (a mapping of names "
                         "to tensors).", f"Expected {_EXPECTED_FILE}.")
    return data


def sam_arch_from_state_dict(state_dict: dict, input_name: str = "sam_model",
                             source: str = "the checkpoint") -> SamArch:
    """Read the image-encoder dims from a segment-anything state dict.

    embed_dim = ``patch_embed.proj.weight.shape[0]``; depth = number of ``blocks.N``;
    head_dim = ``blocks.N.attn.rel_pos_h.shape[1]`` (heads = embed_dim // head_dim); a block is
    global when its ``rel_pos_h`` has 2*64-1 rows (windowed blocks: 2*14-1).
    """
    def refuse(problem: str, fix: str = f"Expected {_EXPECTED_FILE}.") -> InputError:
        return InputError(input_name, f"{source} {problem}", fix)

    keys = state_dict.keys()
    if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.", "memory_attention."))
           for k in keys):
        raise refuse("is a SAM 2 checkpoint, which this loader does not read.",
                     "Use a SAM (v1) checkpoint such as sam_vit_b_01ec64.pth.")
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None or patch.dim() != 4 or not any(k.startswith("mask_decoder.") for k in keys):
        raise refuse("is not a segment-anything (ViT) checkpoint: it lacks "
                     "image_encoder.patch_embed.proj.weight or mask_decoder.* weights.")
    embed_dim = int(patch.shape[0])
    blocks = sorted({int(m.group(1)) for m in map(_BLOCK_KEY.match, keys) if m})
    if not blocks or blocks != list(range(len(blocks))):
        raise refuse(f"has image-encoder blocks {blocks[:8]}... that are not numbered 0..N-1.")
    head_dim, global_blocks = None, []
    for index in blocks:
        rel = state_dict.get(f"image_encoder.blocks.{index}.attn.rel_pos_h")
        if rel is None or rel.dim() != 2:
            raise refuse(f"has no relative-position table for encoder block {index} "
                         "(image_encoder.blocks.N.attn.rel_pos_h).")
        if head_dim is None:
            head_dim = int(rel.shape[1])
        elif int(rel.shape[1]) != head_dim:
            raise refuse(f"has blocks with different head sizes ({head_dim} and "
                         f"{int(rel.shape[1])}).")
        rows = int(rel.shape[0])
        if rows == 2 * _IMAGE_EMBEDDING - 1:
            global_blocks.append(index)
        elif rows != 2 * _WINDOW_SIZE - 1:
            raise refuse(f"block {index} has a {rows}-row relative-position table; SAM uses "
                         f"{2 * _IMAGE_EMBEDDING - 1} (global) or {2 * _WINDOW_SIZE - 1} (window).")
    if not head_dim or embed_dim % head_dim:
        raise refuse(f"has embed dim {embed_dim} that is not a multiple of its head size "
                     f"{head_dim}.")
    arch = SamArch("custom", embed_dim, len(blocks), embed_dim // head_dim, tuple(global_blocks))
    for name, standard in STANDARD_ARCHS.items():
        if dataclasses.replace(arch, name=name) == standard:
            return standard
    return arch


def build_sam(state_dict: dict, arch: SamArch | None = None, input_name: str = "sam_model",
              source: str = "the checkpoint"):
    """A ``segment_anything.modeling.Sam`` (eval, float32, CPU, no grad) holding ``state_dict``.

    Built on the meta device and filled with ``load_state_dict(strict=True, assign=True)``, so
    no time goes into random initialisation and no second copy of the weights is made.
    """
    from segment_anything.build_sam import _build_sam

    arch = arch or sam_arch_from_state_dict(state_dict, input_name, source)
    with torch.device("meta"):
        sam = _build_sam(**arch.build_kwargs(), checkpoint=None)
    try:
        sam.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        first = str(error).split("\n\t")[1:3]
        raise InputError(input_name, f"{source} does not match segment-anything's {arch.name} "
                         f"model ({'; '.join(first) or error}).",
                         f"Expected {_EXPECTED_FILE}; HQ-SAM, MobileSAM and SAM 2 files are "
                         "different models.") from None
    # non-persistent buffers are not in the state dict; give them their fixed values
    for name, values in (("pixel_mean", _PIXEL_MEAN), ("pixel_std", _PIXEL_STD)):
        sam.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(-1, 1, 1), False)
    left = [n for n, t in list(sam.named_parameters()) + list(sam.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"SAM tensors left uninitialised after loading: {left}")
    sam = sam.float().eval()
    sam.requires_grad_(False)
    return sam


def load_sam(path, device="cpu", input_name: str = "sam_model") -> SamDecoder:
    """Read, recognise and build a SAM checkpoint (``.pth``/``.pt``/``.safetensors``)."""
    state_dict = read_state_dict(path, input_name)
    source = f"'{os.path.basename(os.fspath(path))}'"
    arch = sam_arch_from_state_dict(state_dict, input_name, source)
    sam = build_sam(state_dict, arch, input_name, source)
    return SamDecoder(sam.to(device), arch=arch, path=os.fspath(path))


# ---- decoding --------------------------------------------------------------------------------
def image_to_uint8(image, input_name: str = "image") -> np.ndarray:
    """[H, W, 3] uint8 RGB (a new array) from uint8/float arrays or tensors (float = 0..1), an
    [H, W, 4] image (alpha dropped), a [1, H, W, C] batch of one, or a PIL image."""
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):
        return np.array(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu")
        array = (array.float() if array.is_floating_point() else array).numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InputError(input_name, f"must be an [H, W, 3] image, got {type(image).__name__}.",
                         "Pass one image of the batch.")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise InputError(input_name, f"must be [H, W, 3], got shape {tuple(array.shape)}.",
                         "Pass one image of the batch.")
    if np.issubdtype(array.dtype, np.floating):
        array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    else:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def _clamped_box(box, width: int, height: int) -> np.ndarray | None:
    """[x1, y1, x2, y2] float array clamped to the image, None if it has no area there."""
    if isinstance(box, torch.Tensor):
        box = box.detach().flatten().tolist()
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:
        raise InputError("boxes", f"each box must be [x1, y1, x2, y2], got {box!r}.",
                         "Give boxes as four pixel coordinates.")
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise InputError("boxes", f"box {list(box)!r} must hold four numbers.",
                         "Give boxes as four pixel coordinates.") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError("boxes", f"box {values!r} must hold four finite numbers.",
                         "Give boxes as four pixel coordinates.")
    x1, y1, x2, y2 = values
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if not (x2 > x1 and y2 > y1):
        return None
    return np.array([x1, y1, x2, y2], dtype=np.float32)


def _points(points) -> tuple[np.ndarray | None, np.ndarray | None]:
    """([K, 2] coords, [K] labels) from [[x, y] or [x, y, label], ...]; label 1 = foreground."""
    if points is None or len(points) == 0:
        return None, None
    coords, labels = [], []
    for point in points:
        values = point.tolist() if isinstance(point, (torch.Tensor, np.ndarray)) else point
        if not isinstance(values, (list, tuple)) or len(values) not in (2, 3) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in values):
            raise InputError("points", f"each point must be [x, y] or [x, y, label], got "
                             f"{point!r}.", "Give points in pixels; label 1 = object, 0 = not.")
        coords.append(values[:2])
        labels.append(int(values[2]) if len(values) == 3 else 1)
    return np.asarray(coords, dtype=np.float32), np.asarray(labels, dtype=np.int64)


class SamDecoder:
    """A loaded SAM and how to prompt it. ``model`` is the ``Sam`` nn.Module (ModelPatcher it);
    ``arch`` the recognised architecture."""

    def __init__(self, model, arch: SamArch | None = None, path: str = ""):
        self.model = model
        self.arch = arch
        self.path = path

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device) -> SamDecoder:
        """Move the weights; returns self. Same effect as a ModelPatcher load."""
        self.model.to(device)
        return self

    def masks_from_boxes(self, image, boxes: Sequence | None, points: Sequence | None = None
                         ) -> torch.Tensor:
        """One mask per box: float32 0/1 ``[N, H, W]`` at the image's resolution, on the CPU.

        ``image``: [H, W, 3] uint8 (or float 0..1, or a PIL image); encoded once. ``boxes``:
        ``[x1, y1, x2, y2]`` in pixels of that image (clamped to it). ``points``: optional list
        parallel to ``boxes``; each entry None or ``[[x, y], ...]`` / ``[[x, y, label], ...]``
        extra prompts for that box. A box that is None or has no area inside the image (and has
        no points) gives an all-zero mask; ``boxes`` None or empty gives one all-zero mask
        ``[1, H, W]``, so callers always get a MASK. SAM's single best mask
        (``multimask_output=False``) per prompt.
        """
        pixels = image_to_uint8(image)
        height, width = pixels.shape[:2]
        boxes = [] if boxes is None else list(boxes)
        if points is not None and len(points) != len(boxes):
            raise InputError("points", f"has {len(points)} entries for {len(boxes)} boxes.",
                             "Give one (possibly empty) point list per box.")
        if not boxes:
            return torch.zeros(1, height, width, dtype=torch.float32)
        prompts = []
        for index, box in enumerate(boxes):
            clamped = None if box is None else _clamped_box(box, width, height)
            coords, labels = _points(points[index] if points is not None else None)
            prompts.append((clamped, coords, labels))
        masks = torch.zeros(len(boxes), height, width, dtype=torch.float32)
        if all(box is None and coords is None for box, coords, _ in prompts):
            return masks

        from segment_anything import SamPredictor

        predictor = SamPredictor(self.model)  # per call: its image features are freed on return
        with torch.inference_mode():
            predictor.set_image(pixels, image_format="RGB")
            for index, (box, coords, labels) in enumerate(prompts):
                if box is None and coords is None:
                    continue
                result, _, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                                 multimask_output=False)
                masks[index] = torch.from_numpy(result[0].astype(np.float32))
        return masks


def _scaled_boxes(boxes, sx: float, sy: float) -> list:
    return [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in boxes]


def masks_for_plan(image, plan, sam=None, dilate_px: int = 0, feather_px: int = 0) -> torch.Tensor:
    """One mask per plan item, in plan order: float32 ``[N, H, W]`` at the image's size, CPU.

    EditPlan's rules (box_masks): a non-executable ([NEG]) item is exactly zero; an executable
    item without boxes is exactly the whole image; boxes give the union of their masks -- SAM's
    masks when ``sam`` (a SamDecoder or a segment-anything ``Sam``) is given, else the boxes
    themselves (box_masks' pixel rule). A box whose SAM mask comes back empty uses the box
    instead (an empty mask would read as [NEG]). Boxes are in pixels of ``plan.image_size`` and
    rescaled to the image when it differs. Only boxed items are grown by ``dilate_px`` and then
    softened by ``feather_px`` (box_masks.dilate_mask / feather_mask). A plan with no items
    gives ``[0, H, W]``. Nothing passed in is modified.
    """
    pixels = image_to_uint8(image)
    height, width = pixels.shape[:2]
    if sam is not None and not isinstance(sam, SamDecoder):
        if not hasattr(sam, "image_encoder") or not hasattr(sam, "mask_decoder"):
            raise InputError("sam_model", f"expected a loaded SAM model, got "
                             f"{type(sam).__name__}.", "Connect the ContextEdit SAM loader.")
        sam = SamDecoder(sam)
    for name, value in (("dilate_px", dilate_px), ("feather_px", feather_px)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(name, f"must be an integer, got {value!r}.", "Use whole pixels.")

    plan_size = getattr(plan, "image_size", None)
    sx, sy = (1.0, 1.0) if plan_size is None else (width / plan_size[0], height / plan_size[1])
    item_boxes = [_scaled_boxes(item.boxes, sx, sy) if item.executable else None
                  for item in plan.items]

    # every box of every executable item in one SAM call: the image is encoded once
    flat = [box for boxes in item_boxes if boxes for box in boxes]
    sam_masks = sam.masks_from_boxes(pixels, flat) if (sam is not None and flat) else None

    masks, cursor = [], 0
    for boxes in item_boxes:
        if boxes is None:
            masks.append(torch.zeros(height, width, dtype=torch.float32))
            continue
        if not boxes:
            masks.append(torch.ones(height, width, dtype=torch.float32))
            continue
        mask = torch.zeros(height, width, dtype=torch.float32)
        for box in boxes:
            box_mask = sam_masks[cursor] if sam_masks is not None else None
            cursor += 1
            if box_mask is None or not bool(box_mask.any()):
                box_mask = boxes_to_mask([box], height, width)
            mask = torch.maximum(mask, box_mask)
        if dilate_px:
            mask = dilate_mask(mask, dilate_px)
        if feather_px:
            mask = feather_mask(mask, feather_px)
        masks.append(mask)
    if not masks:
        return torch.zeros(0, height, width, dtype=torch.float32)
    return torch.stack(masks)
