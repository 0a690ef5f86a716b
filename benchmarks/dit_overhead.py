"""Sampling-time ratio patched / unpatched for the DiT confinement (FLUX.1 Kontext-style, Qwen-Image).

    COMFYUI_PATH=... python benchmarks/dit_overhead.py              # CPU, tiny models (goal <= 1.10)
    COMFYUI_PATH=... python benchmarks/dit_overhead.py --full       # FLUX.1-size random weights at
                         # 1024x1024 (19 double + 38 single blocks, bf16) on CUDA: seconds, peak memory

Models come from ComfyUI's own classes (tests/fixtures/tiny_dit.py; ``--full`` uses FLUX.1's
detected width). Sampling is ``comfy.sample.sample`` with Euler at cfg 1 (as Kontext is run), a
reference latent of the image's size, and two instructions with masks on the left and right
thirds. Two ratios are printed from ``--repeats`` interleaved runs each (the best run's and the
median run's; a tiny model samples in ~0.1 s, so single runs on a shared CPU scatter by +-30%):

- patch overhead: the confined model vs the unpatched model on the *same* conditioning
  ([image-only | instruction 1 | instruction 2]): the cost of the grouped attention alone;
- vs stock: the confined model on its segment conditioning vs the unpatched model on the prompt
  encoded as one text of ``--prompt-tokens`` tokens: what a user pays, longer text included.
"""

import argparse
import os
import statistics
import sys
import time

import torch
from _common import ROOT, load_pack


def tiny(family):
    from fixtures import tiny_dit

    return tiny_dit.tiny_flux() if family == "flux" else tiny_dit.tiny_qwen_image()


def full_flux(device):
    """FLUX.1-dev's shape (hidden 3072, 24 heads, 19 + 38 blocks), random bf16 weights on ``device``."""
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures.tiny_dit import flux_unet_config

    cfg = comfy.supported_models.Flux(flux_unet_config(hidden_size=3072, num_heads=24, axes_dim=[16, 56, 56],
                                                       depth=19, depth_single_blocks=38, context_in_dim=4096,
                                                       vec_in_dim=768))
    cfg.set_inference_dtype(torch.bfloat16, None)
    model = cfg.get_model({}, device=device)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0, 0.02) if p.dim() >= 2 else p.fill_(0.0)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="FLUX.1-size random weights at 1024x1024 (CUDA)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--latent", type=int, default=None, help="latent side (default 32 tiny, 128 full)")
    ap.add_argument("--segment-tokens", type=int, default=None, help="tokens per text segment (T5 pads to 256)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="tokens of the stock one-text prompt")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier timings on a shared machine)")
    args = ap.parse_args()
    if not args.full:
        torch.set_num_threads(args.threads)
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        sys.exit("set COMFYUI_PATH to a ComfyUI 0.8.0 checkout")
    load_pack()
    sys.path.insert(0, str(ROOT / "tests"))
    from host.inprocess import import_comfy

    if args.full:
        if not torch.cuda.is_available():
            sys.exit("--full needs a CUDA device")
        sys.path.insert(0, root)   # ComfyUI picks the GPU itself (import_comfy would force the CPU)
        import comfy.model_management
        import comfy.sample
        import comfy.samplers
        comfy = sys.modules["comfy"]
    else:
        comfy = import_comfy(root)
    from contextedit.attention_patches.comfy_dit_adapter import DiTConfinement
    from contextedit.attention_patches.joint_attention import TextSegments

    device = torch.device("cuda") if args.full else torch.device("cpu")
    side = args.latent or (128 if args.full else 32)
    seg_tokens = args.segment_tokens or (256 if args.full else 24)
    prompt_tokens = args.prompt_tokens or (256 if args.full else 32)
    families = ["flux"] if args.full else ["flux", "qwen_image"]
    sync = torch.cuda.synchronize if args.full else (lambda: None)
    for family in families:
        model = full_flux(device) if args.full else tiny(family)
        width = model.get_model_object("diffusion_model").txt_in.weight.shape[1]
        shape = (1, 16, 1, side, side) if family == "qwen_image" else (1, 16, side, side)
        g = torch.Generator().manual_seed(0)
        ref = torch.randn(shape, generator=g)
        segs = torch.randn(1, 3 * seg_tokens, width, generator=g)
        stock_ctx = torch.randn(1, prompt_tokens, width, generator=g)
        masks = torch.zeros(2, side * 8, side * 8)
        masks[0, :, : side * 8 // 3] = 1
        masks[1, :, -side * 8 // 3:] = 1
        patched = DiTConfinement(TextSegments.from_lengths(0, [seg_tokens] * 3), masks).install(model)
        noise = torch.randn(shape, generator=g)

        def cond(ctx):
            extra = {"reference_latents": [ref]}
            if family == "flux":
                extra.update(pooled_output=torch.zeros(1, model.model.diffusion_model.params.vec_in_dim),
                             guidance=3.5)
            return [[ctx, extra]]

        def timed(m, ctx):
            c = cond(ctx)
            sync()
            t0 = time.perf_counter()
            comfy.sample.sample(m, noise, args.steps, 1.0, "euler", "simple", c, c, ref.clone(), seed=0,
                                disable_pbar=True)
            sync()
            return time.perf_counter() - t0

        if args.full:
            torch.cuda.reset_peak_memory_stats()
        runs = {"unpatched same cond": (model, segs), "patched": (patched, segs), "unpatched stock": (model, stock_ctx)}
        for m, ctx in runs.values():
            timed(m, ctx)   # warm-up
        times = {k: [] for k in runs}
        peak = {}
        for _ in range(args.repeats):
            for name, (m, ctx) in runs.items():
                if args.full:
                    torch.cuda.reset_peak_memory_stats()
                times[name].append(timed(m, ctx))
                if args.full:
                    peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated() / 2**30)
        tokens = (side // 2) ** 2
        print(f"{family}: device={device} latent {side}x{side} ({tokens} image + {tokens} reference tokens), "
              f"3 segments x {seg_tokens} text tokens (stock prompt {prompt_tokens}), {args.steps} Euler steps, "
              f"{args.repeats} runs each")
        best = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        for name in runs:
            mem = f", peak {peak[name]:.2f} GiB" if args.full else ""
            print(f"  {name:20s} best {best[name]:.3f} s, median {median[name]:.3f} s{mem}")
        for label, t in (("best", best), ("median", median)):
            print(f"  ratio patched / unpatched (same conditioning), {label:6s}: "
                  f"{t['patched'] / t['unpatched same cond']:.3f}   (goal <= 1.10)")
            print(f"  ratio patched / stock (one-text prompt), {label:6s}:       "
                  f"{t['patched'] / t['unpatched stock']:.3f}")


if __name__ == "__main__":
    main()
