"""Sampling-time ratio patched / unpatched for the image stream, and the image term's magnitude.

    python benchmarks/image_stream_overhead.py            # CPU, tiny diffusers UNet
    python benchmarks/image_stream_overhead.py --full     # SD1.5-size random weights, 512x512 (CUDA when available)
    COMFYUI_PATH=... python benchmarks/image_stream_overhead.py --comfy [--full]
                            # through ComfyUI: KSampler CFG sampling of the generated tiny SD1.5 checkpoint,
                            # unpatched / Attention Mask / Image Stream / both (the node, a tiny CLIP vision
                            # and an IP-Adapter-format file shaped for that checkpoint)

Each diffusers "step" is one UNet call on the CFG pair. Timed: diffusers' own processors, our
processors with a pass-through controller, the image stream, CAMILA's mask modulation, and both
stacked (the image term added to the modulated attention). Ratios use the best of the repeats.

Magnitude: at lambda = 1 the script prints, per cross-attention layer, ||lambda * Attn(Q,K_img,V_img)|| /
||Attn(Q,K_txt,V_txt)|| averaged over layers, with to_k_ip / to_v_ip initialised as IP-Adapter
initialises them for training (copies of the layer's to_k / to_v) in the diffusers mode, and drawn
like the checkpoint's own weights in the ComfyUI mode. This is how the default lambda was chosen.
"""

import argparse
import dataclasses
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


class Stacked:
    """outer(call) with call.attend = inner: how two patches stack (ComfyUI does this by wrapping)."""

    def __init__(self, outer, inner):
        self.outer, self.inner = outer, inner

    def __call__(self, call):
        def attend(q, k, v):
            return self.inner(dataclasses.replace(call, q=q, k=k, v=v))

        return self.outer(dataclasses.replace(call, attend=attend))


class Magnitude:
    """Pass-through that records ||term|| / ||inner|| of an ImageStream per cross-attention call."""

    def __init__(self, stream):
        self.stream, self.ratios = stream, []

    def __call__(self, call):
        inner = call.attend(call.q, call.k, call.v)
        if self.stream.acts_on(call):
            term = self.stream.weight_at(call.place) * self.stream.image_term(call)
            self.ratios.append(float(term.float().norm() / inner.float().norm()))
        return inner


