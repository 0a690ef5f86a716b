"""EditPlan: what the executability check decided for one image.

CAMILA (papers/camila.txt) emits one [MASK] or [NEG] token per instruction; we keep the same idea
as plain data. Per instruction: the verbatim instruction, whether it can be carried out on this
image, the model's reason, the phrase it edits, its boxes in source-image pixels and an edit type;
per image: the source caption t_o and the target caption t_e after every executable edit.

Conventions
-----------
* Boxes are ``(x1, y1, x2, y2)`` floats in pixels of the *source* image, continuous edge
  coordinates (a box ``(0, 0, W, H)`` covers the whole image), ``x1 < x2`` and ``y1 < y2``.
* An executable item with no boxes edits the whole image (style edits, or a model that gave no
  usable box). A non-executable item ([NEG]) edits nothing, whatever boxes it carries.
* For ``add`` items the box is where the new object should be placed.
* ``image_size`` is ``(width, height)`` of the source image, or ``None`` when unknown.
* ``instruction`` is the user's words, verbatim; ``resolved`` is the explicit instruction the
  model resolved it into (InsightEdit's comprehension: "remove the thing that keeps food cold" ->
  "remove the refrigerator"), equal to ``instruction`` when nothing needed resolving (and for
  typed plans). The resolved text is what editing uses: the diffusion prompt, the token
  broadcaster and the masks; the report shows both when they differ.
* A batch of images travels between nodes as a plain ``list[EditPlan]``, one plan per image in
  batch order; :func:`plans_to_json` / :func:`plans_from_json` serialise such a list.

JSON schema (version 2; version 1 plans, which have no "resolved", still load)::

    {
      "schema": "contextedit.edit_plan",          # optional on input, must match if present
      "version": 1,                               # required int, 1 <= version <= SCHEMA_VERSION
      "image_size": [W, H] | null,
      "source_caption": str,                      # t_o
      "target_caption": str,                      # t_e
      "items": [                                  # required, one per instruction, in order
        {"instruction": str,                      # required: the user's words
         "resolved": str,                         # v2, optional: the explicit instruction
         "executable": bool,                      # required
         "reason": str, "target": str,
         "boxes": [[x1, y1, x2, y2], ...],
         "edit_type": "add"|"remove"|"replace"|"attribute"|"style"|"other"}
      ],
      "raw_reply": str | null,                    # the model's reply, kept for the report
      "notes": [str, ...]                         # what the parser had to fix or drop
    }

Unknown keys are rejected (a typo such as "execuable" must not silently become a default).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

from ..errors import InputError, PlanParseError

SCHEMA_NAME = "contextedit.edit_plan"
SCHEMA_VERSION = 2
EDIT_TYPES = ("add", "remove", "replace", "attribute", "style", "other")

Box = Tuple[float, float, float, float]

_ITEM_KEYS = ("instruction", "resolved", "executable", "reason", "target", "boxes", "edit_type")
_PLAN_KEYS = (
    "schema", "version", "image_size", "source_caption", "target_caption", "items", "raw_reply",
    "notes",
)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_box(box, path: str) -> Box:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise PlanParseError("must be a list of four numbers [x1, y1, x2, y2].", path)
    if not all(_is_number(v) for v in box):
        raise PlanParseError(f"must hold four numbers, got {list(box)!r}.", path)
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise PlanParseError(f"holds a non-finite number: {list(box)!r}.", path)
    if x1 < 0 or y1 < 0:
        raise PlanParseError(f"has a negative coordinate: {list(box)!r}.", path)
    if not (x1 < x2 and y1 < y2):
        raise PlanParseError(
            f"must satisfy x1 < x2 and y1 < y2, got {list(box)!r}.", path,
            "Boxes are [x1, y1, x2, y2] with the top-left corner first.",
        )
    return (x1, y1, x2, y2)


def _check_str(value, path: str) -> str:
    if not isinstance(value, str):
        raise PlanParseError(f"must be a string, got {type(value).__name__}.", path)
    return value


@dataclass(frozen=True)
class EditItem:
    """One instruction's verdict. Immutable; construct a new one to change it."""

    instruction: str
    executable: bool
    reason: str = ""
    target: str = ""
    boxes: Tuple[Box, ...] = ()
    edit_type: str = "other"
    resolved: str = ""  # "" -> the instruction itself (set in __post_init__)

    def __post_init__(self):
        _check_str(self.instruction, "instruction")
        _check_str(self.resolved, "resolved")
        if not self.resolved.strip():
            object.__setattr__(self, "resolved", self.instruction)
        if not isinstance(self.executable, bool):
            raise PlanParseError(
                f"must be true or false, got {self.executable!r}.", "executable"
            )
        _check_str(self.reason, "reason")
        _check_str(self.target, "target")
        if self.edit_type not in EDIT_TYPES:
            raise PlanParseError(
                f"must be one of {', '.join(EDIT_TYPES)}, got {self.edit_type!r}.", "edit_type"
            )
        if not isinstance(self.boxes, (list, tuple)):
            raise PlanParseError("must be a list of boxes.", "boxes")
        boxes = tuple(_check_box(b, f"boxes[{i}]") for i, b in enumerate(self.boxes))
        object.__setattr__(self, "boxes", boxes)

    @property
    def token(self) -> str:
        """CAMILA's token for this item: ``[MASK]`` (edit it) or ``[NEG]`` (leave it)."""
        return "[MASK]" if self.executable else "[NEG]"

    @property
    def was_resolved(self) -> bool:
        """True when the model rewrote the user's words into a different explicit instruction."""
        return _canon(self.resolved) != _canon(self.instruction)

    def to_dict(self) -> dict:
        return {
            "instruction": self.instruction,
            "resolved": self.resolved,
            "executable": self.executable,
            "reason": self.reason,
            "target": self.target,
            "boxes": [list(b) for b in self.boxes],
            "edit_type": self.edit_type,
        }

    @classmethod
    def from_dict(cls, data) -> "EditItem":
        if not isinstance(data, dict):
            raise PlanParseError(f"must be an object, got {type(data).__name__}.", None)
        unknown = sorted(set(map(str, data)) - set(_ITEM_KEYS))
        if unknown:
            raise PlanParseError(
                f"unknown key(s) {unknown}; allowed: {', '.join(_ITEM_KEYS)}.", unknown[0]
            )
        for required in ("instruction", "executable"):
            if required not in data:
                raise PlanParseError("is missing.", required)
        boxes = data.get("boxes", [])
        if not isinstance(boxes, list):
            raise PlanParseError("must be a list of boxes.", "boxes")
        return cls(
            instruction=data["instruction"],
            resolved=data.get("resolved", ""),
            executable=data["executable"],
            reason=data.get("reason", ""),
            target=data.get("target", ""),
            boxes=tuple(boxes),
            edit_type=data.get("edit_type", "other"),
        )


