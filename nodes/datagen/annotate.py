"""Caption, ground and mask one image: the first three stages of the pipeline.

- caption: the VLM writes InsightEdit's object list (prompts.CAPTION_PROMPT), read with the
  pack's forgiving JSON reader (executability.lenient_json);
- ground: the VLM locates every listed object; its reply is read by the pack's plan parser
  (executability.reply_parser: Qwen2.5-VL ``bbox_2d`` grounding lists, box conventions of each
  VLM family, boxes converted to source pixels);
- ground (alternative): Grounding DINO through transformers from a local folder
  (:class:`GroundingDino`), with InsightEdit's text prompt (the simple captions joined by ".")
  and thresholds (box 0.4, text 0.3) and its matching of detected labels to the object list;
- mask: the pack's SAM decoding (masks.sam.SamDecoder, one box prompt per object, SAM's single
  best mask), stored as COCO RLE. A box whose SAM mask is empty uses the box itself (the pack's
  rule in masks.sam.masks_for_plan), with a note.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import ContextEditError
from ..executability.box_coords import ABSOLUTE
from ..executability.lenient_json import find_values
from ..executability.prompt import coordinate_rule
from ..executability.reply_parser import parse_reply
from ..masks import rle
from ..masks.box_masks import boxes_to_mask
from .prompts import CAPTION_PROMPT, ground_prompt

CAPTION_MAX_NEW_TOKENS = 1024
GROUND_MAX_NEW_TOKENS = 512

_SIMPLE_KEYS = ("obj_simple_caption", "simple_caption", "name", "label", "object")
_DETAIL_KEYS = ("obj_detailed_caption", "detailed_caption", "description", "detail")
_IMAGE_CAPTION_KEYS = ("img_caption", "image_caption", "caption", "description")


class UnreadableReply(ContextEditError, ValueError):
    """The model's reply holds nothing the stage can use (the item goes to the failure log)."""

    def __init__(self, stage: str, problem: str, reply: str):
        self.stage, self.reply = stage, reply
        excerpt = reply if len(reply) <= 200 else reply[:200] + "..."
        super().__init__(f"{stage}: {problem} Reply: {excerpt!r}")


