"""Composition error of the Attention Mask with another pack's attention replace (issue 22 §2):
soft mask edges (the default before issue 22) vs binary masks at each layer's grid (the default now).

One random cross-attention layer shaped like SD1.5's 1/32 layers (16x16 queries, 77 tokens, 8 heads x
160, random linear to_k/to_v), two instructions (tokens 1-5 and 7-12) whose 512 px masks cut through
grid cells (mask 1: the left 264 px; mask 2: the top-right 248 x 200 px), CAMILA's per-token routing.
Two other packs replace the attention inside ours: a scaling pack (0.5 x attention) and a
temperature pack (logits x 2). The wanted result is the other pack's operation applied to our
modulated attention, 0.5 * softmax((X*M + Y*(1-M))/sqrt d) V' and softmax(2 (X*M + Y*(1-M))/sqrt d) V'
(V' mixed like the scores); for a binary M that is the pack on our modified keys/values. Prints the
largest |composed - wanted| over all pixels, and how much the composed output moves between
M = 0 and M = 0.001 (the soft path's discontinuity) next to how much our formula alone moves.

    python benchmarks/mask_edges_composition.py [--seeds 3]
"""

import argparse
import math

import torch

from _common import load_pack

HEADS, D, TOKENS, CTX, SIDE = 8, 160, 77, 768, 16


def attention(q, k, v, temperature=1.0, scale=1.0):
    b, n, hd = q.shape
    d = hd // HEADS
    qh, kh, vh = (t.reshape(b, -1, HEADS, d).transpose(1, 2) for t in (q, k, v))
    probs = (temperature * (qh @ kh.transpose(-1, -2)) / math.sqrt(d)).softmax(dim=-1)
    return scale * (probs @ vh).transpose(1, 2).reshape(b, n, hd)


def wanted(q, k, v, k0, v0, weight, temperature, scale):
    """The pack's operation on our formula: softmax(t (X*M + Y*(1-M))/sqrt d) (M V + (1-M) V0) * a."""
    b, n, hd = q.shape
    d = hd // HEADS
    out = torch.zeros(b, n, hd)
    for h in range(HEADS):
        s = slice(h * d, (h + 1) * d)
        x = q[..., s] @ k[..., s].transpose(-1, -2) / math.sqrt(d)
        y = q[..., s] @ k0[..., s].transpose(-1, -2) / math.sqrt(d)
        p = (temperature * (weight * x + (1 - weight) * y)).softmax(dim=-1)
        out[..., s] = (p * weight) @ v[..., s] + (p * (1 - weight)) @ v0[..., s]
    return scale * out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    load_pack()
    from contextedit.attention_patches import MaskModulation
    from contextedit.attention_patches.controller import AttentionCall

    masks = torch.zeros(2, 512, 512)
    masks[0, :, :264] = 1.0
    masks[1, :200, 264:] = 1.0
    sets = [list(range(1, 6)), list(range(7, 13))]
    special = [0] + list(range(13, TOKENS))
    packs = {"scaling (0.5 x attention)": dict(temperature=1.0, scale=0.5),
             "temperature (logits x 2)": dict(temperature=2.0, scale=1.0)}
    errors = {(p, e): [] for p in packs for e in ("soft", "binary")}
    jumps = {p: [] for p in packs}
    formula_jump = []
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)
        wk = torch.randn(CTX, HEADS * D, generator=g) / CTX ** 0.5
        wv = torch.randn(CTX, HEADS * D, generator=g) / CTX ** 0.5
        prompt, empty = torch.randn(2, 1, TOKENS, CTX, generator=g)
        q = torch.randn(1, SIDE * SIDE, HEADS * D, generator=g)
        k, v, k0, v0 = prompt @ wk, prompt @ wv, empty @ wk, empty @ wv
        for pname, pk in packs.items():
            for edges in ("soft", "binary"):
                ctrl = MaskModulation(masks, empty, token_sets=sets, special_tokens=special, prompt_context=prompt,
                                      branches=[0], edges=edges)
                call = AttentionCall(q=q, k=k, v=v, heads=HEADS, is_cross=True, height=SIDE, width=SIDE,
                                     latent_height=64, latent_width=64, place="x", branches=[0],
                                     attend=lambda a, b_, c, pk=pk: attention(a, b_, c, **pk),
                                     project_context=lambda c: (c @ wk, c @ wv))
                got = ctrl(call)
                weight, _, _ = ctrl.token_masks(ctrl._pixel_masks(SIDE, SIDE, "cpu"), TOKENS)
                want = torch.cat([wanted(q[:, p:p + 1], k, v, k0, v0, weight[p], **pk) for p in range(SIDE * SIDE)],
                                 dim=1)
                errors[pname, edges].append(float((got - want).abs().max()))
            # the soft path's discontinuity: one pixel row at M = 0 vs M = 0.001 (one instruction)
            outs, mine = [], []
            for m in (0.0, 0.001):
                ctrl = MaskModulation(torch.full((1, SIDE, SIDE), m), empty, prompt_context=prompt, branches=[0],
                                      edges="soft")
                call = AttentionCall(q=q, k=k, v=v, heads=HEADS, is_cross=True, height=SIDE, width=SIDE,
                                     latent_height=64, latent_width=64, place="x", branches=[0],
                                     attend=lambda a, b_, c, pk=pk: attention(a, b_, c, **pk),
                                     project_context=lambda c: (c @ wk, c @ wv))
                outs.append(ctrl(call))
                mine.append(ctrl.modulate(q, k, v, k0, v0, HEADS, torch.full((1, SIDE * SIDE), m)))
            jumps[pname].append(float((outs[0] - outs[1]).abs().max()))
            formula_jump.append(float((mine[0] - mine[1]).abs().max()))
    n = args.seeds
    print(f"largest |composed - pack applied to our formula| over 16x16 pixels, max over {n} seeds")
    print("| other pack | soft edges (before) | binary masks (default now) |")
    print("|---|---|---|")
    for pname in packs:
        print(f"| {pname} | {max(errors[pname, 'soft']):.3g} | {max(errors[pname, 'binary']):.3g} |")
    print(f"\nsoft edges: composed output at M = 0 vs M = 0.001 (max over pixels and seeds): "
          + ", ".join(f"{p}: {max(j):.3g}" for p, j in jumps.items())
          + f"; our formula alone: {max(formula_jump):.3g}")


if __name__ == "__main__":
    main()
