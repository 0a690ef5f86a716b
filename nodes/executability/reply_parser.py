"""Read a vision-language model's reply into an :class:`EditPlan`.

The model can say anything, so this module is written against the replies models really give:
JSON in code fences or wrapped in prose, trailing commas, single quotes, Python literals, output
cut off by the token limit, a bare list instead of ``{"edits": [...]}``, one object per line,
grounding in every syntax the supported families are trained to emit (:data:`GROUNDING_SYNTAXES`),
boxes as lists, nested lists,
dicts (``x1``.., ``xmin``.., ``left``.., ``x/y/w/h``) or strings, entries out of order, missing or
renumbered, and a thinking model's ``<think>...</think>`` preamble.

Rules (they are what the tests check):

* Entries are matched to instructions by ``index`` (1-based, as the prompt numbers them; 0-based
  when some entry uses index 0), else by the instruction text they echo (exact after
  normalising case/punctuation, then best word overlap), else by their position in the list.
  When an entry's echoed text equals one instruction exactly, that wins over its index.
* An instruction with no entry is non-executable; its reason says whether the reply was cut off
  before it or simply has no entry for it.
* ``executable`` missing or unreadable: executable exactly when the entry has a usable box.
* Boxes are converted to source pixels (``box_coords.to_source_pixels``); unusable ones are dropped
  with a note. An executable item with no usable box keeps ``boxes == ()``: **the whole image is
  its region** (right for style edits; the report says so). ``add`` items keep their box: it is
  where the new object goes.
* A grounding-only reply (entries with boxes but no index/instruction/executable) assigns each box
  to the instruction whose words contain its label (all to the instruction, if there is one);
  instructions with a box are executable, those without are not.
* Each entry's ``resolved`` (the explicit instruction the model resolved a reasoning instruction
  into) becomes the item's ``resolved``; without one the item's resolved text is the user's.
* Boxes written in a tag syntax (Qwen2-VL's ``<|box_start|>``, Qwen-VL's ``<box>``) are 0-1000
  relative whatever the family's JSON convention, as those models were trained to write them.
* The plan keeps the raw reply and notes on everything the parser had to drop or guess.

:func:`parse_reply` raises only the pack's own errors (PlanParseError for an unreadable reply,
InputError for bad arguments); :func:`plan_from_reply` never raises for any reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from ..errors import InputError, PlanParseError
from .box_coords import (ABSOLUTE, RELATIVE_1000, check_convention, check_size, model_input_size_for,
                         to_source_pixels)
from .lenient_json import PartialDict, PartialList, find_values
from .plan import EDIT_TYPES, EditItem, EditPlan

UNREADABLE_REASON = "could not read the model's reply"
OMITTED_REASON = "the model's reply has no entry for this instruction"
CUT_OFF_REASON = ("the model's reply was cut off before its entry for this instruction was "
                  "complete")
GARBLED_REASON = "the model's reply has no readable entry for this instruction"
NOT_LOCATED_REASON = "the model located nothing for this instruction"

_ITEMS_KEYS = ("edits", "instructions", "items", "results", "plan", "edit_plan", "answers",
               "answer", "output", "response", "entries", "steps", "verdicts")
_SOURCE_KEYS = ("source_caption", "t_o", "caption_source", "original_caption", "input_caption",
                "source_description", "caption")
_TARGET_KEYS = ("target_caption", "t_e", "caption_target", "edited_caption", "output_caption",
                "target_description")
_INDEX_KEYS = ("index", "idx", "instruction_index", "instruction_number", "number", "num", "id",
               "no", "i")
_TEXT_KEYS = ("instruction", "instruction_text", "edit_instruction", "text", "original_instruction",
              "user_instruction")
_RESOLVED_KEYS = ("resolved", "resolved_instruction", "explicit_instruction", "explicit",
                  "rewritten_instruction", "rewritten", "clarified_instruction",
                  "interpreted_instruction", "resolved_text")
_EXEC_KEYS = ("executable", "is_executable", "executability", "feasible", "is_feasible",
              "can_execute", "can_be_executed", "token", "status", "decision", "verdict",
              "valid")
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "why", "comment")
_TARGET_PHRASE_KEYS = ("target", "target_phrase", "phrase", "object", "label", "referring",
                       "entity")
_BOX_KEYS = ("box", "boxes", "bbox_2d", "bbox", "bboxes", "bounding_box", "bounding_boxes",
             "region", "regions", "coordinates")
_TYPE_KEYS = ("edit_type", "type", "operation", "action", "category", "kind", "edit")

_TRUE_WORDS = {"true", "yes", "y", "1", "executable", "mask", "ok", "feasible", "possible",
               "valid", "can", "execute", "edit", "accept", "accepted"}
_FALSE_WORDS = {"false", "no", "n", "0", "not_executable", "non_executable", "nonexecutable",
                "inexecutable", "unexecutable", "neg", "infeasible", "not_feasible",
                "impossible", "invalid", "cannot", "not_possible", "skip", "reject", "rejected",
                "rej", "none", "null"}
_TYPE_WORDS = {
    "add": "add", "addition": "add", "adding": "add", "insert": "add", "insertion": "add",
    "put": "add", "place": "add", "create": "add",
    "remove": "remove", "removal": "remove", "removing": "remove", "delete": "remove",
    "deletion": "remove", "erase": "remove", "eliminate": "remove",
    "replace": "replace", "replacement": "replace", "replacing": "replace", "swap": "replace",
    "substitute": "replace", "substitution": "replace",
    "attribute": "attribute", "attribute_change": "attribute", "attributes": "attribute",
    "modify": "attribute", "modification": "attribute", "change": "attribute",
    "alter": "attribute", "color": "attribute", "colour": "attribute", "material": "attribute",
    "texture": "attribute", "size": "attribute", "shape": "attribute", "recolor": "attribute",
    "style": "style", "style_transfer": "style", "stylize": "style", "stylise": "style",
    "global": "style",
    "other": "other",
}
_BOX_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NO_BOX_WORDS = {"", "none", "null", "n/a", "na", "-", "nil", "no box", "whole image",
                 "entire image", "full image", "the whole image", "the entire image"}
_INDEX_TEXT = re.compile(r"^\s*#?\s*(\d{1,6})\s*[.):]?\s*$")

# Grounding syntaxes, per family (their model cards and processors; tests/test_reply_parser.py
# holds an example of each):
#   Qwen-VL (v1)    <ref>a cat</ref><box>(x1,y1),(x2,y2)</box>                         0-1000
#   Qwen2-VL        <|object_ref_start|>a cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>
#                   (several boxes: <|box_start|>..<|box_end|><|box_start|>..<|box_end|>)  0-1000
#   Qwen2.5-VL      ```json [{"bbox_2d": [x1, y1, x2, y2], "label": "a cat"}] ```     absolute
#                   pixels of the smart-resized input
#   Qwen3-VL        the same JSON as Qwen2.5-VL, but 0-1000 relative
# The JSON forms go through the JSON reader with the family's convention (box_coords.family_of);
# the tag forms are read here and are 0-1000 whatever the family.
GROUNDING_SYNTAXES = ("qwen_vl_tags", "qwen2_vl_tags", "qwen25_vl_json", "qwen3_vl_json")
_TAG_REF = r"(?:<\|object_ref_start\|>(?P<ref2>.*?)<\|object_ref_end\|>|<ref>(?P<ref1>.*?)</ref>)"
_TAG_BOX = r"(?:<\|box_start\|>(?P<box2>.*?)<\|box_end\|>|<box>(?P<box1>.*?)</box>)"
_TAG_BOX_RE = re.compile(_TAG_BOX, re.S)
_TAG_RE = re.compile(r"(?:" + _TAG_REF + r"\s*)?(?P<boxes>(?:" + _TAG_BOX + r"\s*)+)", re.S)
_TAG_MARK = re.compile(r"<\|box_start\|>|<box>")


# ---- small value readers -------------------------------------------------------------------
def _norm_key(key) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(key).casefold()).strip("_")


def _normalised(entry: dict) -> dict:
    out = {}
    for key, value in entry.items():
        out.setdefault(_norm_key(key), value)
    return out


def _first(entry: dict, keys) -> tuple:
    """(found, value) of the first key present with a non-None value (else of the first key)."""
    hit = (False, None)
    for key in keys:
        if key in entry:
            if entry[key] is not None:
                return True, entry[key]
            if not hit[0]:
                hit = (True, None)
    return hit


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return " ".join(_as_text(v) for v in value if v is not None)
    if isinstance(value, dict):
        return ""
    return str(value)


def _as_index(value) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e9:
        return int(value)
    if isinstance(value, str):
        m = _INDEX_TEXT.match(value)
        if m:
            return int(m.group(1))
    return None


def _as_bool(value) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = _norm_key(value)
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def _as_edit_type(value) -> str:
    word = _norm_key(_as_text(value))
    if word in EDIT_TYPES:
        return word
    if word in _TYPE_WORDS:
        return _TYPE_WORDS[word]
    first = word.split("_", 1)[0]
    return _TYPE_WORDS.get(first, "other")


def _number(value) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str) and _BOX_NUMBER.fullmatch(value.strip()):
        return float(value.strip())
    return None


_CORNER_KEYS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"),
                ("x_min", "y_min", "x_max", "y_max"), ("left", "top", "right", "bottom"))
_SIZE_KEYS = (("x", "y", "w", "h"), ("x", "y", "width", "height"))


def _raw_boxes(value, depth: int = 0) -> tuple:
    """(boxes as 4-lists of floats, number of box-like things that could not be read)."""
    if value is None or depth > 4:
        return [], 0 if value is None else 1
    if isinstance(value, str):
        if value.strip().casefold() in _NO_BOX_WORDS:
            return [], 0
        numbers = _BOX_NUMBER.findall(value)
        if numbers and len(numbers) % 4 == 0:
            floats = [float(v) for v in numbers]
            return [floats[i:i + 4] for i in range(0, len(floats), 4)], 0
        return [], 1
    if isinstance(value, dict):
        entry = _normalised(value)
        found, inner = _first(entry, ("bbox_2d", "bbox", "box", "boxes", "bounding_box",
                                      "coordinates"))
        if found:
            return _raw_boxes(inner, depth + 1)
        for keys in _CORNER_KEYS:
            if all(k in entry for k in keys):
                numbers = [_number(entry[k]) for k in keys]
                return ([numbers], 0) if None not in numbers else ([], 1)
        for keys in _SIZE_KEYS:
            if all(k in entry for k in keys):
                x, y, w, h = (_number(entry[k]) for k in keys)
                if None in (x, y, w, h):
                    return [], 1
                return [[x, y, x + w, y + h]], 0
        return [], 1
    if isinstance(value, (list, tuple)):
        if not value:
            return [], 0
        if len(value) == 4 and all(not isinstance(v, (list, tuple, dict)) for v in value):
            numbers = [_number(v) for v in value]
            return ([numbers], 0) if None not in numbers else ([], 1)
        if (len(value) == 2 and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value)
                and all(_number(c) is not None for p in value for c in p)):
            (a, b), (c, d) = value
            return [[_number(a), _number(b), _number(c), _number(d)]], 0
        boxes, bad = [], 0
        for element in value:
            more, more_bad = _raw_boxes(element, depth + 1)
            boxes.extend(more)
            bad += more_bad
        return boxes, bad
    return [], 1


def _words(text: str) -> list:
    words = re.findall(r"[a-z0-9]+", text.casefold())
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words]


def _canon(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


# ---- entries -------------------------------------------------------------------------------
@dataclass
class _Entry:
    position: int
    index: Optional[int]
    text: Optional[str]
    executable: Optional[bool]
    reason: str
    target: str
    boxes: list
    bad_boxes: int
    edit_type: str
    grounding: bool
    resolved: str = ""
    convention: Optional[str] = None  # overrides the family's convention (tag syntaxes: 0-1000)


def _entry(raw: dict, position: int) -> _Entry:
    entry = _normalised(raw)
    has_index, index = _first(entry, _INDEX_KEYS)
    has_text, text = _first(entry, _TEXT_KEYS)
    has_exec, executable = _first(entry, _EXEC_KEYS)
    _, reason = _first(entry, _REASON_KEYS)
    _, target = _first(entry, _TARGET_PHRASE_KEYS)
    _, box_value = _first(entry, _BOX_KEYS)
    _, edit_type = _first(entry, _TYPE_KEYS)
    _, resolved = _first(entry, _RESOLVED_KEYS)
    boxes, bad = _raw_boxes(box_value)
    tagged = isinstance(box_value, str) and _TAG_MARK.search(box_value) is not None
    index = _as_index(index) if has_index else None
    text = _as_text(text).strip() if has_text and isinstance(text, str) else None
    return _Entry(
        position=position,
        index=index,
        text=text or None,
        executable=_as_bool(executable) if has_exec else None,
        reason=_as_text(reason),
        target=_as_text(target),
        boxes=boxes,
        bad_boxes=bad,
        edit_type=_as_edit_type(edit_type),
        grounding=not (has_index or has_text or has_exec),
        resolved=_as_text(resolved).strip() if isinstance(resolved, str) else "",
        convention=RELATIVE_1000 if tagged else None,
    )


def _tag_entries(text: str) -> List[_Entry]:
    """Grounding written in Qwen-VL / Qwen2-VL tags: one entry per (label, boxes) run."""
    entries = []
    for match in _TAG_RE.finditer(text):
        label = (match.group("ref2") or match.group("ref1") or "").strip()
        boxes, bad = [], 0
        for box in _TAG_BOX_RE.finditer(match.group("boxes")):
            numbers = [float(v) for v in _BOX_NUMBER.findall(box.group("box2") or box.group("box1") or "")]
            if len(numbers) == 4:
                boxes.append(numbers)
            else:
                bad += 1
        entries.append(_Entry(position=len(entries), index=None, text=None, executable=None,
                              reason="", target=label, boxes=boxes, bad_boxes=bad, edit_type="other",
                              grounding=True, convention=RELATIVE_1000))
    return entries


def _is_item_like(d: dict) -> bool:
    keys = {_norm_key(k) for k in d}
    if keys & set(_EXEC_KEYS) or keys & set(_BOX_KEYS):
        return True
    others = set(_REASON_KEYS) | set(_TARGET_PHRASE_KEYS) | set(_TYPE_KEYS) | set(_RESOLVED_KEYS)
    return bool((keys & set(_INDEX_KEYS) or keys & set(_TEXT_KEYS)) and keys & others)


def _caption(d: dict, keys) -> Optional[str]:
    entry = _normalised(d)
    found, value = _first(entry, keys)
    if found and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return _as_text(value)
    return None


@dataclass
class _Container:
    items: list  # item dicts (complete and partial), in reply order
    owner: Optional[dict]  # the dict holding the list, for captions
    partial: bool
    hit_end: bool
    order: int


@dataclass
class _Collected:
    containers: List[_Container] = field(default_factory=list)
    singles: list = field(default_factory=list)  # (dict, hit_end)
    caption_dicts: list = field(default_factory=list)
    order: int = 0


def _items_of(d: dict) -> Optional[tuple]:
    """(items, partial) when ``d`` holds its entries under a key such as "edits"."""
    entry = {}
    for key, value in d.items():
        entry.setdefault(_norm_key(key), value)
    for key in _ITEMS_KEYS:
        value = entry.get(key)
        if isinstance(value, list):
            items = [v for v in value if isinstance(v, dict)]
            if items or not value or key in ("edits", "items", "results"):
                return items, isinstance(value, PartialList)
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            items = []
            for k, v in value.items():  # {"1": {...}, "2": {...}}: the key is the index
                v = dict(v)
                if _as_index(k) is not None and not (set(map(_norm_key, v)) & set(_INDEX_KEYS)):
                    v["index"] = _as_index(k)
                items.append(v)
            return items, isinstance(value, PartialDict)
    return None


def _walk(value, out: _Collected, hit_end: bool, depth: int = 0):
    if depth > 6:
        return
    out.order += 1
    if isinstance(value, dict):
        held = _items_of(value)
        if held is not None:
            items, partial = held
            out.containers.append(_Container(items, value, partial or any(
                isinstance(i, PartialDict) for i in items), hit_end, out.order))
            return
        if _is_item_like(value):
            out.singles.append((value, hit_end))
        if (_caption(value, _SOURCE_KEYS) is not None
                or _caption(value, _TARGET_KEYS) is not None):
            out.caption_dicts.append(value)
        if not _is_item_like(value):
            for child in value.values():
                if isinstance(child, (dict, list)):
                    _walk(child, out, hit_end, depth + 1)
    elif isinstance(value, list):
        items = [v for v in value if isinstance(v, dict) and _is_item_like(v)]
        if items:
            partial = isinstance(value, PartialList) or any(
                isinstance(i, PartialDict) for i in items)
            out.containers.append(_Container(items, None, partial, hit_end, out.order))
            for v in value:  # a trailing {"source_caption": ...} inside the list
                if isinstance(v, dict) and not _is_item_like(v) and (
                        _caption(v, _SOURCE_KEYS) is not None
                        or _caption(v, _TARGET_KEYS) is not None):
                    out.caption_dicts.append(v)
            return
        for child in value:
            if isinstance(child, (dict, list)):
                _walk(child, out, hit_end, depth + 1)


@dataclass
class _Reading:
    entries: List[_Entry]
    source_caption: str
    target_caption: str
    missing_reason: str
    notes: List[str]


def _read(text: str) -> Optional[_Reading]:
    collected = _Collected()
    for found in find_values(text):
        _walk(found.value, collected, found.hit_end)
    notes = []
    owner = None
    if collected.containers:
        def weight(c):
            return (sum(not isinstance(i, PartialDict) for i in c.items), c.order)
        chosen = max(collected.containers, key=weight)
        raw_items = [i for i in chosen.items if not isinstance(i, PartialDict)]
        owner = chosen.owner
        dropped = len(chosen.items) - len(raw_items)
        if chosen.partial:
            missing = CUT_OFF_REASON if chosen.hit_end else GARBLED_REASON
            if dropped:
                notes.append(f"dropped {dropped} incomplete entr{'y' if dropped == 1 else 'ies'}"
                             " at the end of the model's reply")
        else:
            missing = OMITTED_REASON
        if len(collected.containers) > 1:
            notes.append(f"the reply held {len(collected.containers)} lists of entries; used the "
                         f"one with {len(raw_items)} complete entries")
    elif collected.singles:
        raw_items = [d for d, _ in collected.singles if not isinstance(d, PartialDict)]
        cut = any(hit for _, hit in collected.singles)
        missing = CUT_OFF_REASON if cut else OMITTED_REASON
    elif collected.caption_dicts:
        raw_items, missing = [], OMITTED_REASON
    else:
        tagged = _tag_entries(text)
        if not tagged:
            return None
        return _Reading(tagged, "", "", OMITTED_REASON, [])
    source = target = None
    for d in ([owner] if owner is not None else []) + collected.caption_dicts[::-1]:
        if source is None:
            source = _caption(d, _SOURCE_KEYS)
        if target is None:
            target = _caption(d, _TARGET_KEYS)
    entries = [_entry(raw, position) for position, raw in enumerate(raw_items)]
    return _Reading(entries, source or "", target or "", missing, notes)


# ---- matching entries to instructions ----------------------------------------------------
def _overlap(a: str, b: str) -> float:
    wa, wb = set(_words(a)), set(_words(b))
    if not wa or not wb:
        return 0.0
    if wa <= wb or wb <= wa:
        return max(len(wa & wb) / len(wa | wb), 0.75)
    return len(wa & wb) / len(wa | wb)


def _assign(entries: List[_Entry], instructions: List[str], notes: list) -> dict:
    """instruction position -> list of entries (first = the one used)."""
    n = len(instructions)
    assigned = {}
    canon = [_canon(s) for s in instructions]
    indices = {e.index for e in entries if e.index is not None}
    base = 0 if 0 in indices and n not in indices else 1

    def take(pos, e):
        if pos in assigned:
            return False
        assigned[pos] = [e]
        return True

    pending = []
    for e in entries:  # 1) exact echoed text, 2) index
        if e.text is not None and _canon(e.text) in canon:
            exact = [i for i, c in enumerate(canon) if c == _canon(e.text) and i not in assigned]
            if exact and take(exact[0], e):
                continue
        if e.index is not None and 0 <= e.index - base < n and take(e.index - base, e):
            continue
        pending.append(e)
    leftovers = []
    for e in pending:  # 3) best word overlap with the echoed text
        if e.text is not None:
            scores = [(_overlap(e.text, s), -i) for i, s in enumerate(instructions)
                      if i not in assigned]
            if scores:
                score, neg_i = max(scores)
                if score >= 0.5 and take(-neg_i, e):
                    continue
        leftovers.append(e)
    for e in leftovers:  # 4) position, for entries that name no instruction at all
        if e.index is None and e.text is None and e.position < n and take(e.position, e):
            continue
        notes.append(f"reply entry {e.position + 1} matched no instruction and was ignored")
    return assigned


def _assign_grounding(entries: List[_Entry], instructions: List[str], notes: list) -> dict:
    n = len(instructions)
    assigned = {}
    for e in entries:
        if n == 1:
            pos = 0
        else:
            label = e.target or ""
            scores = []
            for i, s in enumerate(instructions):
                wl, ws = set(_words(label)), set(_words(s))
                scores.append((len(wl & ws) / len(wl) if wl else 0.0, -i))
            best = max(scores) if scores else (0.0, 0)
            pos = -best[1] if best[0] >= 0.5 else None
        if pos is None:
            notes.append(f"the model located {e.target or 'something'!r}, which matches no "
                         "instruction; ignored")
            continue
        assigned.setdefault(pos, []).append(e)
    return assigned


# ---- public API ----------------------------------------------------------------------------
def _check_instructions(instructions) -> List[str]:
    if isinstance(instructions, str) or not isinstance(instructions, (list, tuple)) or not all(
            isinstance(s, str) for s in instructions):
        raise InputError("instructions", "must be a list of instruction strings.",
                         "Split the prompt with split_instructions() first.")
    return list(instructions)


def parse_reply(reply: str, instructions: Sequence[str], convention: str, image_size,
                model_input_size=None) -> EditPlan:
    """Read ``reply`` into an EditPlan with one item per instruction, in instruction order.

    ``image_size`` and ``model_input_size`` are ``(width, height)``; see box_coords for the
    conventions. Raises PlanParseError when the reply holds nothing recognisable (and
    InputError for bad arguments); never anything else.
    """
    instructions = _check_instructions(instructions)
    convention = check_convention(convention)
    size = check_size(image_size, "image_size")
    input_size = model_input_size_for(size, model_input_size) if convention == ABSOLUTE else None
    if not isinstance(reply, str):
        raise PlanParseError(f"the model's reply must be text, got {type(reply).__name__}.")
    reading = None
    if "</think>" in reply:  # a thinking model: the answer follows its last </think>
        reading = _read(reply.rsplit("</think>", 1)[1])
    if reading is None:
        reading = _read(reply)
    if reading is None:
        raise PlanParseError(
            "found no JSON edit entries in the model's reply.",
            fix="The model should answer with the JSON the prompt asks for; try a larger "
                "max_new_tokens or a stronger model.",
        )
    notes = list(reading.notes)
    entries = reading.entries
    grounding = bool(entries) and all(e.grounding for e in entries)
    if grounding:
        assigned = _assign_grounding(entries, instructions, notes)
    else:
        assigned = _assign(entries, instructions, notes)

    items = []
    for pos, instruction in enumerate(instructions):
        label = f"instruction {pos + 1}"
        group = assigned.get(pos)
        if not group:
            reason = NOT_LOCATED_REASON if grounding else reading.missing_reason
            items.append(EditItem(instruction=instruction, executable=False, reason=reason))
            continue
        boxes = []
        unreadable = sum(e.bad_boxes for e in group)
        if unreadable:
            notes.append(f"{label}: {unreadable} box value(s) could not be read")
        for e in group:
            for raw in e.boxes:
                box = to_source_pixels(raw, e.convention or convention, size, input_size)
                if box is None:
                    notes.append(f"{label}: dropped box {raw!r} (not four finite numbers, "
                                 "outside the image or without area)")
                elif box not in boxes:
                    boxes.append(box)
        first = group[0]
        executable = first.executable
        if grounding:
            executable = bool(boxes)
        elif executable is None:
            executable = bool(boxes)
            notes.append(f"{label}: the model did not say whether it is executable; "
                         + ("it gave a usable box, so it counts as executable" if executable
                            else "it gave no usable box, so it counts as not executable"))
        if executable and not boxes and first.edit_type != "style":
            notes.append(f"{label}: no usable box, so the whole image is its region")
        reason = first.reason
        if grounding:
            reason = f"the model located {first.target!r}" if boxes else NOT_LOCATED_REASON
        items.append(EditItem(
            instruction=instruction, executable=executable, reason=reason,
            target=first.target, boxes=tuple(boxes), edit_type=first.edit_type,
            resolved=first.resolved,
        ))
    return EditPlan(items=tuple(items), source_caption=reading.source_caption,
                    target_caption=reading.target_caption, image_size=size, raw_reply=reply,
                    notes=tuple(notes))


def unreadable_plan(instructions: Sequence[str], image_size=None, raw_reply: Optional[str] = None,
                    note: str = UNREADABLE_REASON) -> EditPlan:
    """Every instruction non-executable because the reply could not be read."""
    instructions = _check_instructions(instructions)
    size = check_size(image_size, "image_size") if image_size is not None else None
    items = tuple(EditItem(instruction=s, executable=False, reason=UNREADABLE_REASON)
                  for s in instructions)
    return EditPlan(items=items, image_size=size, raw_reply=raw_reply, notes=(note,))


def plan_from_reply(reply, instructions: Sequence[str], convention: str, image_size,
                    model_input_size=None) -> EditPlan:
    """Like :func:`parse_reply`, but an unreadable reply gives a plan instead of an error.

    Every item of that plan is non-executable with reason "could not read the model's reply",
    and the raw reply is kept for the report. Bad arguments still raise InputError.
    """
    instructions = _check_instructions(instructions)
    convention = check_convention(convention)
    size = check_size(image_size, "image_size")
    if convention == ABSOLUTE:
        model_input_size = model_input_size_for(size, model_input_size)
    raw = reply if isinstance(reply, str) else repr(reply)
    try:
        return parse_reply(reply, instructions, convention, size, model_input_size)
    except PlanParseError as error:
        note = f"{UNREADABLE_REASON}: {error.problem}"
    except Exception as error:  # noqa: BLE001 - a parser bug must not cost the user the run
        note = f"{UNREADABLE_REASON} (internal error {type(error).__name__}: {error})"
    return unreadable_plan(instructions, size, raw, note)
