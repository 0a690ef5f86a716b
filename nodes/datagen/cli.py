"""Make editing pairs from a folder of images (InsightEdit's AdvancedEdit pipeline, local models).

Run it as a script from the pack's folder (the custom-node folder is not an importable package
name, so ``python -m`` does not fit; the script bootstraps the package itself)::

    python nodes/datagen/cli.py all --images photos/ --out runs/pairs \\
        --models-dir ComfyUI/models --vlm Qwen2.5-VL-7B-Instruct --sam sam_vit_h_4b8939.pth \\
        --inpainter sd-v1-5-inpainting.safetensors --inpaint-config path/to/stable-diffusion-inpainting

    python nodes/datagen/cli.py caption --images photos/ --out runs/pairs --vlm ...   # one stage
    accelerate launch --num_processes 4 nodes/datagen/cli.py all ...   # data-parallel, same arguments
    torchrun --nproc_per_node 4 nodes/datagen/cli.py all ...

Stages: caption (VLM: caption + object list), ground (VLM boxes, or Grounding DINO with
--grounding-dino), mask (SAM, COCO RLE), filter (VLM: is each detected object a sensible edit
target, as InsightEdit's object filter; --no-object-filter keeps all), inpaint (the first
--max-objects targets: remove / replace, each also reversed: add / replace back), rewrite (VLM:
simple + reasoning instruction, captions), score (VLM: VIEScore SC / PQ on 0-10, overall =
sqrt(min SC * min PQ), keep when >= --threshold; by default only forward pairs are judged, with the
template instruction, as InsightEdit's 5_evaluate.py), export (JSONL + MagicBrush layout for the
region trainer and the benchmark runner, with the raw and the inpainted (grown) mask). Every stage skips items already done (rerun the same command to resume), logs failures
to OUT/failures/<stage>.jsonl without stopping (exit status 3 when any item failed, 0 otherwise),
seeds every item from --seed, and takes --limit.
With several processes each takes every N-th item; ``all`` waits for every process between
stages and exports on the first. Nothing is downloaded: models are paths, or names in the
ComfyUI models folder given by --models-dir (models/LLM, models/sams, models/checkpoints,
models/diffusers, models/grounding-dino).
"""

if __name__ == "__main__" and not __package__:
    # run as a file: re-enter as a module of the pack (nodes/script_entry.py says why)
    import importlib.util as _util
    import pathlib as _pathlib

    _spec = _util.spec_from_file_location("_contextedit_script_entry",
                                          _pathlib.Path(__file__).resolve().parents[1] / "script_entry.py")
    _entry = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_entry)
    raise SystemExit(_entry.run("nodes.datagen.cli"))

import argparse
import os

from . import inpaint as inpaint_mod
from .annotate import BOX_THRESHOLD, TEXT_THRESHOLD
from .export import export
from .instruct import THRESHOLD
from .pipeline import MAX_OBJECTS, SCORE_INSTRUCTIONS, SCORE_PAIRS, STAGES, Pipeline
from .runner import dist_rank_world

