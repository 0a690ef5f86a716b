"""MAG-Edit's constraints compared on the tiny MAG scenario: how much of the attention the edit
words get inside the mask, before and after the latent optimisation, with the token ratio, the
spatial ratio or both as the optimised constraint.

    python benchmarks/mag_constraints.py                 # paper preset, 20 steps (10 optimised x 15)
    python benchmarks/mag_constraints.py --preset paper --steps 50 --full-forward   # the paper's schedule

The optimisation forwards stop after the last loss layer (``truncate_forward``; the loss and its
gradient are the same, tests/test_mag_edit.py::test_truncated_forward_records_the_same_maps);
``--full-forward`` runs the whole UNet as the paper preset does. It runs torch on one thread by
default (``--threads``): on a busy 2-core machine two threads per process were 27x slower.

The scenario is the engine tests' (tests/test_mag_edit.py): the tiny SD-like diffusers UNet with
random weights (tests/fixtures/tiny_mag.py), 16x16 latent (128 px), "a white cat on a table" ->
"a black dog on a table" (edit words "black dog"), the central 64x64 px square as the mask. A
random UNet says nothing about image quality; the table shows what each loss moves.

Columns (edit words = the target's new words; means over the 1/32 layers, heads and words):

* TR = token ratio: at masked pixels, the edit words' share of the pixel's attention
  (MAG-Edit compute_ca_TR's act) -- "the edit words' attention share inside the mask";
* SR = spatial ratio: the share of the edit words' attention mass that lies inside the mask
  (compute_ca_SR's act).

"before" is the first optimisation forward of step 0 (no update yet, the same for every row);
"step 0 after" the last forward of step 0 (after its iterations); "window end" the sampling
forward of the last optimised step. The "none" row runs the same schedule without optimisation.
"""

import argparse
import time

import torch
from _common import load_pack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper", choices=("paper", "fast"))
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps (the preset's windows are fractions of it)")
    ap.add_argument("--iterations", type=int, default=-1, help="per optimised step; -1 = the preset's")
    ap.add_argument("--full-forward", action="store_true", help="do not truncate the optimisation forwards")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load_pack()
    from contextedit.attention_patches.controller import LayerSelector
    from contextedit.nodes.mag_edit.denoiser import DiffusersDenoiser
    from contextedit.nodes.mag_edit.inversion import CaptureSpec, ddim_schedule, invert
    from contextedit.nodes.mag_edit.mag import mag_edit, preset
    from contextedit.nodes.mag_edit.prompts import prepare_prompts
    from fixtures.tiny_mag import (
        TableEncoder,
        WordTokenizer,
        sd_alphas_cumprod,
        sd_like_unet,
    )

    torch.manual_seed(0)
    den = DiffusersDenoiser(sd_like_unet(), sd_alphas_cumprod())
    tok = WordTokenizer()
    enc = TableEncoder(tok)
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1.0
    prompts = prepare_prompts(tok, enc, "a white cat on a table", "a black dog on a table")

    over = {"steps": args.steps, "ratio_target": None, "truncate_forward": not args.full_forward}
    if args.iterations >= 0:
        over["iterations"] = args.iterations
    base = preset(args.preset, **over)
    counts = base.step_counts()
    # one inversion shared by every row (same prompts, schedule and capture windows)
    sigmas = ddim_schedule(den.sigma_table, base.steps)
    capture = CaptureSpec(counts["cross"], counts["self_"], LayerSelector(downscales=tuple(base.cross_downscales)),
                          LayerSelector(downscales=tuple(base.self_downscales), cross=False, self_attn=True))
    with den.autograd_ready():
        source = invert(den, x0, prompts.source_context, prompts.uncond_context, sigmas, base.inversion,
                        base.guidance, capture, null_text_iterations=base.null_text_iterations,
                        null_text_lr=base.null_text_lr, null_text_epsilon=base.null_text_epsilon)

    last = counts["optimize"] - 1
    print(f"tiny MAG scenario, preset {args.preset} at {base.steps} steps: steps 0..{last} optimised x "
          f"{base.iterations} iterations, scale {base.scale}, {base.inversion} inversion, no early stop, "
          f"{'full' if args.full_forward else 'truncated'} optimisation forwards")
    print()
    print("| constraint | TR before | TR step 0 after | TR window end | SR before | SR step 0 after "
          "| SR window end | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [("none", {"iterations": 0}), ("token ratio", {"constraint": "token"}),
            ("spatial ratio", {"constraint": "spatial"}), ("both", {"constraint": "both"})]
    for label, kw in rows:
        cfg = preset(args.preset, **over, **kw)
        t = time.perf_counter()
        r = mag_edit(den, x0, mask, prompts, cfg, source=source)
        seconds = time.perf_counter() - t
        h0 = r.history[0]

        def cell(values, index):
            return f"{values[index]:.3f}" if values else "-"

        print(f"| {label} | {cell(h0.ratios, 0)} | {cell(h0.ratios, -1)} | {r.history[last].ratio_after:.3f} "
              f"| {cell(h0.spatial_ratios, 0)} | {cell(h0.spatial_ratios, -1)} "
              f"| {r.history[last].spatial_after:.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
