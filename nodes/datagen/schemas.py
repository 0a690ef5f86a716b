"""What each stage writes, checked before it is written (a record that fails is a failed item).

Every record carries ``id``, ``image`` (the source image path), ``width`` and ``height``. Boxes
are ``[x1, y1, x2, y2]`` pixels of the source image; masks are COCO RLE dicts
(``nodes/masks/rle.py``). Image paths of generated files are relative to the run folder.
"""

from __future__ import annotations

import math

TASK_TYPES = ("remove", "add", "replace")


class SchemaError(ValueError):
    """A stage record does not have the shape the next stage reads."""

    def __init__(self, stage: str, where: str, problem: str):
        self.stage, self.where = stage, where
        super().__init__(f"{stage} record: '{where}' {problem}")


def _check(stage, cond, where, problem):
    if not cond:
        raise SchemaError(stage, where, problem)


def _text(stage, record, key, where="", allow_empty=False):
    value = record.get(key) if isinstance(record, dict) else None
    _check(stage, isinstance(value, str) and (allow_empty or value.strip()), f"{where}{key}",
           "must be a non-empty string" if not allow_empty else "must be a string")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _base(stage, record):
    _check(stage, isinstance(record, dict), "(record)", "must be a JSON object")
    _text(stage, record, "id")
    _text(stage, record, "image")
    for key in ("width", "height"):
        value = record.get(key)
        _check(stage, isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
               "must be a positive integer")


def _box(stage, box, where, width, height):
    _check(stage, isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box), where,
           "must be [x1, y1, x2, y2] numbers")
    x1, y1, x2, y2 = box
    _check(stage, 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, where,
           f"must lie inside the {width}x{height} image with positive area, got {box}")


def _rle(stage, value, where, width, height):
    _check(stage, isinstance(value, dict) and value.get("size") == [height, width]
           and isinstance(value.get("counts"), str), where,
           f"must be a COCO RLE dict with size [{height}, {width}] and string counts")


def validate_caption(record):
    stage = "caption"
    _base(stage, record)
    _text(stage, record, "img_caption")
    objects = record.get("object_list")
    _check(stage, isinstance(objects, list) and objects, "object_list", "must be a non-empty list")
    for i, obj in enumerate(objects):
        where = f"object_list[{i}]."
        _check(stage, isinstance(obj, dict), where[:-1], "must be an object")
        for key in ("category", "obj_simple_caption", "obj_detailed_caption"):
            _text(stage, obj, key, where, allow_empty=key != "obj_simple_caption")
        for key in ("replace_with", "replace_with_caption"):
            _text(stage, obj, key, where, allow_empty=True)


def _annotations(stage, record, with_masks):
    annotations = record.get("annotations")
    _check(stage, isinstance(annotations, list), "annotations", "must be a list")
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]."
        _check(stage, isinstance(ann, dict), where[:-1], "must be an object")
        _text(stage, ann, "class_name", where)
        for key in ("category", "detailed_caption", "replace_with", "replace_with_caption"):
            _text(stage, ann, key, where, allow_empty=True)
        _box(stage, ann.get("bbox"), where + "bbox", record["width"], record["height"])
        _check(stage, ann.get("score") is None or _number(ann.get("score")), where + "score",
               "must be a number or null")
        if with_masks:
            _rle(stage, ann.get("segmentation"), where + "segmentation", record["width"], record["height"])
            _check(stage, isinstance(ann.get("area"), int) and ann["area"] > 0, where + "area",
                   "must be a positive pixel count")


def validate_ground(record):
    _base("ground", record)
    _check("ground", record.get("grounder") in ("vlm", "grounding_dino"), "grounder",
           "must be 'vlm' or 'grounding_dino'")
    _check("ground", record.get("box_format") == "xyxy", "box_format", "must be 'xyxy'")
    _annotations("ground", record, with_masks=False)


def validate_mask(record):
    _base("mask", record)
    _annotations("mask", record, with_masks=True)