COMMANDS = STAGES + ("export", "all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS, help="the stage to run, or all of them in order")
    p.add_argument("--out", required=True, help="run folder (reused to resume)")
    p.add_argument("--images", help="folder of source images (caption / all)")
    p.add_argument("--models-dir", help="ComfyUI models folder for model names (default: ./models)")
    p.add_argument("--vlm", help="vision-language model: folder, or name in models/LLM (Qwen2.5-VL)")
    p.add_argument("--sam", help="SAM checkpoint: file, or name in models/sams")
    p.add_argument("--inpainter", help="inpainting model: single file (needs --inpaint-config) or diffusers "
                   "folder, or a name in models/checkpoints / models/diffusers")
    p.add_argument("--inpaint-config", help="local diffusers folder with the single file's component configs")
    p.add_argument("--grounding-dino", help="ground with Grounding DINO instead of the VLM: local folder, or name "
                   "in models/grounding-dino (e.g. a copy of IDEA-Research/grounding-dino-tiny)")
    p.add_argument("--box-threshold", type=float, default=BOX_THRESHOLD, help="Grounding DINO box threshold (the repo: 0.4)")
    p.add_argument("--text-threshold", type=float, default=TEXT_THRESHOLD, help="Grounding DINO text threshold (the repo: 0.3)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this process's GPU, else CPU)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each item's seed is derived from it")
    p.add_argument("--limit", type=int, help="first N items only (before splitting over processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--max-objects", type=int, default=MAX_OBJECTS,
                   help="objects inpainted per image: the first N the filter keeps (our cap)")
    p.add_argument("--no-object-filter", action="store_true",
                   help="inpaint the first --max-objects detected objects without asking the VLM whether each "
                        "is a sensible edit target")
    p.add_argument("--no-replace", action="store_true", help="remove/add pairs only")
    p.add_argument("--steps", type=int, default=inpaint_mod.STEPS, help="inpainting steps (the repo: 45)")
    p.add_argument("--guidance", type=float, default=inpaint_mod.GUIDANCE, help="inpainting CFG scale (the repo: 12)")
    p.add_argument("--resolution", type=int, default=inpaint_mod.RESOLUTION,
                   help="short side the image is inpainted at (the repo: 640; SDXL: 1024)")
    p.add_argument("--dilate-iterations", type=int, default=inpaint_mod.DILATE_ITERATIONS)
    p.add_argument("--erode-iterations", type=int, default=inpaint_mod.ERODE_ITERATIONS)
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="keep a pair when its overall score (0-10) >= this (ours: InsightEdit set none)")
    p.add_argument("--score-pairs", choices=SCORE_PAIRS, default="forward",
                   help="forward: judge remove / replace pairs, a reverse pair takes its forward pair's verdict "
                        "(InsightEdit's 5_evaluate.py); all: judge every pair")
    p.add_argument("--score-instruction", choices=SCORE_INSTRUCTIONS, default="template",
                   help="the edit the semantic-consistency judge checks: template ('remove the cat', InsightEdit's) "
                        "or rewritten (the rewrite stage's simple instruction)")
    p.add_argument("--min-score", type=float, help="export: re-filter on the overall score instead of 'keep'")
    p.add_argument("--export-dir", help="export folder (default: OUT/export)")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def _device(args, rank: int, world: int):
    if args.device:
        return args.device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    return "cpu"


def _barrier(world: int):
    """Wait for every process (``all`` runs stage N+1 on items other processes finished)."""
    if world == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def build_pipeline(args, rank: int = 0, world: int = 1, **models) -> Pipeline:
    """The Pipeline for parsed ``args``; ``models`` (vlm=, sam=, inpainter=) replace loading."""
    return Pipeline(
        args.out, args.images, vlm=models.get("vlm", args.vlm), sam=models.get("sam", args.sam),
        inpainter=models.get("inpainter", args.inpainter), inpaint_config=args.inpaint_config,
        grounding_dino=models.get("grounding_dino", args.grounding_dino), box_threshold=args.box_threshold,
        text_threshold=args.text_threshold,
        models_dir=args.models_dir, device=_device(args, rank, world), seed=args.seed, limit=args.limit,
        progress=not args.no_progress, threshold=args.threshold, max_objects=args.max_objects,
        replace=not args.no_replace, steps=args.steps, guidance=args.guidance, resolution=args.resolution,
        dilate_iterations=args.dilate_iterations, erode_iterations=args.erode_iterations,
        filter_objects=not args.no_object_filter, score_pairs=args.score_pairs,
        score_instruction=args.score_instruction)


def main(argv=None, **models) -> int:
    args = build_parser().parse_args(argv)
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    rank, world = dist_rank_world()
    pipeline = build_pipeline(args, rank, world, **models)
    failed = 0
    if args.command in STAGES:
        failed = len(pipeline.run(args.command).failed)
    elif args.command == "all":
        for stage in STAGES:
            failed += len(pipeline.run(stage).failed)
            _barrier(world)
    if args.command in ("export", "all") and rank == 0:
        failed += export(args.out, args.export_dir, args.min_score)["failed"]
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0 if failed == 0 else 3


if __name__ == "__main__":
    raise SystemExit(main())