def diffusers_main(args):
    from contextedit.attention_patches import AttentionController, MaskModulation
    from contextedit.attention_patches.diffusers_adapter import DiffusersHost, attention_modules
    from contextedit.attention_patches.image_stream import diffusers_ip_order
    from contextedit.nodes.image_stream.ipadapter_format import from_state_dict
    from contextedit.nodes.image_stream.stream_patch import build_image_stream

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

    # an IP-Adapter whose to_k_ip / to_v_ip start as the layer's to_k / to_v (IP-Adapter's training init)
    modules = attention_modules(unet)
    by_name = dict(modules)
    places = diffusers_ip_order(modules)
    widths = [tuple(by_name[p].to_k.weight.shape) for p in places]
    embed = 1024
    sd = {"image_proj.proj.weight": torch.randn(4 * ctx_dim, embed, generator=g) * embed ** -0.5,
          "image_proj.proj.bias": torch.zeros(4 * ctx_dim), "image_proj.norm.weight": torch.ones(ctx_dim),
          "image_proj.norm.bias": torch.zeros(ctx_dim)}
    for i, p in enumerate(places):
        sd[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = by_name[p].to_k.weight.detach().float().cpu().clone()
        sd[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = by_name[p].to_v.weight.detach().float().cpu().clone()
    weights = from_state_dict(sd, "benchmark")
    embeds = torch.randn(1, embed, generator=g)
    stream = build_image_stream(weights, places, widths, embeds)

    masks = torch.zeros(2, side * 8, side * 8)
    masks[0, :, : side * 4] = 1
    masks[1, :, side * 4:] = 1
    camila = MaskModulation(masks, empty, token_sets=[[1, 2, 3], [4, 5]], special_tokens=[0] + list(range(6, 77)),
                            prompt_context=prompt)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(controller):
        t = torch.linspace(999, 0, args.steps).long()
        host = DiffusersHost(unet, branches=[0, 1]).attach(controller) if controller is not None else None
        start = time.perf_counter()
        with torch.no_grad():
            y = x
            for i in range(args.steps):
                eps = unet(torch.cat([y, y]), t[i].expand(2).to(device), encoder_hidden_states=ctx).sample
                y = y - 0.01 * eps[:1]
        sync()
        elapsed = time.perf_counter() - start
        if host is not None:
            host.detach()
        return elapsed

    runs = {"diffusers processors": None, "pass-through controller": AttentionController(), "image stream": stream,
            "attention mask": camila, "mask + image stream": Stacked(stream, camila)}
    times = {k: [] for k in runs}
    for c in runs.values():
        run(c)
    for _ in range(args.repeats):  # interleaved so drift affects all alike
        for k, c in runs.items():
            times[k].append(run(c))
    best = {k: min(v) for k, v in times.items()}
    name = "SD1.5-size" if args.full else "tiny"
    print(f"device={device} dtype={dtype} unet={name} latent={side}x{side} steps={args.steps} repeats={args.repeats} "
          f"cross-attention layers={len(places)}")
    for k, v in best.items():
        print(f"  {k:26s} best {v:.3f} s")
    print(f"ratio image stream / pass-through controller:  {best['image stream'] / best['pass-through controller']:.3f}")
    print(f"ratio image stream / diffusers processors:     {best['image stream'] / best['diffusers processors']:.3f}")
    print(f"ratio mask + stream / attention mask alone:    {best['mask + image stream'] / best['attention mask']:.3f}")

    probe = Magnitude(stream)
    with torch.no_grad(), DiffusersHost(unet, branches=[0, 1]).attach(probe):
        unet(torch.cat([x, x]), torch.tensor([500, 500], device=device), encoder_hidden_states=ctx)
    r = torch.tensor(probe.ratios)
    print(f"||lambda*image term|| / ||text attention|| at lambda=1: mean {r.mean():.3f}, "
          f"min {r.min():.3f}, max {r.max():.3f} over {len(r)} layer calls")


def comfy_main(args):
    import json
    import tempfile
    from pathlib import Path

    from _common import comfy_tiny_sd15, half_masks

    root, _, (model, clip, _) = comfy_tiny_sd15()
    import comfy.clip_vision
    import folder_paths
    from fixtures.tiny_ipadapter import SD15_CONTEXT, TINY_SD15_WIDTHS, write_ipadapter
    from host.inprocess import pack_module

    work = Path(tempfile.mkdtemp(prefix="contextedit_stream_bench_"))
    write_ipadapter(work / "ip-adapter_sd15.safetensors", TINY_SD15_WIDTHS, SD15_CONTEXT, 24, seed=11)
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(work)], {".safetensors"})
    config = {"hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 32, "intermediate_size": 64,
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
              "num_channels": 3, "num_hidden_layers": 2, "patch_size": 16, "projection_dim": 24}
    (work / "cv.json").write_text(json.dumps(config))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(work / "cv.json"))
    g = torch.Generator().manual_seed(3)
    clip_vision.load_sd({k: (torch.ones_like(v) if k.endswith("weight") and v.dim() == 1 else
                             torch.randn(v.shape, generator=g) * 0.1) for k, v in clip_vision.get_sd().items()})

    side = 64 if args.full else 16
    masks = half_masks(side)
    image = torch.rand(1, side * 8, side * 8, 3, generator=g)
    stream_node = pack_module(root, "nodes.image_stream.node").ImageStream
    mask_node = pack_module(root, "nodes.attention.node").AttentionMask
    defaults = {i.id: i.default for i in stream_node.define_schema().inputs if getattr(i, "default", None) is not None}
    mask_defaults = {i.id: i.default for i in mask_node.define_schema().inputs
                     if getattr(i, "default", None) is not None}

    def stream(m):
        return stream_node.execute(model=m, clip_vision=clip_vision, ipadapter="ip-adapter_sd15.safetensors",
                                   image=image, **defaults).args[0]

    masked, positive, _ = mask_node.execute(model=model, clip=clip, masks=masks,
                                            **{**mask_defaults, "prompt": "make it autumn\nadd snow"}).args
    runs = {"unpatched": model, "image stream": stream(model), "attention mask": masked, "mask + image stream": stream(masked)}
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

    for m in runs.values():
        timed(m)
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, m in runs.items():
            times[k].append(timed(m))
    best = {k: min(v) for k, v in times.items()}
    print(f"ComfyUI device={comfy.model_management.get_torch_device()} tiny SD1.5 checkpoint latent={side}x{side} "
          f"steps={args.steps} cfg=7 repeats={args.repeats}")
    for k, v in best.items():
        print(f"  {k:22s} best {v:.3f} s")
    print(f"ratio image stream / unpatched:             {best['image stream'] / best['unpatched']:.3f}")
    print(f"ratio mask + stream / attention mask alone: {best['mask + image stream'] / best['attention mask']:.3f}")

    adapter = pack_module(root, "attention_patches.comfy_adapter")
    patched = runs["image stream"]
    (ctrl,) = [c.cell_contents for fns in patched.wrappers["diffusion_model"].values() for fn in fns
               for c in fn.__closure__ or () if hasattr(c.cell_contents, "image_tokens")]
    probe = Magnitude(ctrl)
    probed = adapter.install_controller(model, probe)
    comfy.model_management.load_models_gpu([probed])
    to = adapter.direct_transformer_options(probed)
    to["cond_or_uncond"], to["sigmas"] = [0], torch.tensor([5.0])
    x = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0)) * 5.0
    with torch.no_grad():
        probed.model.apply_model(x, torch.tensor([5.0]), c_crossattn=positive[0][0], transformer_options=to)
    r = torch.tensor(probe.ratios)
    print(f"||lambda*image term|| / ||text attention|| at lambda=1 (sigma 5): mean {r.mean():.3f}, "
          f"min {r.min():.3f}, max {r.max():.3f} over {len(r)} layers")


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
    return diffusers_main(args)


if __name__ == "__main__":
    main()
