"""How far CAMILA's per-token mask is from the per-pixel alternatives, on a two-instruction case.

Prints ||other - per_token|| / ||per_token|| over the pixels of mask 0 and of mask 1, for
FoI's routing (the pack's default before issue 12: one M per pixel, other instructions' tokens
hidden) and for a plain per-pixel M (the union of the masks for every token). One random
cross-attention layer shaped like SD1.5's 1/32 layers (16x16 queries, 77 tokens, 8 heads x 160),
random linear to_k/to_v, and two overlapping masks (left 9/16 and top-right quarter), instruction
tokens 1-5 and 7-12, start/end/padding elsewhere. Runs on CPU in a second.

    python benchmarks/per_token_vs_per_pixel.py [--seeds 5]
"""

import argparse

import torch

from _common import load_pack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    load_pack()
    from contextedit.attention_patches import MaskModulation, TokenRouting

    heads, d, tokens, ctx_dim, side = 8, 160, 77, 768, 16
    masks = torch.zeros(2, side, side)
    masks[0, :, :9] = 1.0
    masks[1, : side // 2, side // 2:] = 1.0
    flat = masks.reshape(2, -1)
    sets = [list(range(1, 6)), list(range(7, 13))]
    special = [0] + list(range(13, tokens))
    in_0, in_1 = flat[0] > 0, flat[1] > 0
    rows = {"foi": ([], []), "per-pixel": ([], [])}
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)
        wk = torch.randn(ctx_dim, heads * d, generator=g) / ctx_dim ** 0.5
        wv = torch.randn(ctx_dim, heads * d, generator=g) / ctx_dim ** 0.5
        prompt, empty = torch.randn(2, 1, tokens, ctx_dim, generator=g)
        q = torch.randn(1, side * side, heads * d, generator=g)
        k, v, k0, v0 = prompt @ wk, prompt @ wv, empty @ wk, empty @ wv
        common = dict(special_tokens=special, prompt_context=prompt)
        per_token = MaskModulation(masks, empty, token_sets=sets, **common).modulate(q, k, v, k0, v0, heads, flat)
        foi = MaskModulation(masks, empty, token_sets=sets, routing=TokenRouting.FOI, **common).modulate(
            q, k, v, k0, v0, heads, flat)
        per_pixel = MaskModulation(masks, empty, **common).modulate(q, k, v, k0, v0, heads, flat)
        for name, other in (("foi", foi), ("per-pixel", per_pixel)):
            for i, sel in enumerate((in_0, in_1)):
                diff = (other[:, sel] - per_token[:, sel]).norm() / per_token[:, sel].norm()
                rows[name][i].append(float(diff))
    print(f"relative difference from the per-token mask, mean over {args.seeds} seeds")
    print("| compared with | mask-0 pixels | mask-1 pixels |")
    print("|---|---|---|")
    for name, (r0, r1) in rows.items():
        print(f"| {name} | {sum(r0) / len(r0):.3f} | {sum(r1) / len(r1):.3f} |")


if __name__ == "__main__":
    main()
