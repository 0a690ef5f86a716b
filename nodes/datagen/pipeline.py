"""The pipeline's stages over a folder of images, each a :func:`runner.run_stage` loop.

Run folder layout (``OUT``)::

    caption/<id>.json   ground/<id>.json   mask/<id>.json      one record per source image
    filter/<id>.json    (the mask record, each object marked edit_target true / false)
    inpaint/<id>.json   inpaint/images/<id>_<k>_<class>_{removed,to_<class>}.png
    rewrite/<id>.json   score/<id>.json
    failures/<stage>.jsonl                                    one line per failed item
    export/                                                   see export.py

A stage works on the items whose previous stage finished (an item that failed earlier is not
re-failed downstream). Models are loaded the first time a stage needs them; tests and the node
pass loaded objects instead of paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..masks import rle
from . import annotate, instruct, targets
from . import inpaint as inpaint_mod
from .runner import read_json, run_stage, save_image_atomic
from .schemas import VALIDATORS

STAGES = ("caption", "ground", "mask", "filter", "inpaint", "rewrite", "score")
PREVIOUS = {"ground": "caption", "mask": "ground", "filter": "mask", "inpaint": "filter", "rewrite": "inpaint",
            "score": "rewrite"}
SCORE_PAIRS = ("forward", "all")
SCORE_INSTRUCTIONS = ("template", "rewritten")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_OBJECTS = 3


def list_images(folder) -> dict:
    """{id: path} of the images in ``folder`` (id = file stem; two files with one stem are refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("images", f"'{folder}' is not a folder.", "Pass the folder of source images.")
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            if path.stem in found:
                raise InputError("images", f"'{path.name}' and '{found[path.stem].name}' share the id "
                                 f"'{path.stem}'.", "Rename one of them; ids are file names without extension.")
            found[path.stem] = path
    return found


class Pipeline:
    """``vlm``, ``sam``, ``inpainter``: loaded objects, or paths / model names (loaded lazily)."""

    def __init__(self, out, images=None, *, vlm=None, sam=None, inpainter=None, inpaint_config=None,
                 grounding_dino=None, box_threshold: float = annotate.BOX_THRESHOLD,
                 text_threshold: float = annotate.TEXT_THRESHOLD,
                 models_dir=None, device=None, seed: int = 0, limit: int | None = None,
                 progress: bool = True, threshold: float = instruct.THRESHOLD,
                 max_objects: int = MAX_OBJECTS, replace: bool = True,
                 steps: int = inpaint_mod.STEPS, guidance: float = inpaint_mod.GUIDANCE,
                 resolution: int = inpaint_mod.RESOLUTION,
                 dilate_iterations: int = inpaint_mod.DILATE_ITERATIONS,
                 erode_iterations: int = inpaint_mod.ERODE_ITERATIONS, filter_objects: bool = True,
                 score_pairs: str = "forward", score_instruction: str = "template", log=print):
        self.out = Path(out)
        self.images = Path(images) if images else None
        self._vlm, self._sam, self._inpainter = vlm, sam, inpainter
        self._dino, self.box_threshold, self.text_threshold = grounding_dino, box_threshold, text_threshold
        self.inpaint_config, self.models_dir, self.device = inpaint_config, models_dir, device
        self.seed, self.limit, self.progress, self.threshold = seed, limit, progress, threshold
        self.max_objects, self.replace = max_objects, replace
        self.steps, self.guidance, self.resolution = steps, guidance, resolution
        self.dilate_iterations, self.erode_iterations = dilate_iterations, erode_iterations
        if score_pairs not in SCORE_PAIRS:
            raise InputError("score_pairs", f"'{score_pairs}' is not one of {SCORE_PAIRS}.",
                             "forward: InsightEdit's choice (remove and replace pairs); all: every pair.")
        if score_instruction not in SCORE_INSTRUCTIONS:
            raise InputError("score_instruction", f"'{score_instruction}' is not one of {SCORE_INSTRUCTIONS}.",
                             "template: InsightEdit's choice ('remove the cat'); rewritten: the simple instruction.")
        self.filter_objects, self.score_pairs, self.score_instruction = filter_objects, score_pairs, score_instruction
        self.log = log

    # ---- models (lazy) ---------------------------------------------------------------------
    @property
    def vlm(self):
        if self._vlm is None or isinstance(self._vlm, (str, os.PathLike)):
            from ..executability.vlm_runtime import load_vlm
            from .models import find_model

            if self._vlm is None:
                raise InputError("vlm", "this stage needs a vision-language model.",
                                 "Pass --vlm <folder or name in models/LLM>, e.g. Qwen2.5-VL-7B-Instruct.")
            self._vlm = load_vlm(find_model(self._vlm, "LLM", self.models_dir, "VLM"), device=self.device,
                                 input_name="vlm")
        return self._vlm

    @property
    def sam(self):
        if self._sam is None or isinstance(self._sam, (str, os.PathLike)):
            from ..masks.sam import load_sam
            from .models import find_model

            if self._sam is None:
                raise InputError("sam", "the mask stage needs a SAM checkpoint.",
                                 "Pass --sam <file or name in models/sams>, e.g. sam_vit_h_4b8939.pth.")
            import torch

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._sam = load_sam(find_model(self._sam, "sams", self.models_dir, "SAM"), device=device,
                                 input_name="sam")
        return self._sam

    @property
    def grounding_dino(self):
        """None when grounding is the VLM's."""
        if isinstance(self._dino, (str, os.PathLike)):
            from .models import find_model

            self._dino = annotate.GroundingDino(
                find_model(self._dino, "grounding-dino", self.models_dir, "Grounding DINO"), device=self.device)
        return self._dino

    @property
    def inpainter(self):
        if self._inpainter is None or isinstance(self._inpainter, (str, os.PathLike)):
            from .models import find_model

            if self._inpainter is None:
                raise InputError("inpainter", "the inpaint stage needs an inpainting model.",
                                 "Pass --inpainter <checkpoint file / diffusers folder or a name in "
                                 "models/checkpoints or models/diffusers>.")
            path = find_model(self._inpainter, ("checkpoints", "diffusers"), self.models_dir, "inpainter")
            self._inpainter = inpaint_mod.Inpainter(
                path, config=self.inpaint_config, device=self.device, steps=self.steps,
                guidance=self.guidance, resolution=self.resolution)
        return self._inpainter

    # ---- paths -----------------------------------------------------------------------------
    def output(self, stage: str, item_id: str) -> Path:
        return self.out / stage / f"{item_id}.json"

    def resolve(self, path: str) -> Path:
        """A stored image path: absolute as stored, or relative to the run folder."""
        return Path(path) if os.path.isabs(path) else self.out / path

    def ids(self, stage: str) -> list:
        if stage == "caption":
            if self.images is None:
                raise InputError("images", "the caption stage needs the folder of source images.",
                                 "Pass --images DIR.")
            return sorted(list_images(self.images))
        folder = self.out / PREVIOUS[stage]
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def previous(self, stage: str, item_id: str) -> dict:
        return read_json(self.output(PREVIOUS[stage], item_id))

    def run(self, stage: str):
        if stage not in STAGES:
            raise InputError("stage", f"'{stage}' is not one of {STAGES}.", "Pick a stage.")
        return run_stage(stage, self.ids(stage), lambda i: self.output(stage, i),
                         getattr(self, f"_{stage}"), self.out, seed=self.seed, limit=self.limit,
                         validate=VALIDATORS[stage], progress=self.progress, log=self.log)

    def run_all(self) -> dict:
        return {stage: self.run(stage) for stage in STAGES}

    # ---- stages: (item id, seed) -> record -------------------------------------------------
    def _caption(self, item_id: str, seed: int) -> dict:
        if getattr(self, "_images_by_id", None) is None:  # listed once per run, not once per item
            self._images_by_id = list_images(self.images)
        path = self._images_by_id[item_id]
        image = annotate.load_image(path)
        result = annotate.caption_image(self.vlm, image)
        return {"id": item_id, "image": str(path.resolve()), "width": image.width, "height": image.height,
                **result}

    def _ground(self, item_id: str, seed: int) -> dict:
        record = self.previous("ground", item_id)
        image = annotate.load_image(record["image"])
        dino = self.grounding_dino
        if dino is not None:
            found = dino.detect(image, record["object_list"], self.box_threshold, self.text_threshold)
        else:
            found = annotate.ground_with_vlm(self.vlm, image, record["object_list"])
        return {k: record[k] for k in ("id", "image", "width", "height", "img_caption")} | {
            "grounder": "vlm" if dino is None else "grounding_dino", "box_format": "xyxy", **found}

    def _mask(self, item_id: str, seed: int) -> dict:
        record = self.previous("mask", item_id)
        image = annotate.load_image(record["image"])
        kept, notes = annotate.mask_annotations(self.sam, image, record["annotations"])
        sam = self.sam
        return {k: record[k] for k in ("id", "image", "width", "height", "img_caption", "grounder",
                                       "box_format")} | {
            "annotations": kept, "notes": record.get("notes", []) + notes,
            "sam": os.path.basename(getattr(sam, "path", "") or "")}

    def _filter(self, item_id: str, seed: int) -> dict:
        """Each detected object marked ``edit_target`` by the VLM (targets.py); all of them without
        the filter (``filter_objects=False``)."""
        record = self.previous("filter", item_id)
        annotations = []
        if self.filter_objects and record["annotations"]:
            image = annotate.load_image(record["image"])
            for ann in record["annotations"]:
                keep, reply = targets.ask_edit_target(self.vlm, image, record["img_caption"], ann)
                annotations.append(dict(ann, edit_target=keep, filter_reply=reply))
        else:
            annotations = [dict(ann, edit_target=True, filter_reply="") for ann in record["annotations"]]
        return dict(record, annotations=annotations, object_filter="vlm" if self.filter_objects else "off")

    def _inpaint(self, item_id: str, seed: int) -> dict:
        record = self.previous("inpaint", item_id)
        image = annotate.load_image(record["image"])
        inpainter = self.inpainter
        pairs = []
        chosen = [(i, a) for i, a in enumerate(record["annotations"]) if a.get("edit_target", True)]
        for index, ann in chosen[: self.max_objects]:
            mask = rle.decode(ann["segmentation"])
            grown = inpaint_mod.dilate_erode(mask, self.dilate_iterations, self.erode_iterations)
            if not grown.any():
                grown = mask
            grown_rle = rle.encode(grown.astype(bool))
            for number, (kind, prompt, negative, stem, target) in enumerate(
                    inpaint_mod.pair_plans(item_id, ann, index, self.replace)):
                pair_seed = (seed + 1009 * index + number) & 0x7FFFFFFF
                rel = f"inpaint/images/{stem}.png"
                if not self.resolve(rel).is_file():  # a killed run's finished images are reused
                    result = inpainter.inpaint(image, grown, prompt, negative, pair_seed)
                    save_image_atomic(result, self.resolve(rel))
                for n, (task, origin, target_img, instructions, c_origin, c_target) in enumerate(
                        inpaint_mod.pairs_for(kind, record["image"], rel, ann["class_name"], target)):
                    pairs.append({
                        "pair_id": f"{stem}{'_rev' if n else ''}", "task_type": task,
                        "reverse_of": stem if n else "",
                        "origin_img": origin, "target_img": target_img, "instruction": instructions,
                        "class_origin": c_origin, "class_target": c_target,
                        "detailed_caption": ann.get("detailed_caption", ""),
                        "detailed_caption_target": ann.get("replace_with_caption", "") if kind == "replace" else "",
                        "bbox": ann["bbox"], "segmentation": ann["segmentation"], "inpaint_mask": grown_rle,
                        "seed": pair_seed, "inpaint_prompt": prompt, "inpaint_negative_prompt": negative})
        return {k: record[k] for k in ("id", "image", "width", "height", "img_caption")} | {
            "pairs": pairs, "settings": inpainter.settings() | {
                "dilate_iterations": self.dilate_iterations, "erode_iterations": self.erode_iterations}}

    def _pair_images(self, pair: dict):
        return annotate.load_image(self.resolve(pair["origin_img"])), annotate.load_image(
            self.resolve(pair["target_img"]))

    def _rewrite(self, item_id: str, seed: int) -> dict:
        record = self.previous("rewrite", item_id)
        pairs = []
        for pair in record["pairs"]:
            source, target = self._pair_images(pair)
            detail = pair.get("detailed_caption") or pair["task_type"]
            pairs.append(dict(pair, **instruct.rewrite_pair(self.vlm, source, target, pair, detail)))
        return dict(record, pairs=pairs)

    def _score(self, item_id: str, seed: int) -> dict:
        """InsightEdit's 5_evaluate.py by default: only forward pairs (remove, replace) are judged, the
        semantic-consistency judge checking the template instruction; a reverse pair (add, replace
        back) is not judged and takes its forward pair's keep (ours: the same two images, swapped).
        ``score_pairs='all'`` judges every pair, ``score_instruction='rewritten'`` the simple one."""
        record = self.previous("score", item_id)
        verdicts = {}
        for pair in record["pairs"]:
            if self.score_pairs == "all" or reverse_of(pair) is None:
                source, target = self._pair_images(pair)
                instruction = (pair["instruction"][0] if self.score_instruction == "template"
                               else pair["simple_instruction"])
                verdicts[pair["pair_id"]] = dict(instruct.score_pair(self.vlm, source, target, instruction,
                                                                     self.threshold), scored_instruction=instruction)
        pairs = []
        for pair in record["pairs"]:
            if pair["pair_id"] in verdicts:
                pairs.append(dict(pair, **verdicts[pair["pair_id"]], scored_with=""))
                continue
            forward = reverse_of(pair)
            if forward not in verdicts:
                raise ValueError(f"pair '{pair['pair_id']}' is the reverse of '{forward}', which this record lacks")
            pairs.append(dict(pair, scores=None, keep=verdicts[forward]["keep"], scored_instruction="",
                              scored_with=forward))
        return dict(record, pairs=pairs, threshold=self.threshold, score_pairs=self.score_pairs,
                    score_instruction=self.score_instruction)


def reverse_of(pair: dict):
    """The forward pair id of a reverse pair (add, replace back), None for a forward pair (records
    written before ``reverse_of`` existed: the ``_rev`` id suffix)."""
    if pair.get("reverse_of"):
        return pair["reverse_of"]
    return pair["pair_id"][:-4] if pair["pair_id"].endswith("_rev") else None
