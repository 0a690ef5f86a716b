"""Export the kept pairs as one folder both of the pack's readers take.

``OUT/export/`` (or ``--export-dir``)::

    pairs.jsonl                 one JSON object per exported pair (everything the stages know)
    metadata.jsonl              the region trainer's dataset file (nodes/regions/train.py):
                                {"image", "caption", "instruction", "target_caption", "edited", ...}
    edit_sessions.json          MagicBrush layout, read by the benchmark runner
    global_descriptions.json    (nodes/metrics/datasets.py load_magicbrush): one single-turn
    local_descriptions.json     session per pair
    images/<pair>/<pair>-input.png  <pair>-output1.png  <pair>-mask1.png (white = edited region: the
                                raw segmentation)  <pair>-inpaint_mask.png (white = the grown mask
                                the inpainter filled; written when the run recorded it)

A pair is exported when its score record says ``keep`` (VIEScore overall >= the threshold the
score stage used; a reverse pair that was not judged carries its forward pair's keep), or, with
``min_score``, when its overall score (a reverse pair: its forward pair's) is at least that. Export reads
``score/*.json`` only and rewrites the index files on every run; image files already there are
kept (so a rerun after adding items is cheap). A pair whose images cannot be read is logged in
``failures/export.jsonl`` and left out.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..masks import rle
from .runner import FAILURES, read_json, save_image_atomic


def _copy(src: Path, dst: Path) -> None:
    if dst.is_file():
        return
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() == ".png":
        with Image.open(src) as image:
            image.verify()  # a corrupt file fails here, before it is copied
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    else:
        with Image.open(src) as image:
            save_image_atomic(image.convert("RGB"), dst)


def export(run_dir, export_dir=None, min_score: float | None = None, log=print) -> dict:
    """Write the export folder; returns ``{"exported": n, "dropped": n, "failed": n}``."""
    from PIL import Image

    run_dir = Path(run_dir)
    export_dir = Path(export_dir) if export_dir else run_dir / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    rows, sessions, local, global_ = [], {}, {}, {}
    counts = {"exported": 0, "dropped": 0, "failed": 0}
    failures = run_dir / FAILURES / "export.jsonl"

    def resolve(path):
        return Path(path) if os.path.isabs(path) else run_dir / path

    for record_path in sorted((run_dir / "score").glob("*.json")):
        record = read_json(record_path)
        judged = {p["pair_id"]: p["scores"] for p in record["pairs"] if p.get("scores")}
        for pair in record["pairs"]:
            scores = pair["scores"] or judged[pair["scored_with"]]
            keep = pair["keep"] if min_score is None else scores["overall"] >= min_score
            if not keep:
                counts["dropped"] += 1
                continue
            pid = pair["pair_id"]
            folder = export_dir / "images" / pid
            names = {"input": f"{pid}-input.png", "output": f"{pid}-output1.png", "mask": f"{pid}-mask1.png",
                     "inpaint_mask": f"{pid}-inpaint_mask.png"}
            try:
                _copy(resolve(pair["origin_img"]), folder / names["input"])
                _copy(resolve(pair["target_img"]), folder / names["output"])
                for key, field in (("mask", "segmentation"), ("inpaint_mask", "inpaint_mask")):
                    if field in pair and not (folder / names[key]).is_file():
                        mask = rle.decode(pair[field]).astype(np.uint8) * 255
                        save_image_atomic(Image.fromarray(mask, mode="L"), folder / names[key])
            except Exception as error:  # noqa: BLE001 - one unreadable pair must not stop the export
                counts["failed"] += 1
                failures.parent.mkdir(parents=True, exist_ok=True)
                with open(failures, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"stage": "export", "item": pid, "error": type(error).__name__,
                                             "message": str(error), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
                continue
            rel = f"images/{pid}/"
            rows.append({
                "pair_id": pid, "source_id": record["id"], "task_type": pair["task_type"],
                "image": rel + names["input"], "edited": rel + names["output"], "mask": rel + names["mask"],
                "inpaint_mask": rel + names["inpaint_mask"] if "inpaint_mask" in pair else None,
                "caption": pair["source_caption"], "target_caption": pair["target_caption"],
                "instruction": pair["simple_instruction"], "reasoning_instruction": pair["reasoning_instruction"],
                "template_instructions": pair["instruction"], "class_origin": pair["class_origin"],
                "class_target": pair["class_target"], "bbox": pair["bbox"], "scores": pair["scores"],
                "scored_with": pair.get("scored_with", ""),
                "seed": pair["seed"],
            })
            sessions[pid] = [{"input": names["input"], "mask": names["mask"], "output": names["output"],
                              "instruction": pair["simple_instruction"]}]
            global_[pid] = {names["input"]: pair["source_caption"], names["output"]: pair["target_caption"]}
            local[pid] = {names["output"]: pair["target_caption"]}
            counts["exported"] += 1

    def write(name, text):
        tmp = export_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, export_dir / name)

    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write("pairs.jsonl", lines)
    write("metadata.jsonl", lines)  # the region trainer reads image / caption / instruction / target_caption / edited
    write("edit_sessions.json", json.dumps(sessions, ensure_ascii=False, indent=1))
    write("global_descriptions.json", json.dumps(global_, ensure_ascii=False, indent=1))
    write("local_descriptions.json", json.dumps(local, ensure_ascii=False, indent=1))
    if log is not None:
        log(f"export: {counts['exported']} pairs written to {export_dir}, {counts['dropped']} below the score "
            f"threshold, {counts['failed']} failed")
    return counts
