"""The data pipeline as InsightEdit's released code runs it (issue 22 §6), with scripted VLM replies:

- object filter before inpainting (``1_3_1_remove_add_filter(optional).py``, and the same call inside
  ``3_1_remove_add_construction.py``): per detected object, the language model is given the image
  caption, the object's class name and detailed caption, and answers ``{"flag": 0 | 1}``; an object
  whose flag is 0 is not inpainted;
- replace inpainting prompt (``3_2_replace_construction.py``): ``text_guided_prompt=replace_class``,
  the short replacement class name;
- scoring (``5_quality_evaluation/5_evaluate.py``): ``add`` pairs are skipped, and so are replace
  pairs whose target is the source image (the reverse pairs); the semantic-consistency prompt
  carries ``item['instruction'][0]``, the template instruction;
- the mask that was inpainted is the segmentation grown by 40 binary dilations and 15 binary
  erosions with a 5 x 5 square (``segmentation_to_rgb_dilated_erosion_mask``), exported beside the
  raw segmentation.

Expected values are written from those scripts (plain loops over the scripted replies), never from
the pipeline's helpers.
"""

import json

import numpy as np
import pytest
from contextedit.nodes.datagen import cli
from contextedit.nodes.datagen.inpaint import Inpainter
from contextedit.nodes.datagen.pipeline import STAGES
from contextedit.nodes.datagen.runner import read_failures, read_json
from contextedit.nodes.masks import rle
from contextedit.nodes.masks.sam import load_sam
from datagen_common import (
    ScriptedVLM,
    default_reply,
    tiny_sam_path,
    tiny_vlm,
    write_images,
)
from fixtures.tiny_inpaint import (
    make_tiny_inpaint_folder,
    make_tiny_inpaint_single_file,
)
from PIL import Image
from regions_common import one_thread  # noqa: F401

W, H = 96, 72  # large enough that the grown mask (erosion eats 30 px from the border) is not empty
IMG_CAPTION = "A grey board with a few shapes on it."
# the caption's object list, in order; "natural landscape" is listed (and detected) first
OBJECTS = [
    ("natural landscape", "The scenery around the shapes.", [0, 0, 96, 72], "", ""),
    ("red box", "A red box on the left.", [10, 14, 43, 58], "green box", "a green box standing on the left"),
    ("blue disc", "A blue disc on the right.", [53, 22, 86, 54], "", ""),
    ("small square", "A small square at the top.", [60, 2, 78, 18], "", ""),
    ("thin bar", "A thin bar at the bottom.", [12, 60, 84, 70], "", ""),
]
NOT_TARGETS = {"natural landscape"}  # the scripted filter's answer 0
REWRITTEN = "get rid of it"  # the scripted rewrite's simple instruction: never the template


def filter_flag(prompt):
    return 0 if any(name in prompt for name in NOT_TARGETS) else 1


def script(calls):
    def reply(kind, size, input_size, prompt):
        calls.append((kind, prompt))
        if kind == "caption":
            return json.dumps({"img_caption": IMG_CAPTION, "object_list": [
                {"category": "Shape", "obj_simple_caption": name, "obj_detailed_caption": detail,
                 "replace_with": target, "replace_with_caption": target_caption}
                for name, detail, _, target, target_caption in OBJECTS]})
        if kind == "ground":  # Qwen2.5-VL: absolute pixels of the image as the model saw it
            iw, ih = input_size
            return json.dumps([{"bbox_2d": [round(v * (iw / W if i % 2 == 0 else ih / H), 2) for i, v in enumerate(box)],
                                "label": name} for name, _, box, _, _ in OBJECTS])
        if kind == "filter":
            return json.dumps({"flag": filter_flag(prompt)})
        if kind == "rewrite":
            return json.dumps({"simple_instruction": REWRITTEN, "reasoning_instruction": "find it and edit it",
                               "source_caption": "a grey board", "target_caption": "a grey board, edited"})
        return default_reply(kind, size, input_size, prompt)
    return reply


