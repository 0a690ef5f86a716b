"""Benchmark folders as lists of samples: PIE-Bench layout and MagicBrush layout.

PIE-Bench (cure-lab/PnPInversion ``data/``)::

    DATA/mapping_file.json          {id: {"image_path": "0_random_140/000000000000.jpg",
                                          "original_prompt": "a [cat] ...", "editing_prompt": "a [dog] ...",
                                          "editing_instruction": "...", "editing_type_id": "0",
                                          "blended_word": "cat dog", "mask": [start, length, ...]}}
    DATA/annotation_images/<image_path>

  Brackets are stripped from the prompts (as evaluate.py does). The RLE mask is decoded at the
  image's size with the border forced to 1 (rle.py), as the evaluation does.

MagicBrush test split (OSU-NLP-Group/MagicBrush)::

    DATA/edit_sessions.json         {img_id: [{"input": "139306-input.png", "mask": "139306-mask1.png",
                                               "output": "139306-output1.png", "instruction": "..."}, ...]}
    DATA/images/<img_id>/<file>
    DATA/local_descriptions.json    optional {img_id: {"139306-output1.png": "caption"}} (CLIP-T text)
    DATA/global_descriptions.json   optional {img_id: {"139306-input.png": "caption", ...}}

  Every turn is one single-turn sample (the ground-truth input of the turn, as MagicBrush's
  "independent" setting), grouped by turn number. Masks: an RGBA mask marks the region to edit as
  transparent (DALL-E 2's convention, which MagicBrush's masks follow); an opaque mask is read as
  grey > 127 = edit region.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .rle import rle_decode

PIE_EDIT_TYPES = {
    "0": "random", "1": "change object", "2": "add object", "3": "delete object",
    "4": "change content", "5": "change pose", "6": "change color", "7": "change material",
    "8": "change background", "9": "change style",
}


@dataclass
class Sample:
    id: str
    image: str                    # path of the source image
    edit_type: str                # group shown in the summary
    source_prompt: str = ""
    target_prompt: str = ""
    instruction: str = ""
    blended_word: str = ""
    reference: str | None = None  # ground-truth edited image (MagicBrush)
    mask_rle: list | None = None  # PIE-Bench
    mask_path: str | None = None  # MagicBrush
    extra: dict = field(default_factory=dict)

    def fields(self) -> dict:
        """Values a workflow input can be bound to (runner --set NODE.INPUT=FIELD)."""
        return {"source_prompt": self.source_prompt, "target_prompt": self.target_prompt,
                "instruction": self.instruction, "blended_word": self.blended_word, "id": self.id,
                "edit_type": self.edit_type}


def load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def sample_mask(sample: Sample, height: int, width: int):
    """The sample's edit mask [H, W] float 0/1 at the given size, or None."""
    if sample.mask_rle is not None:
        return rle_decode(sample.mask_rle, (height, width), force_border=True)
    if sample.mask_path:
        from PIL import Image

        with Image.open(sample.mask_path) as image:
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                alpha = np.asarray(image.convert("RGBA"))[..., 3]
                mask = (alpha < 128) if alpha.min() < 255 else None
            else:
                mask = None
            if mask is None:
                mask = np.asarray(image.convert("L")) > 127
        mask = mask.astype(np.float32)
        if mask.shape != (height, width):
            from PIL import Image as _Image

            mask = np.asarray(_Image.fromarray((mask * 255).astype(np.uint8)).resize((width, height), _Image.NEAREST)) > 127
        return mask.astype(np.float32)
    return None


def _strip(prompt: str) -> str:
    return (prompt or "").replace("[", "").replace("]", "")


def load_pie(root: str) -> list:
    with open(os.path.join(root, "mapping_file.json"), encoding="utf-8") as handle:
        mapping = json.load(handle)
    images = os.path.join(root, "annotation_images")
    samples = []
    for key, item in mapping.items():
        type_id = str(item.get("editing_type_id", ""))
        samples.append(Sample(
            id=str(key), image=os.path.join(images, item["image_path"]),
            edit_type=f"{type_id} {PIE_EDIT_TYPES.get(type_id, '')}".strip(),
            source_prompt=_strip(item.get("original_prompt")), target_prompt=_strip(item.get("editing_prompt")),
            instruction=item.get("editing_instruction", ""), blended_word=item.get("blended_word", ""),
            mask_rle=item.get("mask"), extra={"editing_type_id": type_id},
        ))
    return samples


def load_magicbrush(root: str) -> list:
    with open(os.path.join(root, "edit_sessions.json"), encoding="utf-8") as handle:
        sessions = json.load(handle)

    def optional(name):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        return {}

    local, global_ = optional("local_descriptions.json"), optional("global_descriptions.json")
    samples = []
    for img_id, turns in sessions.items():
        for index, turn in enumerate(turns, start=1):
            folder = os.path.join(root, "images", str(img_id))
            samples.append(Sample(
                id=f"{img_id}_{index}", image=os.path.join(folder, turn["input"]), edit_type=f"turn {index}",
                source_prompt=(global_.get(str(img_id)) or {}).get(turn["input"], ""),
                target_prompt=(local.get(str(img_id)) or {}).get(turn["output"], ""),
                instruction=turn.get("instruction", ""),
                reference=os.path.join(folder, turn["output"]),
                mask_path=os.path.join(folder, turn["mask"]) if turn.get("mask") else None,
            ))
    return samples


LAYOUTS = {"pie": load_pie, "magicbrush": load_magicbrush}


def detect_layout(root: str) -> str:
    if os.path.isfile(os.path.join(root, "mapping_file.json")):
        return "pie"
    if os.path.isfile(os.path.join(root, "edit_sessions.json")):
        return "magicbrush"
    raise FileNotFoundError(f"'{root}' has neither mapping_file.json (PIE-Bench) nor edit_sessions.json (MagicBrush)")
