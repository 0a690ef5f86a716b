"""Instructions that cannot hear each other: per-token vs per-segment routing (issue 22 §3).

Two instructions, mask 1 = the left half, mask 2 = the right half; only instruction 2's text
changes ("turn the dog into a cat" -> "turn the car into a boat"). Prints the mean |change| inside
mask 1 (and, for reference, inside mask 2):

* first patched layer (input 7, a 1/32 layer), the SAME queries for both texts: the controller's
  output, keys/values projected from the node's positive conditioning;
* end to end: the final latent of KSampler (euler, cfg 5, seed 0), with every cross-attention layer
  patched (resolutions 8,16,32,64) and with the node's default resolutions (32).

The tiny random-weight SD1.5 test checkpoint through ComfyUI, in-process, on the CPU:

    COMFYUI_PATH=... CONTEXTEDIT_TEST_CACHE=... python benchmarks/routing_isolation.py [--side 16] [--steps 4]
"""

import argparse

import torch

from _common import comfy_tiny_sd15, half_masks

PROMPTS = ("make the hat red\nturn the dog into a cat", "make the hat red\nturn the car into a boat")
ROUTINGS = ("per token (CAMILA)", "per segment (encoded apart)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=16, help="latent side (image side / 8)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=5.0)
    args = ap.parse_args()
    root, comfy, (model, clip, _) = comfy_tiny_sd15()
    from host.inprocess import pack_module

    node = pack_module(root, "nodes.attention.node")
    adapter = pack_module(root, "attention_patches.comfy_adapter")
    ctl = pack_module(root, "attention_patches.controller")
    side = args.side
    masks = half_masks(side)
    grid = side // 4                               # the 1/32 layers' grid
    layer = adapter.attn2_layers(model.get_model_object("diffusion_model"))[("input", 7, 0)]
    heads = 8
    q = torch.randn(1, grid * grid, layer.to_q.weight.shape[0], generator=torch.Generator().manual_seed(3))
    in_first = torch.zeros(grid, grid, dtype=torch.bool)
    in_first[:, : grid // 2] = True
    in_first = in_first.reshape(-1)

    def plain(q_, k_, v_):
        b, n, hd = q_.shape
        qh, kh, vh = (t.reshape(b, -1, heads, hd // heads).transpose(1, 2) for t in (q_, k_, v_))
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, hd)

    def patch(text, routing, resolutions):
        out = node.AttentionMask.execute(model=model, clip=clip, masks=masks, prompt=text, mode="logits",
                                         routing=routing, resolutions=resolutions, start_percent=0.0,
                                         end_percent=1.0, strength=1.0, apply_to="text branch (auto)")
        return out.args[:2]

    def controller_of(patched):
        fn = next(f for fs in patched.wrappers["diffusion_model"].values() for f in fs)
        return next(c.cell_contents for c in fn.__closure__ if hasattr(c.cell_contents, "places_modified"))

    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""), show_pbar=False)
    latent = torch.zeros(1, 4, side, side)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for routing in ROUTINGS:
        first = []
        for text in PROMPTS:
            patched, positive = patch(text, routing, "32")
            ctx = positive[0][0]
            with torch.no_grad():
                call = ctl.AttentionCall(q=q, k=layer.to_k(ctx), v=layer.to_v(ctx), heads=heads, is_cross=True,
                                         height=grid, width=grid, latent_height=side, latent_width=side,
                                         place=("input", 7, 0), branches=[0], attend=plain,
                                         project_context=lambda c: (layer.to_k(c), layer.to_v(c)))
                first.append(controller_of(patched)(call))
        d = (first[0] - first[1]).abs()
        row = {"routing": routing, "layer_in": float(d[:, in_first].mean()), "layer_out": float(d[:, ~in_first].mean())}
        for name, resolutions in (("every", "8,16,32,64"), ("default", "32")):
            outs = []
            for text in PROMPTS:
                patched, positive = patch(text, routing, resolutions)
                outs.append(comfy.sample.sample(patched, noise, args.steps, args.cfg, "euler", "normal", positive,
                                                negative, latent, seed=0, disable_pbar=True))
            d = (outs[0] - outs[1]).abs()
            row[f"{name}_in"] = float(d[..., : side // 2].mean())
            row[f"{name}_out"] = float(d[..., side // 2:].mean())
        rows.append(row)
        print(row, flush=True)
    print(f"\ntiny SD1.5 test checkpoint, CPU, {side * 8} px, euler {args.steps} steps, cfg {args.cfg}; mean |change| "
          "when only instruction 2 changes")
    print("| routing | first layer, mask 1 | first layer, mask 2 | every layer patched: final latent mask 1 | "
          "mask 2 | default resolutions (32): mask 1 | mask 2 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['routing']} | {r['layer_in']:.4g} | {r['layer_out']:.4g} | {r['every_in']:.4g} | "
              f"{r['every_out']:.4g} | {r['default_in']:.4g} | {r['default_out']:.4g} |")
    tok, seg = rows
    for key, what in (("layer_in", "first layer"), ("every_in", "end to end, every layer"),
                      ("default_in", "end to end, default resolutions")):
        factor = tok[key] / seg[key] if seg[key] > 0 else float("inf")
        print(f"factor per token / per segment, mask 1, {what}: {factor:.3g}")


if __name__ == "__main__":
    main()
