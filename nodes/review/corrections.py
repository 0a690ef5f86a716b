"""The artist's corrections to an edit plan, and how they are applied (ContextEdit Review Plan).

The canvas editor (web/js/review_plan.js) writes corrections into the node's ``corrections``
widget; a script can send the same JSON in an API prompt. Empty text leaves the plan exactly as
it was. The format (version 1)::

    {
      "schema": "contextedit.plan_corrections",   # optional, must match if present
      "version": 1,                               # optional, at most 1
      "images": [                                 # one entry per corrected image
        {"image": "96x64:3f2a9c0e1b7d4a55",       # optional: the image's fingerprint
         "items": [
           {"number": 2,                          # 1-based, as on the canvas and in the report
            "instruction": "remove the car",      # that instruction's text, verbatim
            "executable": true,                   # optional: true = [MASK], false = [NEG]
            "resolved": "remove the red car",     # optional: the explicit instruction
            "boxes": [[x1, y1, x2, y2]]}          # optional: replaces its boxes; [] = none
         ]}
      ]
    }

A single image entry (``{"image": ..., "items": [...]}``) may stand for the whole object.
Boxes are pixels of the plan's image (``plan.image_size``; the image itself when the plan has no
size), ``[x1, y1, x2, y2]`` with the top-left corner first, inside the image.

Keying: a correction can never land on the wrong instruction or image.

* An image entry applies to the batch images whose fingerprint (:func:`image_fingerprint`:
  ``<width>x<height>:<16 hex digits>``) equals its ``image``; without ``image`` it applies to
  every image (for scripts that do not know the fingerprint: only the instruction keys it then).
  An image uses the entry with its own fingerprint when there is one, else the one without.
* An item applies only when the plan's instruction ``number`` exists and its text equals
  ``instruction`` exactly.
* Anything that no longer fits (another image, an instruction list that changed) is dropped, and
  a note says what was dropped and why. Malformed corrections (bad JSON, wrong types, boxes
  outside the image) raise :class:`InputError` naming the ``corrections`` input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from ..errors import InputError
from ..executability.plan import EditPlan

INPUT = "corrections"
SCHEMA_NAME = "contextedit.plan_corrections"
SCHEMA_VERSION = 1
_TOP_KEYS = ("schema", "version", "images")
_IMAGE_KEYS = ("image", "items")
_ITEM_KEYS = ("number", "instruction", "executable", "resolved", "boxes")
_FINGERPRINT = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*:[0-9a-f]{16}$")
_FORMAT_HINT = ('Write e.g. {"images": [{"image": "<fingerprint>", "items": [{"number": 1, '
                '"instruction": "<its text>", "executable": true, "boxes": [[10, 20, 60, 80]]}]}]} '
                "or leave it empty (see the node's description).")

Box = Tuple[float, float, float, float]


def _error(problem: str, path: str = "", fix: str = _FORMAT_HINT) -> InputError:
    where = f"{path}: " if path else ""
    return InputError(INPUT, where + problem, fix)


@dataclass(frozen=True)
class ItemCorrection:
    """The artist's verdict on one instruction; ``None`` fields keep the plan's value."""

    number: int
    instruction: str
    executable: Optional[bool] = None
    resolved: Optional[str] = None
    boxes: Optional[Tuple[Box, ...]] = None
    path: str = ""


@dataclass(frozen=True)
class ImageCorrections:
    """The corrections made on one image (``image``: its fingerprint, or None for any image)."""

    image: Optional[str]
    items: Tuple[ItemCorrection, ...]
    path: str = ""


# ---- the image's fingerprint ----------------------------------------------------------------
def image_fingerprint(image: torch.Tensor) -> str:
    """``<width>x<height>:<hash>`` of one IMAGE [H, W, C] (0..1 floats): the size plus a 64-bit
    BLAKE2b hash of its pixels rounded to 8 bits, so the same picture (loaded again, or sent by a
    script) gives the same key and a different picture almost surely does not."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise InputError("image", "must be one image [H, W, C].", "Connect an IMAGE output.")
    height, width = int(image.shape[0]), int(image.shape[1])
    pixels = (image.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    digest = hashlib.blake2b(pixels.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
    return f"{width}x{height}:{digest}"


# ---- parsing --------------------------------------------------------------------------------
def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(data: dict, allowed: Sequence[str], path: str):
    unknown = sorted(set(map(str, data)) - set(allowed))
    if unknown:
        raise _error(f"unknown key(s) {unknown}; allowed: {', '.join(allowed)}.", path)


def _number(value, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _error(f"must be a finite number, got {value!r}.", path)
    return float(value)


def _parse_box(raw, path: str) -> Box:
    if not isinstance(raw, list) or len(raw) != 4:
        raise _error(f"must be a box [x1, y1, x2, y2], got {raw!r}.", path)
    x1, y1, x2, y2 = (_number(v, f"{path}[{i}]") for i, v in enumerate(raw))
    if x1 < 0 or y1 < 0:
        raise _error(f"{raw!r} has a negative coordinate.", path, "Boxes are pixels inside the image.")
    if not (x1 < x2 and y1 < y2):
        raise _error(f"{raw!r} must satisfy x1 < x2 and y1 < y2.", path,
                     "Write the top-left corner first: [x1, y1, x2, y2].")
    return (x1, y1, x2, y2)


def _parse_item(raw, path: str) -> ItemCorrection:
    if not isinstance(raw, dict):
        raise _error(f"must be an object, got {type(raw).__name__}.", path)
    _check_keys(raw, _ITEM_KEYS, path)
    for key in ("number", "instruction"):
        if key not in raw:
            raise _error(f"needs '{key}' (the instruction a correction is for is keyed by its number "
                         "and its text).", path)
    number = raw["number"]
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise _error(f"must be an instruction number 1, 2, ..., got {number!r}.", _join(path, "number"))
    if not isinstance(raw["instruction"], str):
        raise _error("must be the instruction's text.", _join(path, "instruction"))
    executable = raw.get("executable")
    if executable is not None and not isinstance(executable, bool):
        raise _error(f"must be true ([MASK]) or false ([NEG]), got {executable!r}.", _join(path, "executable"))
    resolved = raw.get("resolved")
    if resolved is not None and not isinstance(resolved, str):
        raise _error(f"must be text, got {type(resolved).__name__}.", _join(path, "resolved"))
    boxes = raw.get("boxes")
    if boxes is not None:
        if not isinstance(boxes, list):
            raise _error(f"must be a list of boxes [[x1, y1, x2, y2], ...], got {boxes!r}.", _join(path, "boxes"))
        boxes = tuple(_parse_box(b, _join(path, f"boxes[{i}]")) for i, b in enumerate(boxes))
    return ItemCorrection(number=number, instruction=raw["instruction"], executable=executable,
                          resolved=resolved, boxes=boxes, path=path)


def _parse_image(raw, path: str) -> ImageCorrections:
    if not isinstance(raw, dict):
        raise _error(f"must be an object, got {type(raw).__name__}.", path)
    _check_keys(raw, _IMAGE_KEYS, path)
    image = raw.get("image")
    if image is not None and (not isinstance(image, str) or not _FINGERPRINT.match(image)):
        raise _error(f"must be an image fingerprint such as '96x64:3f2a9c0e1b7d4a55' (the node shows it), "
                     f"got {image!r}.", _join(path, "image"), "Copy it from the node's report, or leave 'image' out.")
    items = raw.get("items", [])
    if not isinstance(items, list):
        raise _error("must be a list of instruction corrections.", _join(path, "items"))
    parsed = tuple(_parse_item(item, _join(path, f"items[{i}]")) for i, item in enumerate(items))
    seen = set()
    for item in parsed:
        if item.number in seen:
            raise _error(f"corrects instruction {item.number} twice.", item.path,
                         "Keep one correction per instruction.")
        seen.add(item.number)
    return ImageCorrections(image=image, items=parsed, path=path)


def parse_corrections(text) -> Tuple[ImageCorrections, ...]:
    """The corrections in ``text`` (empty or whitespace: none). Raises InputError('corrections')."""
    if text is None:
        return ()
    if not isinstance(text, str):
        raise _error(f"must be JSON text, got {type(text).__name__}.")
    if not text.strip():
        return ()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise _error(f"is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise _error(f"must be a JSON object, got {type(data).__name__}.")
    if "items" in data or "image" in data:  # one image's entry standing for the whole object
        return (_parse_image(data, ""),)
    _check_keys(data, _TOP_KEYS, "")
    if "schema" in data and data["schema"] != SCHEMA_NAME:
        raise _error(f"'schema' must be {SCHEMA_NAME!r}, got {data['schema']!r}.")
    version = data.get("version", SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise _error(f"'version' is {version!r}; this pack reads version {SCHEMA_VERSION}.", "",
                     "Update ContextEdit, or write version 1.")
    images = data.get("images", [])
    if not isinstance(images, list):
        raise _error("must be a list of image entries.", "images")
    parsed = tuple(_parse_image(entry, f"images[{i}]") for i, entry in enumerate(images))
    keys = [entry.image for entry in parsed]
    for key in set(keys):
        if keys.count(key) > 1:
            what = f"image {key}" if key else "every image (no 'image' fingerprint)"
            raise _error(f"has {keys.count(key)} entries for {what}.", "images",
                         "Merge them into one entry per image.")
    return parsed


def validate_corrections(text):
    """True, or the error message (what POST /prompt answers before anything runs)."""
    try:
        parse_corrections(text)
    except InputError as error:
        return str(error)
    return True


# ---- applying -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Review:
    """The corrected plans (one per image), each image's fingerprint, and what happened."""

    plans: list
    fingerprints: list
    applied: Tuple[str, ...]
    dropped: Tuple[str, ...]

    def summary(self) -> str:
        """Lines for the node's report: the keys a script needs, and what was applied or dropped."""
        lines = [f"Image {b + 1} fingerprint (the 'image' key of its corrections): {fp}"
                 for b, fp in enumerate(self.fingerprints)]
        lines.append(f"Corrections: {len(self.applied)} applied, {len(self.dropped)} dropped")
        lines.extend(f" - dropped: {note}" for note in self.dropped)
        return "\n".join(lines)


def _token(executable: bool) -> str:
    return "[MASK]" if executable else "[NEG]"


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _short(fingerprint: Optional[str]) -> str:
    return fingerprint if fingerprint else "any image"


def _check_inside(box: Box, size: Tuple[int, int], path: str):
    width, height = size
    if box[2] > width or box[3] > height:
        raise _error(f"box {list(box)} lies outside the {width}x{height} image.", path,
                     "Boxes are pixels of the image the plan was made for: keep x2 <= width and y2 <= height.")


def _apply_item(item, correction: ItemCorrection, size):
    """(new item, description of the change)."""
    changes = {}
    said = []
    if correction.executable is not None and correction.executable != item.executable:
        changes["executable"] = correction.executable
        changes["reason"] = (f"corrected by the artist to {_token(correction.executable)} (the model said "
                             f"{_token(item.executable)}: {item.reason or 'no reason given'})")
        said.append(f"{_token(item.executable)} -> {_token(correction.executable)}")
    if correction.resolved is not None:
        resolved = correction.resolved if correction.resolved.strip() else item.instruction
        if resolved != item.resolved:
            changes["resolved"] = resolved
            said.append(f"resolved as {_quote(resolved)}")
    if correction.boxes is not None:
        for j, box in enumerate(correction.boxes):
            _check_inside(box, size, _join(correction.path, f"boxes[{j}]"))
        if tuple(correction.boxes) != tuple(item.boxes):
            changes["boxes"] = correction.boxes
            said.append(f"boxes {_format_boxes(correction.boxes)}")
    if not changes:
        return item, "same as the plan"
    return dataclasses.replace(item, **changes), ", ".join(said)


def _format_boxes(boxes) -> str:
    if not boxes:
        return "none"
    return ", ".join("[" + ", ".join(f"{v:g}" for v in box) + "]" for box in boxes)


def _correct_plan(plan: EditPlan, entry: ImageCorrections, size, applied: list, dropped: list):
    items = list(plan.items)
    notes = []
    where = f" on image {entry.image}" if entry.image else ""
    for correction in entry.items:
        label = f"correction of instruction {correction.number} ({_quote(correction.instruction)}){where}"
        if correction.number > len(items):
            note = f"{label} dropped: the plan has {len(items)} instruction(s) now"
            dropped.append(note)
            notes.append(note)
            continue
        current = items[correction.number - 1]
        if current.instruction != correction.instruction:
            note = f"{label} dropped: instruction {correction.number} is now {_quote(current.instruction)}"
            dropped.append(note)
            notes.append(note)
            continue
        items[correction.number - 1], change = _apply_item(current, correction, size)
        note = f"instruction {correction.number} corrected by the artist: {change}"
        applied.append(note)
        notes.append(note)
    return dataclasses.replace(plan, items=tuple(items), notes=plan.notes + tuple(notes))


def _unique(notes: list) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(notes))


def review_plans(plans: Sequence[EditPlan], images: torch.Tensor, corrections_text) -> Review:
    """Apply ``corrections_text`` to ``plans`` (one per image of ``images`` [B, H, W, C], or one
    for all). Empty corrections give the very same plan objects back. Never mutates its inputs."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError("image", "must be an IMAGE batch [B, H, W, C].", "Connect an IMAGE output.")
    batch = int(images.shape[0])
    plans = list(plans)
    if len(plans) == 1 and batch > 1:
        plans = plans * batch
    if len(plans) != batch:
        raise InputError("plan", f"holds {len(plans)} plans for a batch of {batch} images.",
                         "Connect the plan made for this image batch (Check Instructions gives one per image).")
    entries = parse_corrections(corrections_text)
    fingerprints = [image_fingerprint(images[b]) for b in range(batch)]
    if not entries:
        return Review(plans=plans, fingerprints=fingerprints, applied=(), dropped=())
    by_key = {entry.image: entry for entry in entries}
    height, width = int(images.shape[1]), int(images.shape[2])
    applied, dropped, out = [], [], []
    unmatched = [entry for entry in entries if entry.image is not None and entry.image not in fingerprints]
    stale_notes = [f"{len(entry.items)} correction(s) made on image {entry.image} dropped: no input image has "
                   "that fingerprint (the image changed)" for entry in unmatched]
    dropped.extend(stale_notes)
    for b, plan in enumerate(plans):
        entry = by_key.get(fingerprints[b], by_key.get(None))
        if entry is not None:
            size = plan.image_size or (width, height)
            plan = _correct_plan(plan, entry, size, applied, dropped)
        if stale_notes:
            plan = dataclasses.replace(plan, notes=plan.notes + tuple(stale_notes))
        out.append(plan)
    return Review(plans=out, fingerprints=fingerprints, applied=_unique(applied), dropped=_unique(dropped))