def validate_filter(record):
    stage = "filter"
    _base(stage, record)
    _annotations(stage, record, with_masks=True)
    _check(stage, record.get("object_filter") in ("vlm", "off"), "object_filter", "must be 'vlm' or 'off'")
    for i, ann in enumerate(record["annotations"]):
        _check(stage, isinstance(ann.get("edit_target"), bool), f"annotations[{i}].edit_target",
               "must be true or false")
        _text(stage, ann, "filter_reply", f"annotations[{i}].", allow_empty=True)


def _pairs(stage, record, extra):
    pairs = record.get("pairs")
    _check(stage, isinstance(pairs, list), "pairs", "must be a list")
    ids = set()
    for i, pair in enumerate(pairs):
        where = f"pairs[{i}]."
        _check(stage, isinstance(pair, dict), where[:-1], "must be an object")
        _text(stage, pair, "pair_id", where)
        _check(stage, pair["pair_id"] not in ids, where + "pair_id", "must be unique")
        ids.add(pair["pair_id"])
        _check(stage, pair.get("task_type") in TASK_TYPES, where + "task_type",
               f"must be one of {TASK_TYPES}")
        for key in ("origin_img", "target_img"):
            _text(stage, pair, key, where)
        instruction = pair.get("instruction")
        _check(stage, isinstance(instruction, list) and instruction
               and all(isinstance(s, str) and s.strip() for s in instruction), where + "instruction",
               "must be a non-empty list of strings")
        for key in ("class_origin", "class_target"):
            _text(stage, pair, key, where, allow_empty=True)
        _box(stage, pair.get("bbox"), where + "bbox", record["width"], record["height"])
        _rle(stage, pair.get("segmentation"), where + "segmentation", record["width"], record["height"])
        if "inpaint_mask" in pair:  # the grown mask that was inpainted (absent in records of older runs)
            _rle(stage, pair["inpaint_mask"], where + "inpaint_mask", record["width"], record["height"])
        _check(stage, isinstance(pair.get("reverse_of", ""), str), where + "reverse_of", "must be a string")
        _check(stage, isinstance(pair.get("seed"), int), where + "seed", "must be an integer")
        extra(pair, where)


def validate_inpaint(record):
    _base("inpaint", record)
    _pairs("inpaint", record, lambda pair, where: None)


def _rewritten(stage):
    def check(pair, where):
        for key in ("simple_instruction", "reasoning_instruction", "source_caption", "target_caption"):
            _text(stage, pair, key, where)
    return check


def validate_rewrite(record):
    _base("rewrite", record)
    _pairs("rewrite", record, _rewritten("rewrite"))


def validate_score(record):
    stage = "score"
    _base(stage, record)
    rewritten = _rewritten(stage)

    judged = {p.get("pair_id") for p in record.get("pairs", []) if isinstance(p, dict)
              and isinstance(p.get("scores"), dict)} if isinstance(record, dict) else set()

    def check(pair, where):
        rewritten(pair, where)
        _check(stage, isinstance(pair.get("keep"), bool), where + "keep", "must be true or false")
        scores = pair.get("scores")
        if scores is None:  # not judged (a reverse pair): its verdict is the judged pair it names
            _check(stage, pair.get("scored_with") in judged, where + "scored_with",
                   "must name a judged pair of this record when scores is null")
            return
        _check(stage, isinstance(scores, dict), where + "scores", "must be an object or null")
        for key in ("SC", "PQ"):
            values = scores.get(key)
            _check(stage, isinstance(values, list) and len(values) == 2
                   and all(_number(v) and 0 <= v <= 10 for v in values), f"{where}scores.{key}",
                   "must be two numbers in 0..10")
        _check(stage, _number(scores.get("overall")) and 0 <= scores["overall"] <= 10,
               where + "scores.overall", "must be a number in 0..10")

    _pairs(stage, record, check)
    _check(stage, _number(record.get("threshold")), "threshold", "must be a number")


VALIDATORS = {"caption": validate_caption, "ground": validate_ground, "mask": validate_mask,
              "filter": validate_filter, "inpaint": validate_inpaint, "rewrite": validate_rewrite,
              "score": validate_score}
