"""Wall time of the flagship graph (workflows/context_aware_edit.json), split by stage.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/end_to_end.py          # tiny VLM + SAM, CPU
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/end_to_end.py --full   # Qwen2.5-VL-3B-size VLM, SAM ViT-B,
                                                                          # SD1.5-size IP2P UNet, 512x512, 20 steps
                                                                          # (CUDA when available; goal <= 9.2 s, CAMILA)

Runs the pack's node classes in-process, in the graph's order, with ComfyUI's own loaders,
InstructPixToPixConditioning, DualCFGGuider sampling and VAE decode. Random-weight VLMs answer
gibberish (so every instruction would be [NEG] and nothing patched): the VLM stage is timed for
real, and the downstream stages run on a manual plan with 2 of 3 instructions executable so the
attention patch is active, as it is with a real VLM. The generated IP2P checkpoint has the full
SD1.5 UNet and CLIP-L but a TAESD VAE, so the decode figure is lower than with the full VAE.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, load_pack

INSTRUCTIONS = "make the sky orange\nremove the pancakes from the plate\nmake the car red"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--size", type=int, default=None, help="image side (default 512 full, 128 tiny)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default 20 full, 4 tiny)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "contextedit_bench"))
    args = ap.parse_args()
    comfy_root = os.environ.get("COMFYUI_PATH")
    if not comfy_root or not os.path.isfile(os.path.join(comfy_root, "main.py")):
        sys.exit("set COMFYUI_PATH to a ComfyUI 0.8.0 checkout")
    size = args.size or (512 if args.full else 128)
    steps = args.steps or (20 if args.full else 4)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    load_pack()
    sys.path.insert(0, str(ROOT / "tests"))
    from host.inprocess import import_comfy, load_checkpoint, pack_module
    from host.tiny_checkpoints import IP2P_NAME, ensure_tiny_checkpoints
    from fixtures.tiny_models import make_tiny_qwen2_vl, make_tiny_sam_checkpoint

    comfy = import_comfy(comfy_root)
    import folder_paths
    import importlib

    ckpts = ensure_tiny_checkpoints(cache / "checkpoints", comfy_root)
    models = cache / "models"
    (models / "LLM").mkdir(parents=True, exist_ok=True)
    (models / "sams").mkdir(parents=True, exist_ok=True)
    if args.full:
        from check_latency import full_size_folder
        from segment_anything import sam_model_registry

        vlm_dir = full_size_folder(cache)
        sam_file = models / "sams" / "sam_vit_b_random.pth"
        if not sam_file.exists():
            torch.manual_seed(0)
            torch.save(sam_model_registry["vit_b"]().state_dict(), sam_file)
    else:
        vlm_dir = make_tiny_qwen2_vl(cache, family="qwen2_5_vl")
        sam_file = models / "sams" / "sam_tiny.pth"
        if not sam_file.exists():
            shutil.copy(make_tiny_sam_checkpoint(cache), sam_file)
    link = models / "LLM" / vlm_dir.name
    if not link.exists():
        link.symlink_to(vlm_dir)
    pack_module(comfy_root, "nodes.model_folders").register_model_folders()
    folder_paths.add_model_folder_path("LLM", str(models / "LLM"))
    folder_paths.add_model_folder_path("sams", str(models / "sams"))
    ex = pack_module(comfy_root, "nodes.executability.node")
    mk = pack_module(comfy_root, "nodes.masks.node")
    at = pack_module(comfy_root, "nodes.attention.node")
    ip2p_nodes = importlib.import_module("comfy_extras.nodes_ip2p")
    custom = importlib.import_module("comfy_extras.nodes_custom_sampler")
    mm = comfy.model_management
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def out(r):
        return r.args if hasattr(r, "args") else r.result

    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    model, clip, vae = load_checkpoint(comfy_root, ckpts[IP2P_NAME])
    (vlm,) = out(ex.LoadVLM.execute(model_name=vlm_dir.name, dtype="auto"))
    (sam,) = out(mk.LoadSAM.execute(sam_name=sam_file.name))
    half = size // 2
    manual, _, _ = out(ex.ManualPlan.execute(image=image, instructions=INSTRUCTIONS,
                                             boxes=f"[[0,0,{size},{half // 2}],[0,{half},{half},{size}],"
                                                   f"[{half},{half},{size},{size}]]", non_executable="2"))
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""), show_pbar=False)

    def run_once():
        t = {}
        sync()
        t0 = time.perf_counter()
        plans, report, *_ = out(ex.CheckInstructions.execute(image=image, instructions=INSTRUCTIONS, vlm=vlm,
                                                             max_new_tokens=args.max_new_tokens))
        sync()
        t["vlm"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        masks, union, preview = out(mk.DecodeMasks.execute(image=image, plan=manual, dilate=8, feather=4, sam=sam))
        sync()
        t["sam"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        patched, positive, _ = out(at.AttentionMask.execute(
            model=model, clip=clip, masks=masks, prompt="", mode="logits", routing="per instruction (FoI)",
            resolutions="32", start_percent=0.0, end_percent=1.0, strength=1.0, apply_to="text branch (auto)",
            plan=manual))
        pos, neg_img, latent = out(ip2p_nodes.InstructPixToPixConditioning.execute(
            positive=positive, negative=empty, vae=vae, pixels=image))
        guider = custom.Guider_DualCFG(patched)
        guider.set_conds(pos, neg_img, empty)
        guider.set_cfg(7.5, 1.5)
        sigmas = comfy.samplers.calculate_sigmas(patched.get_model_object("model_sampling"), "normal", steps)
        noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(42))
        samples = guider.sample(noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas, seed=42,
                                disable_pbar=True)
        sync()
        t["sampling"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = vae.decode(samples)
        sync()
        t["decode"] = time.perf_counter() - t0
        assert decoded.shape[1:3] == (size, size)
        return t

    run_once()  # warm-up: model loads, kernels
    timings = [run_once() for _ in range(3)]
    best = {k: min(t[k] for t in timings) for k in timings[0]}
    device = mm.get_torch_device()
    print(f"device={device} image={size}x{size} steps={steps} vlm={'Qwen2.5-VL-3B-size random' if args.full else 'tiny'}"
          f" ({args.max_new_tokens} new tokens) sam={'vit_b random' if args.full else 'tiny'} unet=SD1.5-size IP2P")
    for k, v in best.items():
        print(f"  {k:9s} {v:7.3f} s")
    print(f"  total     {sum(best.values()):7.3f} s   (best of 3 after a warm-up run)")


if __name__ == "__main__":
    main()