def _prefixed(error: PlanParseError, prefix: str) -> PlanParseError:
    path = f"{prefix}.{error.field}" if error.field else prefix
    return PlanParseError(error.problem, path, error.fix)


@dataclass(frozen=True)
class EditPlan:
    """Every instruction's verdict for one image, in instruction order."""

    items: Tuple[EditItem, ...] = ()
    source_caption: str = ""
    target_caption: str = ""
    image_size: Optional[Tuple[int, int]] = None
    raw_reply: Optional[str] = None
    notes: Tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.items, (list, tuple)):
            raise PlanParseError("must be a list of items.", "items")
        for i, item in enumerate(self.items):
            if not isinstance(item, EditItem):
                raise PlanParseError(f"must be an EditItem, got {type(item).__name__}.",
                                     f"items[{i}]")
        object.__setattr__(self, "items", tuple(self.items))
        _check_str(self.source_caption, "source_caption")
        _check_str(self.target_caption, "target_caption")
        if self.raw_reply is not None:
            _check_str(self.raw_reply, "raw_reply")
        if not isinstance(self.notes, (list, tuple)):
            raise PlanParseError("must be a list of strings.", "notes")
        for i, note in enumerate(self.notes):
            _check_str(note, f"notes[{i}]")
        object.__setattr__(self, "notes", tuple(self.notes))
        if self.image_size is not None:
            size = self.image_size
            if (not isinstance(size, (list, tuple)) or len(size) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                               for v in size)):
                raise PlanParseError(
                    f"must be [width, height] with two positive integers or null, got {size!r}.",
                    "image_size",
                )
            object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
            width, height = self.image_size
            for i, item in enumerate(self.items):
                for j, (x1, y1, x2, y2) in enumerate(item.boxes):
                    if x2 > width or y2 > height:
                        raise PlanParseError(
                            f"[{x1}, {y1}, {x2}, {y2}] lies outside the {width}x{height} image.",
                            f"items[{i}].boxes[{j}]",
                        )

    # ---- queries -------------------------------------------------------------------------
    def executable_items(self) -> Tuple[EditItem, ...]:
        return tuple(item for item in self.items if item.executable)

    def executable_instructions(self, separator: str = "\n") -> str:
        """The executable instructions' resolved text, joined (what an editor should run)."""
        return separator.join(item.resolved for item in self.executable_items())

    # ---- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "image_size": list(self.image_size) if self.image_size is not None else None,
            "source_caption": self.source_caption,
            "target_caption": self.target_caption,
            "items": [item.to_dict() for item in self.items],
            "raw_reply": self.raw_reply,
            "notes": list(self.notes),
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data) -> "EditPlan":
        if not isinstance(data, dict):
            raise PlanParseError(
                f"the plan must be a JSON object, got {type(data).__name__}.", "(top level)"
            )
        unknown = sorted(set(map(str, data)) - set(_PLAN_KEYS))
        if unknown:
            raise PlanParseError(
                f"unknown key(s) {unknown}; allowed: {', '.join(_PLAN_KEYS)}.", unknown[0]
            )
        if "schema" in data and data["schema"] != SCHEMA_NAME:
            raise PlanParseError(f"must be {SCHEMA_NAME!r}, got {data['schema']!r}.", "schema")
        if "version" not in data:
            raise PlanParseError("is missing.", "version")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PlanParseError(f"must be a positive integer, got {version!r}.", "version")
        if version > SCHEMA_VERSION:
            raise PlanParseError(
                f"is {version}, newer than this pack understands ({SCHEMA_VERSION}).", "version",
                "Update ContextEdit.",
            )
        if "items" not in data:
            raise PlanParseError("is missing.", "items")
        raw_items = data["items"]
        if not isinstance(raw_items, list):
            raise PlanParseError("must be a list.", "items")
        items = []
        for i, raw in enumerate(raw_items):
            try:
                items.append(EditItem.from_dict(raw))
            except PlanParseError as error:
                raise _prefixed(error, f"items[{i}]") from None
        notes = data.get("notes", [])
        if not isinstance(notes, list):
            raise PlanParseError("must be a list of strings.", "notes")
        image_size = data.get("image_size")
        if image_size is not None and not isinstance(image_size, list):
            raise PlanParseError(f"must be [width, height] or null, got {image_size!r}.",
                                 "image_size")
        return cls(
            items=tuple(items),
            source_caption=data.get("source_caption", ""),
            target_caption=data.get("target_caption", ""),
            image_size=tuple(image_size) if image_size is not None else None,
            raw_reply=data.get("raw_reply"),
            notes=tuple(notes),
        )

    @classmethod
    def from_json(cls, text) -> "EditPlan":
        """Read a plan written by :meth:`to_json`; a bad field raises PlanParseError naming it."""
        return cls.from_dict(_load_json(text))

    # ---- report --------------------------------------------------------------------------
    def report(self, max_reply_chars: int = 2000, max_reply_lines: int = 40) -> str:
        """A readable multi-line summary: one block per instruction, then notes, then the model's
        reply when the plan kept it (capped: see :func:`reply_excerpt`)."""
        n_exec = len(self.executable_items())
        lines = [f"Edit plan: {n_exec} of {len(self.items)} instruction(s) executable"]
        if self.image_size is not None:
            lines[0] += f" (image {self.image_size[0]}x{self.image_size[1]})"
        lines.append(f"Source caption: {self.source_caption or '(none)'}")
        lines.append(f"Target caption: {self.target_caption or '(none)'}")
        for number, item in enumerate(self.items, start=1):
            if item.was_resolved:
                lines.append(f"{number}. {item.token} {item.instruction} -> {item.resolved}")
            else:
                lines.append(f"{number}. {item.token} {item.instruction}")
            lines.append(f"   type: {item.edit_type}; target: {item.target or '(none)'}")
            lines.append(f"   reason: {item.reason or '(no reason given)'}")
            if item.boxes:
                boxes = ", ".join(_format_box(b) for b in item.boxes)
            elif item.executable:
                boxes = "none (the whole image is the region)"
            else:
                boxes = "none"
            lines.append(f"   boxes: {boxes}")
        if self.notes:
            lines.append("Notes:")
            lines.extend(f" - {note}" for note in self.notes)
        if self.raw_reply is not None:
            lines.append("Model reply:")
            lines.extend("   " + line for line in reply_excerpt(self.raw_reply, max_reply_chars, max_reply_lines))
        return "\n".join(lines)