def load_image(path):
    """The image at ``path`` as PIL RGB, fully read (a truncated or corrupt file raises here)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def _pick(entry: dict, keys) -> str:
    lowered = {str(k).casefold(): v for k, v in entry.items()}
    for key in keys:
        value = lowered.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return ""


def parse_caption_reply(reply: str) -> dict:
    """``{"img_caption", "object_list"}`` from a caption reply; UnreadableReply if it has neither
    an image caption nor one named object."""
    text = reply.rsplit("</think>", 1)[-1] if "</think>" in reply else reply
    caption, objects = "", []
    for found in find_values(text):
        value = found.value
        if isinstance(value, dict):
            caption = caption or _pick(value, _IMAGE_CAPTION_KEYS)
            listed = next((v for k, v in value.items() if str(k).casefold() in
                           ("object_list", "objects", "object list")), None)
        else:
            listed = value
        if isinstance(listed, list) and not objects:
            objects = [entry for entry in listed if isinstance(entry, dict)]
    seen, cleaned = set(), []
    for entry in objects:
        name = _pick(entry, _SIMPLE_KEYS)
        if not name or name.casefold() in seen:
            continue
        seen.add(name.casefold())
        cleaned.append({
            "category": _pick(entry, ("category", "class", "type")),
            "obj_simple_caption": name,
            "obj_detailed_caption": _pick(entry, _DETAIL_KEYS),
            "replace_with": _pick(entry, ("replace_with", "replacement")),
            "replace_with_caption": _pick(entry, ("replace_with_caption", "replacement_caption")),
        })
    if not caption or not cleaned:
        missing = "an image caption" if not caption else "any named object"
        raise UnreadableReply("caption", f"the reply has no {missing} (expected JSON with "
                              "img_caption and object_list).", reply)
    return {"img_caption": caption, "object_list": cleaned}


def caption_image(vlm, image, max_new_tokens: int = CAPTION_MAX_NEW_TOKENS) -> dict:
    """Caption + object list of a PIL image, with the raw reply."""
    reply = vlm.generate(image, CAPTION_PROMPT, max_new_tokens=max_new_tokens).text
    return dict(parse_caption_reply(reply), raw_reply=reply)


def _annotation(obj: dict, box, score=None) -> dict:
    return {"class_name": obj["obj_simple_caption"], "category": obj.get("category", ""),
            "detailed_caption": obj.get("obj_detailed_caption", ""),
            "replace_with": obj.get("replace_with", ""),
            "replace_with_caption": obj.get("replace_with_caption", ""),
            "bbox": [float(v) for v in box], "score": score}


def ground_with_vlm(vlm, image, objects: list, max_new_tokens: int = GROUND_MAX_NEW_TOKENS) -> dict:
    """Boxes for the caption's objects from the VLM: ``{"annotations", "notes", "raw_reply"}``.

    The reply goes through the pack's plan parser with the object names as its "instructions", so
    every box lands with the object its label names, in source pixels. An unreadable reply raises
    (PlanParseError); objects the model did not locate get no annotation.
    """
    names = [obj["obj_simple_caption"] for obj in objects]
    convention = vlm.box_convention
    input_size = vlm.model_input_size(image) if convention == ABSOLUTE else None
    prompt = ground_prompt(names, coordinate_rule(convention, input_size))
    result = vlm.generate(image, prompt, max_new_tokens=max_new_tokens)
    plan = parse_reply(result.text, names, convention, image.size,
                       result.model_input_size or input_size)
    annotations = [_annotation(obj, box) for obj, item in zip(objects, plan.items) for box in item.boxes]
    return {"annotations": annotations, "notes": list(plan.notes), "raw_reply": result.text}


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.casefold())


def match_label(label: str, objects: list):
    """The object whose simple caption contains ``label`` or is contained in it (InsightEdit's
    matching of detector labels to its object list, on letters and digits only), or None."""
    key = _clean(label)
    if not key:
        return None
    for obj in objects:
        name = _clean(obj["obj_simple_caption"])
        if name and (name in key or key in name):
            return obj
    return None


def mask_annotations(sam, image, annotations: list) -> tuple[list, list]:
    """(annotations with ``segmentation`` (COCO RLE) and ``area``, notes): one SAM box prompt per
    annotation, the image encoded once. Annotations whose mask comes back empty are dropped."""
    if not annotations:
        return [], []
    pixels = np.asarray(image.convert("RGB"))
    masks = sam.masks_from_boxes(pixels, [ann["bbox"] for ann in annotations])
    kept, notes = [], []
    height, width = pixels.shape[:2]
    for ann, mask in zip(annotations, masks):
        binary = mask.numpy() > 0.5
        source = "sam"
        if not binary.any():  # the pack's rule (masks.sam.masks_for_plan): fall back to the box
            binary = boxes_to_mask([ann["bbox"]], height, width).numpy() > 0.5
            source = "box"
            notes.append(f"SAM gave an empty mask for {ann['class_name']!r} at {ann['bbox']}; "
                         "the box is its mask")
        if not binary.any():
            notes.append(f"{ann['class_name']!r} at {ann['bbox']} covers no pixel; dropped")
            continue
        kept.append(dict(ann, segmentation=rle.encode(binary), area=int(binary.sum()), mask_source=source))
    return kept, notes


BOX_THRESHOLD = 0.4
TEXT_THRESHOLD = 0.3


class GroundingDino:
    """A Grounding DINO folder (``AutoModelForZeroShotObjectDetection``), local files only."""

    def __init__(self, path, device=None):
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
                str(path), local_files_only=True).to(self.device).eval()
        except (OSError, ValueError, KeyError) as error:
            from ..errors import InputError

            raise InputError("grounding_dino", f"'{path}' could not be loaded as a Grounding DINO folder "
                             f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).",
                             "Pass a local copy of e.g. IDEA-Research/grounding-dino-tiny (config.json, "
                             "model.safetensors, processor and tokenizer files).") from None
        self.path = str(path)

    def detect(self, image, objects: list, box_threshold: float = BOX_THRESHOLD,
               text_threshold: float = TEXT_THRESHOLD) -> dict:
        """``{"annotations", "notes", "prompt"}``: detections matched to the caption's objects."""
        import torch

        prompt = "".join(obj["obj_simple_caption"].lower() + "." for obj in objects)
        inputs = self.processor(images=image, text=prompt, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        sizes = [(image.height, image.width)]
        try:
            result = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
                target_sizes=sizes)[0]
        except TypeError:  # transformers < 4.51 named it box_threshold
            result = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], box_threshold=box_threshold, text_threshold=text_threshold,
                target_sizes=sizes)[0]
        labels = result["text_labels"] if "text_labels" in result else result["labels"]
        annotations, notes = [], []
        for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), labels):
            obj = match_label(str(label), objects)
            x1, y1 = max(0.0, min(box[0], box[2])), max(0.0, min(box[1], box[3]))
            x2, y2 = min(float(image.width), max(box[0], box[2])), min(float(image.height), max(box[1], box[3]))
            if obj is None:
                notes.append(f"detected {label!r}, which matches no listed object; ignored")
            elif not (x2 > x1 and y2 > y1):
                notes.append(f"dropped the box of {label!r}: no area inside the image")
            else:
                annotations.append(_annotation(obj, [x1, y1, x2, y2], float(score)))
        return {"annotations": annotations, "notes": notes, "prompt": prompt}
