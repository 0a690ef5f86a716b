"""Sampling-time ratio patched / unpatched for the attention-mask patch (CAMILA modulation).

    python benchmarks/attention_mask_overhead.py            # CPU, tiny UNet (goal <= 1.10)
    python benchmarks/attention_mask_overhead.py --full     # SD1.5-size random weights, 512x512, 20 steps
                                                           # (on CUDA when available)
    COMFYUI_PATH=... python benchmarks/attention_mask_overhead.py --comfy [--full]
                            # the same through ComfyUI: KSampler-style CFG sampling of the generated
                            # SD1.5-size checkpoint, patched by the Attention Mask node vs unpatched

Each "step" is one UNet call on the CFG pair (text chunk + negative chunk), as a sampler makes it.
The patched run modulates the text chunk in the 1/32 layers with two instruction masks. Two
baselines are timed: diffusers' own attention processors, and our processors with a pass-through
controller (which isolates the cost of the modulation itself from processor differences).
"""

import argparse
import time

import torch

from _common import load_pack


def build_unet(full, device, dtype):
    from diffusers import UNet2DConditionModel

    if full:  # SD1.5 architecture, random weights
        cfg = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                   block_out_channels=(320, 640, 1280, 1280),
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                   cross_attention_dim=768, attention_head_dim=8)
    else:
        cfg = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(32, 32, 64, 64),
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                   cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    torch.manual_seed(0)
    return UNet2DConditionModel(**cfg).to(device, dtype).eval(), cfg


def sample(unet, host, x, ctx, steps, sync):
    t = torch.linspace(999, 0, steps).long()
    with torch.no_grad():
        for i in range(steps):
            eps = unet(torch.cat([x, x]), t[i].expand(2 * x.shape[0]).to(x.device), encoder_hidden_states=ctx).sample
            x = x - 0.01 * eps[: x.shape[0]]
    sync()
    return x


def comfy_main(args):
    from _common import comfy_tiny_sd15, half_masks
    from host.inprocess import pack_module

    root, comfy, (model, clip, _) = comfy_tiny_sd15()
    node = pack_module(root, "nodes.attention.node")
    side = 64 if args.full else 16
    masks = half_masks(side)
    res = node.AttentionMask.execute(model=model, clip=clip, masks=masks, prompt="make it autumn\nadd snow",
                                     mode="logits", routing="per instruction (FoI)", resolutions="32",
                                     start_percent=0.0, end_percent=1.0, strength=1.0, apply_to="text branch (auto)")
    patched, positive, _ = res.args
    negative = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"), show_pbar=False)
    latent = torch.zeros(1, 4, side, side)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def timed(m):
        sync()
        t0 = time.perf_counter()
        comfy.sample.sample(m, noise, args.steps, 7.0, "euler", "normal", positive, negative, latent, seed=0,
                            disable_pbar=True)
        sync()
        return time.perf_counter() - t0

    timed(model), timed(patched)
    plain, pat = [], []
    for _ in range(args.repeats):
        plain.append(timed(model))
        pat.append(timed(patched))
    print(f"ComfyUI device={comfy.model_management.get_torch_device()} SD1.5-size UNet latent={side}x{side} "
          f"steps={args.steps} cfg=7 repeats={args.repeats}")
    print(f"  unpatched best {min(plain):.3f} s, patched best {min(pat):.3f} s, "
          f"ratio patched/unpatched {min(pat) / min(plain):.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", action="store_true", help="measure through ComfyUI (needs COMFYUI_PATH)")
    ap.add_argument("--full", action="store_true", help="SD1.5-size UNet at 512x512")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    load_pack()
    if args.comfy:
        return comfy_main(args)
    from contextedit.attention_patches import AttentionController, MaskModulation
    from contextedit.attention_patches.diffusers_adapter import DiffusersHost

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet, cfg = build_unet(args.full, device, dtype)
    side = 64 if args.full else 32
    ctx_dim = cfg["cross_attention_dim"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, side, side, generator=g).to(device, dtype)
    prompt = torch.randn(1, 77, ctx_dim, generator=g).to(device, dtype)
    negative = torch.randn(1, 77, ctx_dim, generator=g).to(device, dtype)
    empty = torch.randn(1, 77, ctx_dim, generator=g).to(device, dtype)
    ctx = torch.cat([prompt, negative])
    masks = torch.zeros(2, side * 8, side * 8)
    masks[0, :, : side * 4] = 1
    masks[1, :, side * 4:] = 1
    ctrl = MaskModulation(masks, empty, token_sets=[[1, 2, 3], [4, 5]], special_tokens=[0] + list(range(6, 77)),
                          prompt_context=prompt)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    passthrough = AttentionController()

    def timed(controller):
        host = DiffusersHost(unet, branches=[0, 1]).attach(controller) if controller is not None else None
        start = time.perf_counter()
        sample(unet, None, x, ctx, args.steps, sync)
        elapsed = time.perf_counter() - start
        if host is not None:
            host.detach()
        return elapsed

    runs = {"diffusers processors": None, "pass-through controller": passthrough, "patched": ctrl}
    times = {k: [] for k in runs}
    for c in runs.values():  # warm-up
        timed(c)
    ctrl.calls_modified = 0
    for _ in range(args.repeats):  # interleaved so drift affects all alike
        for k, c in runs.items():
            times[k].append(timed(c))
    med = {k: min(v) for k, v in times.items()}  # best of the repeats: least disturbed by other load
    name = "SD1.5-size" if args.full else "tiny"
    print(f"device={device} dtype={dtype} unet={name} latent={side}x{side} steps={args.steps} repeats={args.repeats}")
    for k, v in med.items():
        print(f"  {k:26s} best {v:.3f} s")
    print(f"ratio patched / pass-through controller: {med['patched'] / med['pass-through controller']:.3f}")
    print(f"ratio patched / diffusers processors:    {med['patched'] / med['diffusers processors']:.3f}")
    print(f"modulated layer calls per run: {ctrl.calls_modified // args.repeats}")


if __name__ == "__main__":
    main()