def reply_excerpt(reply: str, max_chars: int = 2000, max_lines: int = 40) -> list:
    """The lines of a model reply to show in a report: runs of three or more blank lines fold into
    one line that counts them (a degenerate reply can be hundreds of newlines), at most
    ``max_lines`` lines and ``max_chars`` characters of the reply are shown, and a last line says
    how much was cut."""
    source = reply.splitlines() or [""]
    shown, used_chars, index = [], 0, 0
    while index < len(source) and len(shown) < max_lines and used_chars < max_chars:
        line = source[index]
        if not line.strip():
            end = index
            while end < len(source) and not source[end].strip():
                end += 1
            if end - index >= 3:
                shown.append(f"({end - index} blank lines)")
                used_chars += sum(len(s) + 1 for s in source[index:end])
                index = end
                continue
        room = max_chars - used_chars
        if len(line) > room:  # the character budget ends inside this line
            shown.append(line[:room])
            used_chars += room
            break
        shown.append(line)
        used_chars += len(line) + 1
        index += 1
    shown_chars = min(used_chars, len(reply))
    if shown_chars < len(reply):
        cut_lines = len(source) - index
        shown.append(f"... cut: {len(reply) - shown_chars} of {len(reply)} characters "
                     f"({cut_lines} of {len(source)} lines) not shown")
    return shown