class RecordingInpainter:
    """The tiny inpainter, with every call's prompt, negative prompt and mask recorded."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def inpaint(self, image, mask, prompt, negative, seed):
        self.calls.append({"prompt": prompt, "negative": negative, "mask": np.array(mask, copy=True)})
        return self.inner.inpaint(image, mask, prompt, negative, seed)


@pytest.fixture(scope="module")
def run(generated_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("insightedit")
    images = write_images(root / "images", {"a": (W, H)})
    calls = []
    vlm = ScriptedVLM(tiny_vlm(generated_dir), script(calls))
    inpainter = RecordingInpainter(Inpainter(make_tiny_inpaint_single_file(generated_dir),
                                             config=make_tiny_inpaint_folder(generated_dir), device="cpu",
                                             steps=2, resolution=64))
    out = root / "run"
    status = cli.main(["all", "--images", str(images), "--out", str(out), "--no-progress", "--seed", "5"],
                      vlm=vlm, sam=load_sam(tiny_sam_path(generated_dir)), inpainter=inpainter)
    assert status == 0 and not any(read_failures(out, stage) for stage in STAGES)
    return {"out": out, "calls": calls, "inpaints": inpainter.calls}


def test_the_language_model_filters_each_detected_object_before_inpainting(run):
    detected = [ann["class_name"] for ann in read_json(run["out"] / "mask" / "a.json")["annotations"]]
    assert detected == [name for name, *_ in OBJECTS]  # every listed object was grounded and masked
    prompts = [p for kind, p in run["calls"] if kind == "filter"]
    # one question per detected object, with the image caption, its class name and detailed caption
    assert len(prompts) == len(detected)
    for (name, detail, *_), prompt in zip(OBJECTS, prompts):
        assert IMG_CAPTION in prompt and name in prompt and detail in prompt
    # the official loop: for each annotation, flag = ask(...); if flag == 0: continue; inpaint(...)
    # (at most --max-objects = 3 of the kept ones: our cap)
    kept = []
    for name, *_ in OBJECTS:
        flag = 0 if name in NOT_TARGETS else 1  # the scripted replies
        if flag == 0:
            continue
        kept.append(name)
    expected = kept[:3]
    removed = [c["negative"].split(",")[0] for c in run["inpaints"] if c["prompt"] == "empty scene blur"]
    assert removed == expected  # the remove pass names its object in the negative prompt
    assert "natural landscape" not in {p["class_origin"] for p in read_json(run["out"] / "inpaint" / "a.json")["pairs"]}


def test_replace_inpainting_prompt_is_the_short_replacement_class(run):
    replaces = [c for c in run["inpaints"] if c["prompt"] != "empty scene blur"]
    # 3_2_replace_construction.py: controller.infer(text_guided_prompt=replace_class, ...)
    assert [c["prompt"] for c in replaces] == ["green box"]
    pair = next(p for p in read_json(run["out"] / "inpaint" / "a.json")["pairs"] if p["task_type"] == "replace")
    assert pair["inpaint_prompt"] == "green box"
    assert pair["detailed_caption_target"] == "a green box standing on the left"  # kept as the repo keeps it


def test_only_forward_pairs_are_judged_and_with_the_template_instruction(run):
    pairs = read_json(run["out"] / "inpaint" / "a.json")["pairs"]
    source = read_json(run["out"] / "inpaint" / "a.json")["image"]
    # 5_evaluate.py: skip 'add'; skip 'replace' whose target is the source image; SC on instruction[0]
    judged = [p for p in pairs if p["task_type"] == "remove"
              or (p["task_type"] == "replace" and p["target_img"] != source)]
    expected = [f"Editing instruction: {p['instruction'][0]}" for p in judged]
    sc_prompts = [p for kind, p in run["calls"] if kind == "sc"]
    assert [p[p.index("Editing instruction:"):].strip() for p in sc_prompts] == expected
    assert len([1 for kind, _ in run["calls"] if kind == "pq"]) == len(judged)
    assert not any(REWRITTEN in p for p in sc_prompts)
    scored = {p["pair_id"]: p for p in read_json(run["out"] / "score" / "a.json")["pairs"]}
    for pair in pairs:
        if pair in judged:
            assert scored[pair["pair_id"]]["scores"]["SC"] == [8.0, 7.0]  # the scripted judge's reply
        else:  # not judged: its verdict is its forward pair's (same two images, swapped)
            forward = pair["pair_id"].removesuffix("_rev")
            assert scored[pair["pair_id"]]["scores"] is None
            assert scored[pair["pair_id"]]["keep"] == scored[forward]["keep"]


def binary_step(mask, grow: bool):
    """One scipy.ndimage binary_dilation / binary_erosion step, 5 x 5 square, outside = background."""
    h, w = mask.shape
    padded = np.zeros((h + 4, w + 4), dtype=bool)
    padded[2:-2, 2:-2] = mask
    shifted = [padded[dy:dy + h, dx:dx + w] for dy in range(5) for dx in range(5)]
    return np.logical_or.reduce(shifted) if grow else np.logical_and.reduce(shifted)


def test_export_holds_the_grown_mask_that_was_inpainted_beside_the_segmentation(run):
    export = run["out"] / "export"
    rows = [json.loads(line) for line in (export / "pairs.jsonl").read_text().splitlines()]
    assert rows
    masks_inpainted = [c["mask"].astype(bool) for c in run["inpaints"]]
    for row in rows:
        pair = next(p for p in read_json(run["out"] / "score" / "a.json")["pairs"] if p["pair_id"] == row["pair_id"])
        raw = rle.decode(pair["segmentation"]).astype(bool)
        grown = raw.copy()
        for _ in range(40):  # segmentation_to_rgb_dilated_erosion_mask: dilation x40, then erosion x15
            grown = binary_step(grown, grow=True)
        for _ in range(15):
            grown = binary_step(grown, grow=False)
        with Image.open(export / row["mask"]) as image:
            assert np.array_equal(np.asarray(image.convert("L")) > 127, raw)
        with Image.open(export / row["inpaint_mask"]) as image:
            exported = np.asarray(image.convert("L")) > 127
        assert np.array_equal(exported, grown) and not np.array_equal(grown, raw)
        assert any(np.array_equal(exported, m) for m in masks_inpainted)  # what the inpainter was given
