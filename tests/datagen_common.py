"""Shared setup of tests/test_datagen_*.py: a tiny Qwen2.5-VL whose replies are scripted where
their content matters, source images, the tiny models of every stage."""

from __future__ import annotations

import json
from pathlib import Path

from contextedit.nodes.executability.vlm_runtime import GenerationResult, load_vlm
from fixtures.tiny_models import (
    make_tiny_qwen2_vl,
    make_tiny_sam_checkpoint,
    write_test_image,
)

# (width, height) of the test images; the red box sits at [0.1w, 0.2h, 0.45w, 0.8h]
SIZES = {"a": (64, 64), "b": (80, 64), "c": (64, 72)}


def red_box(w, h):
    return [round(0.1 * w), round(0.2 * h), round(0.45 * w), round(0.8 * h)]


def write_images(folder, sizes=SIZES) -> Path:
    folder = Path(folder)
    for name, (w, h) in sizes.items():
        write_test_image(folder / f"{name}.png", w, h)
    return folder


CAPTION_REPLY = json.dumps({
    "object_list": [
        {"category": "Shape", "obj_simple_caption": "red box", "obj_detailed_caption": "A red box on the left.",
         "replace_with": "green box", "replace_with_caption": "a green box on the left"},
        {"category": "Shape", "obj_simple_caption": "blue disc", "obj_detailed_caption": "A blue disc.",
         "replace_with": "", "replace_with_caption": ""},
    ],
    "img_caption": "A red box and a blue disc on grey.",
})


def kind_of(prompt: str) -> str:
    if prompt.startswith("Describe this image"):
        return "caption"
    if prompt.startswith("Locate each"):
        return "ground"
    if prompt.startswith("The first image is the original"):
        return "rewrite"
    if prompt.startswith("Decide whether"):
        return "filter"
    return "sc" if "Editing instruction:" in prompt else "pq"


def default_reply(kind, size, input_size, prompt):
    if kind == "caption":
        return "```json\n" + CAPTION_REPLY + "\n```"
    if kind == "ground":  # Qwen2.5-VL: absolute pixels of the image as it saw it
        w, h = size
        iw, ih = input_size
        box = [v * iw / w if i % 2 == 0 else v * ih / h for i, v in enumerate(red_box(w, h))]
        return json.dumps([{"bbox_2d": [round(v, 2) for v in box], "label": "red box"}])
    if kind == "filter":  # every detected object is an edit target
        return '{"flag": 1}'
    if kind == "rewrite":
        instruction = prompt.split('"')[1]
        return json.dumps({"simple_instruction": instruction, "reasoning_instruction": "edit the thing on the left",
                           "source_caption": "a grey picture", "target_caption": f"after: {instruction}"})
    return json.dumps({"score": [8, 7] if kind == "sc" else [9, 6], "reasoning": "fine"})


class ScriptedVLM:
    """The tiny VLM runs for real (one token: processor, image tokens, chat template), then the
    reply is replaced by ``script(kind, image_size, model_input_size, prompt)``. Records calls."""

    def __init__(self, vlm, script=default_reply):
        self.vlm, self.script, self.calls = vlm, script, []

    def __getattr__(self, name):
        return getattr(self.vlm, name)

    def generate(self, image, prompt, max_new_tokens=512, should_stop=None, on_token=None):
        real = self.vlm.generate(image, prompt, max_new_tokens=1)
        first = image[0] if isinstance(image, (list, tuple)) else image
        kind = kind_of(prompt)
        n_images = len(image) if isinstance(image, (list, tuple)) else 1
        self.calls.append((kind, first.size, n_images))
        return GenerationResult(self.script(kind, first.size, real.model_input_size, prompt),
                                real.model_input_size, 1)


def tiny_vlm(root):
    return load_vlm(make_tiny_qwen2_vl(root, "qwen2_5_vl"), device="cpu")


def tiny_sam_path(root):
    return make_tiny_sam_checkpoint(root)