def _canon(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!")


def _format_number(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _format_box(box: Box) -> str:
    return "[" + ", ".join(_format_number(v) for v in box) + "]"


def _load_json(text):
    if isinstance(text, (bytes, bytearray)):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise PlanParseError(f"is not UTF-8 text ({error}).", "(json)") from None
    if not isinstance(text, str):
        raise PlanParseError(f"expected JSON text, got {type(text).__name__}.", "(json)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise PlanParseError(f"is not valid JSON ({error}).", "(json)") from None


# ---- batches: a list of plans, one per image -----------------------------------------------
def plans_to_json(plans: Sequence[EditPlan], indent: Optional[int] = 2) -> str:
    """Serialise a batch (``list[EditPlan]``) as a JSON array of plan objects."""
    plans = as_plan_list(plans)
    return json.dumps([p.to_dict() for p in plans], indent=indent, ensure_ascii=False,
                      allow_nan=False)


def plans_from_json(text) -> list:
    """Read a JSON array of plans (or one plan object) into ``list[EditPlan]``."""
    data = _load_json(text)
    if isinstance(data, dict):
        return [EditPlan.from_dict(data)]
    if not isinstance(data, list):
        raise PlanParseError("must be a plan object or a list of them.", "(top level)")
    plans = []
    for i, raw in enumerate(data):
        try:
            plans.append(EditPlan.from_dict(raw))
        except PlanParseError as error:
            raise _prefixed(error, f"[{i}]") from None
    return plans


def as_plan_list(value: Any, input_name: str = "edit_plan") -> list:
    """Accept an EditPlan or a list/tuple of them; anything else is an InputError.

    Nodes use this to type-check EDIT_PLAN inputs (the server does not check custom types).
    """
    if isinstance(value, EditPlan):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(p, EditPlan) for p in value):
        return list(value)
    raise InputError(
        input_name,
        f"expected an edit plan (or a list of them), got {type(value).__name__}.",
        "Connect the EDIT_PLAN output of a ContextEdit executability node.",
    )

