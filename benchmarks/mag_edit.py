"""MAG-Edit cost: time ratios fast preset / plain 50-step DDIM sampling, and paper / fast.

    python benchmarks/mag_edit.py            # CPU, tiny random UNet (ratios are what matter)
    python benchmarks/mag_edit.py --full     # SD1.5-size random weights at 512 px (CUDA when available):
                                             # seconds and peak memory per preset

"Plain DDIM" is 50 classifier-free-guided steps (the [uncond, cond] pair per step) through the
same denoiser with no controller (the UNet's own attention processors). Each preset runs at its
own step count (paper 50, fast 30; ``--preset-steps N`` overrides both) and includes its
inversion. Every entry is the best of ``--repeats`` runs.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_pack():
    spec = importlib.util.spec_from_file_location("contextedit", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["contextedit"] = mod
    spec.loader.exec_module(mod)


def build(full, device):
    from diffusers import UNet2DConditionModel

    if full:
        cfg = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                   block_out_channels=(320, 640, 1280, 1280),
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                   cross_attention_dim=768, attention_head_dim=8)
        ctx_dim, latent_hw = 768, 64
    else:
        cfg = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(16, 16, 32, 32),
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                   cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
        ctx_dim, latent_hw = 32, 16
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).eval().to(device)
    return unet, ctx_dim, latent_hw


class Tok:
    """word-level stand-in for ComfyUI's tokenizer (77 positions, word id 0 = special)"""

    def __init__(self):
        self.vocab = {}

    def __call__(self, text):
        words = text.split()
        chunk = [(0, 1.0, 0)] + [(self.vocab.setdefault(w, 2 + len(self.vocab)), 1.0, i + 1)
                                 for i, w in enumerate(words)] + [(1, 1.0, 0)]
        return {"l": [chunk + [(1, 1.0, 0)] * (77 - len(chunk))]}


def scenario(unet, ctx_dim, hw, device):
    """The MAG scenario every MAG benchmark times (this script and suite.py): a denoiser over
    ``unet`` with SD's schedule, word-level prompts "a white cat" -> "a black dog", a random source
    latent of side ``hw`` and a centred square mask. Returns (denoiser, prompts, x0, mask, plain)
    where ``plain(steps)`` is CFG-guided DDIM from noise with the UNet's own attention processors."""
    from contextedit.nodes.mag_edit.denoiser import DiffusersDenoiser
    from contextedit.nodes.mag_edit.inversion import cfg_eps, ddim_schedule
    from contextedit.nodes.mag_edit.prompts import prepare_prompts

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    den = DiffusersDenoiser(unet, torch.cumprod(1 - betas, 0).float())
    tok = Tok()
    table = torch.randn(256, ctx_dim, generator=torch.Generator().manual_seed(1))

    def enc(text):
        ids = torch.tensor([t for t, _, _ in tok(text)["l"][0]])
        return table[ids].unsqueeze(0).to(device)

    prompts = prepare_prompts(tok, enc, "a white cat on a table", "a black dog on a table")
    x0 = torch.randn(1, 4, hw, hw, generator=torch.Generator().manual_seed(2)).to(device)
    mask = torch.zeros(1, hw * 8, hw * 8)
    mask[:, hw * 2:hw * 6, hw * 2:hw * 6] = 1.0

    def plain(steps):
        sig = ddim_schedule(den.sigma_table, steps)
        z = x0 * float(sig[0])
        with torch.no_grad():
            for i in range(steps):
                z = z + (float(sig[i + 1]) - float(sig[i])) * cfg_eps(den, z, float(sig[i]), prompts.target_context,
                                                                      prompts.uncond_context, 7.5)
        return z

    return den, prompts, x0, mask, plain


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--steps", type=int, default=50, help="steps of the plain DDIM baseline")
    ap.add_argument("--preset-steps", type=int, default=0,
                    help="override every preset's step count (0 = each preset's own: paper 50, fast 30)")
    ap.add_argument("--presets", default="fast,paper")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per entry")
    args = ap.parse_args()
    load_pack()
    from contextedit.nodes.mag_edit.mag import mag_edit, preset

    device = "cuda" if (args.full and torch.cuda.is_available()) else "cpu"
    unet, ctx_dim, hw = build(args.full, device)
    den, prompts, x0, mask, plain_steps = scenario(unet, ctx_dim, hw, device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def plain():  # CFG-guided DDIM from noise, the UNet's own attention processors
        return plain_steps(args.steps)

    def timed(fn):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        fn()
        sync()
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else float("nan")
        return time.perf_counter() - t, peak

    jobs = {"plain DDIM": plain}
    for name in args.presets.split(","):
        cfg = preset(name, **({"steps": args.preset_steps} if args.preset_steps else {}))
        jobs[f"{name} ({cfg.steps} steps)"] = (lambda c: lambda: mag_edit(den, x0, mask, prompts, c))(cfg)
        den.calls = 0
        jobs[f"{name} ({cfg.steps} steps)"]()  # warm-up, and the call count
        print(f"{name} ({cfg.steps} steps): {den.calls} UNet calls, {cfg.step_counts()['optimize']} optimised "
              f"steps x <= {cfg.iterations} iterations")
    plain()  # warm-up
    runs = {k: [] for k in jobs}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every entry
        for k, fn in jobs.items():
            runs[k].append(timed(fn))
    results = {k: (min(r[0] for r in v), max(r[1] for r in v)) for k, v in runs.items()}
    print(f"device={device} model={'SD1.5-size 512px' if args.full else 'tiny 128px'} "
          f"threads={torch.get_num_threads()} best of {args.repeats}")
    for k, (s, peak) in results.items():
        mem = f"peak {peak:.2f} GiB" if peak == peak else "peak GPU memory n/a on CPU"
        print(f"  {k:22s} {s:8.2f} s   {mem}")
    base = results["plain DDIM"][0]
    times = {k.split(" ")[0]: v[0] for k, v in results.items()}
    if "fast" in times:
        print(f"  fast / plain {args.steps}-step DDIM = {times['fast'] / base:.2f}")
    if "fast" in times and "paper" in times:
        print(f"  paper / fast = {times['paper'] / times['fast']:.2f}")


if __name__ == "__main__":
    main()
