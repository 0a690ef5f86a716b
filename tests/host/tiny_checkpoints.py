"""Random-weight single-file checkpoints that ComfyUI detects as SD1.5 and SD1.5 InstructPix2Pix,
and random-weight FLUX.1 stand-ins for the stock Kontext loaders (see "FLUX.1 stand-ins" below).

SD1.5 detection pins model_channels=320, context_dim=768 and a full-size CLIP-L, so the smallest
loadable checkpoint is a few hundred MiB: it is generated at test time, cached, never committed
(notes/comfy_core_api.md section 4). Key names and shapes come from ComfyUI's own classes built on
the meta device, so the files follow whatever the checkout at COMFYUI_PATH expects:

- UNet (``model.diffusion_model.``): SD1.5's block layout (2 res blocks x 4 levels, attention on
  the first three levels, one middle transformer) with channel multiplier 1 everywhere, so block
  ids match a real SD1.5 while the UNet stays at ~110M parameters. 4 input channels for SD15,
  8 for SD15_instructpix2pix.
- CLIP-L text encoder (``cond_stage_model.transformer.`` + ``text_projection``) from
  comfy/sd1_clip_config.json.
- TAESD as the VAE (``first_stage_model.``), which ComfyUI picks when ``taesd_decoder.*`` is
  present: 8x downscale, 4 latent channels, ~2.4M parameters.

Importing comfy has side effects (CUDA probing, argument defaults), so the pytest process never
does: :func:`ensure_tiny_checkpoints` and :func:`detect_model_types` run this file as a script in
a subprocess with COMFYUI_PATH on sys.path.

FLUX.1 stand-ins (:func:`ensure_flux_standins`), for UNETLoader / DualCLIPLoader(flux) / VAELoader:

- a FLUX.1 diffusion model (bare keys, as in flux1-dev / flux1-kontext-dev files) that
  comfy/model_detection.py classifies as Flux: detection pins 24 heads and RoPE axes [16, 56, 56]
  (so hidden 3072) and reads the text width from ``txt_in`` (kept at T5-XXL's 4096, as in every
  real file) and the depth from the keys. Detection needs ``double_blocks.0``; one single block
  is kept too, so both of FLUX's block types (and the confinement in each) run: ~0.5 B
  parameters, saved as bf16 (~1 GB). The generator loads it back with UNETLoader's loader and
  refuses to cache it unless it is classified as Flux with these blocks.
- TAEF1 encoder / decoder (``models/vae_approx/taef1_{encoder,decoder}``, the stock VAELoader's
  "taef1" option; 16 latent channels) and the same weights in the combined TAESD layout VAELoader
  reads from ``models/vae`` (``taesd_encoder.*``, ``taesd_decoder.*``, ``vae_scale``/``vae_shift``
  with FLUX's latent scale), for a file under the name a workflow ships with (ae.safetensors).
- CLIP-L at full size from comfy/sd1_clip_config.json (123 M parameters, a plain file the stock
  loader reads as it is), and a 1-layer T5 (d_model 4096 as T5-XXL, 2 heads, d_ff 64). ComfyUI
  builds FLUX.1's T5 from the fixed t5_config_xxl.json (4.7 B parameters) whatever the file holds,
  so this T5 loads only through the test-only plugin tests/host/standin_text_encoders.py, which
  reads the config from the file's metadata (``contextedit_stand_in`` / ``contextedit_te_config``)
  and passes it through ComfyUI's own ``t5xxl_model_config`` model option. (CLIP-L has the same
  option, but DualCLIPLoader's long-CLIP detection overwrites it with the position count.)

    python tests/host/tiny_checkpoints.py generate OUT_DIR        (COMFYUI_PATH must be set)
    python tests/host/tiny_checkpoints.py generate-flux OUT_DIR   (the FLUX.1 stand-ins)
    python tests/host/tiny_checkpoints.py detect FILE [FILE...]   (prints JSON)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SD15_NAME = "contextedit_tiny_sd15.safetensors"
IP2P_NAME = "contextedit_tiny_sd15_ip2p.safetensors"
VARIANTS = {SD15_NAME: 4, IP2P_NAME: 8}  # file name -> UNet input channels
SEED = 20260107
RECIPE = "1"  # bump when the recipe changes: cached files with another value are regenerated

# SD1.5 block layout; channel_mult 1 keeps every level at 320 channels.
UNET_CONFIG = {
    "image_size": 32,
    "model_channels": 320,
    "out_channels": 4,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 1, 1, 1],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],  # one entry per input res block
    "transformer_depth_middle": 1,
    # popped from the end while building output blocks 0..11, so index 0 is the last
    # (highest-resolution) output block: output blocks 0-2 (lowest resolution) have no attention.
    "transformer_depth_output": [1] * 9 + [0] * 3,
    "num_heads": 8,
    "num_head_channels": -1,
    "context_dim": 768,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
}


# --------------------------------------------------------------------------- pytest side


def _run_script(args, comfyui_path, timeout):
    env = dict(os.environ)
    env["COMFYUI_PATH"] = str(comfyui_path)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        cwd=str(comfyui_path), env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"tiny_checkpoints {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


FLUX_NAMES = {"unet": "contextedit_standin_flux1.safetensors",
              "t5": "contextedit_standin_t5xxl.safetensors",
              "clip_l": "contextedit_standin_clip_l.safetensors",
              "taef1_encoder": "taef1_encoder.safetensors",
              "taef1_decoder": "taef1_decoder.safetensors",
              "vae": "contextedit_standin_taef1_vae.safetensors"}
FLUX_RECIPE = "3"  # bump when the FLUX.1 stand-in recipe changes
FLUX_SEED = 20260108
# what comfy/model_detection.py derives for a FLUX.1 dev / Kontext file, with the fewest blocks
FLUX_CONFIG = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
               "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24,
               "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000,
               "patch_size": 2, "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": []}
# overrides of comfy/text_encoders/t5_config_xxl.json and comfy/sd1_clip_config.json
T5_STANDIN_CONFIG = {"num_layers": 1, "num_heads": 2, "d_ff": 64}
TAEF1_LATENT = {"channels": 16, "scale": 0.3611, "shift": 0.1159}  # as nodes.py VAELoader sets for taef1


def ensure_flux_standins(out_dir, comfyui_path, timeout=900):
    """Generate the FLUX.1 stand-ins into ``out_dir`` unless present; returns {role: Path}."""
    out_dir = Path(out_dir)
    paths = {role: out_dir / name for role, name in FLUX_NAMES.items()}
    if not all(_is_current(p, FLUX_RECIPE) for p in paths.values()):
        out_dir.mkdir(parents=True, exist_ok=True)
        _run_script(["generate-flux", str(out_dir)], comfyui_path, timeout)
    return paths


def ensure_tiny_checkpoints(out_dir, comfyui_path, timeout=900):
    """Generate the two checkpoints into ``out_dir`` unless present; returns {name: Path}."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in VARIANTS}
    if not all(_is_current(p) for p in paths.values()):
        out_dir.mkdir(parents=True, exist_ok=True)
        _run_script(["generate", str(out_dir)], comfyui_path, timeout)
    return paths


def _is_current(path, recipe=RECIPE):
    if not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("contextedit_recipe") == recipe
    except Exception:  # noqa: BLE001 - a truncated or foreign file is simply regenerated
        return False


def detect_model_types(files, comfyui_path, timeout=600):
    """Load each file with comfy.sd.load_checkpoint_guess_config in a subprocess.

    Returns {file name: {"model": config class name, "clip": bool, "vae": VAE class name}}.
    """
    out = _run_script(["detect", *map(str, files)], comfyui_path, timeout)
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- comfy side


def _import_comfy():
    root = os.environ.get("COMFYUI_PATH")
    if not root or not os.path.isfile(os.path.join(root, "main.py")):
        raise SystemExit("COMFYUI_PATH must point at a ComfyUI checkout")
    sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # must precede comfy.model_management, which asserts CUDA
    import comfy.model_management  # imported for its side effect: device setup with args.cpu


def _shapes():
    """{key: shape} of the UNet (per input-channel count), CLIP-L and TAESD, built on meta."""
    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    unets = {}
    for in_channels in sorted(set(VARIANTS.values())):
        unet = UNetModel(in_channels=in_channels, dtype=torch.float32, device="meta",
                         operations=ops, **UNET_CONFIG)
        unets[in_channels] = {f"model.diffusion_model.{k}": tuple(v.shape)
                              for k, v in unet.state_dict().items()}

    with open(os.path.join(os.path.dirname(comfy.clip_model.__file__), "sd1_clip_config.json")) as f:
        clip_config = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "meta", ops)
    shared = {f"cond_stage_model.transformer.{k}": tuple(v.shape) for k, v in clip.state_dict().items()}
    # real SD1.5 files carry this buffer; comfy's CLIP does not register it but tolerates it
    shared["cond_stage_model.transformer.text_model.embeddings.position_ids"] = (
        1, clip_config["max_position_embeddings"])

    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD()
    shared.update({f"first_stage_model.{k}": tuple(v.shape) for k, v in taesd.state_dict().items()})
    return unets, shared


def _fill(key, shape, gen):
    import torch

    leaf = key.rsplit(".", 1)[-1]
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).reshape(shape)
    if key.endswith("vae_scale"):
        return torch.tensor(0.18215)  # SD1 latent scale, as nodes.py VAELoader sets for taesd
    if key.endswith("vae_shift"):
        return torch.tensor(0.0)
    if leaf == "bias":
        return torch.zeros(shape)
    # norms (GroupNorm / LayerNorm) have 1-d weights; linear / conv / embedding weights are >= 2-d
    if leaf == "weight" and len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape, generator=gen) * 0.02


def generate(out_dir):
    import torch

    _import_comfy()
    unets, shared = _shapes()
    gen = torch.Generator().manual_seed(SEED)
    shared_tensors = {}
    for k, s in shared.items():
        t = _fill(k, s, gen)
        shared_tensors[k] = t if k.endswith("position_ids") else t.to(torch.float16)
    # both UNets share every tensor but the first conv (4 vs 8 input channels), which is drawn anew
    base = {k: _fill(k, s, gen).to(torch.float16) for k, s in unets[4].items()}
    os.makedirs(out_dir, exist_ok=True)
    for name, in_channels in VARIANTS.items():
        tensors = dict(shared_tensors)
        for k, s in unets[in_channels].items():
            t = base[k]
            if tuple(t.shape) != s:
                t = (torch.randn(s, generator=gen) * 0.02).to(torch.float16)
            tensors[k] = t
        _save(tensors, os.path.join(out_dir, name),
              {"generator": "contextedit tests/host/tiny_checkpoints.py", "contextedit_recipe": RECIPE})


def _save(tensors, final, metadata):
    from safetensors.torch import save_file

    tmp = f"{final}.{os.getpid()}.tmp"
    save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()})
    os.replace(tmp, final)  # atomic: a half-written file is never mistaken for a cache hit
    print(f"wrote {final} ({os.path.getsize(final) / 2**20:.0f} MiB)")


def _flux_fill(key, shape, gen):
    # Flux's RMSNorm weights are called ``scale``: ones, like every other norm weight here
    import torch

    if key.rsplit(".", 1)[-1] == "scale" and len(shape) == 1:
        return torch.ones(shape)
    return _fill(key, shape, gen)


def generate_flux(out_dir):
    _import_comfy()
    import comfy.clip_model
    import comfy.ldm.flux.model
    import comfy.ops
    import comfy.taesd.taesd
    import comfy.text_encoders.t5
    import torch

    ops = comfy.ops.disable_weight_init
    gen = torch.Generator().manual_seed(FLUX_SEED)
    meta = {"generator": "contextedit tests/host/tiny_checkpoints.py", "contextedit_recipe": FLUX_RECIPE}
    os.makedirs(out_dir, exist_ok=True)

    def tensors_of(module, dtype, fill=_fill):
        return {k: fill(k, tuple(v.shape), gen).to(dtype) for k, v in module.state_dict().items()}

    flux = comfy.ldm.flux.model.Flux(dtype=torch.bfloat16, device="meta", operations=ops, **FLUX_CONFIG)
    unet_path = os.path.join(out_dir, FLUX_NAMES["unet"])
    tmp = f"{unet_path}.{os.getpid()}.unchecked.safetensors"  # load_torch_file goes by the extension
    _save(tensors_of(flux, torch.bfloat16, _flux_fill), tmp, meta)
    del flux
    found = _detect_unet(tmp)
    wanted = {"model": "Flux", "depth": 1, "depth_single_blocks": 1, "hidden_size": 3072, "context_in_dim": 4096}
    if found != wanted:
        os.remove(tmp)
        raise SystemExit(f"UNETLoader's loader reads the FLUX.1 stand-in as {found}, not {wanted}")
    os.replace(tmp, unet_path)
    print(f"{unet_path}: detected as {found}")

    te_dir = os.path.dirname(comfy.text_encoders.t5.__file__)
    with open(os.path.join(te_dir, "t5_config_xxl.json")) as f:
        t5_config = {**json.load(f), **T5_STANDIN_CONFIG}
    t5 = comfy.text_encoders.t5.T5(t5_config, torch.bfloat16, "meta", ops)
    _save(tensors_of(t5, torch.bfloat16), os.path.join(out_dir, FLUX_NAMES["t5"]),
          {**meta, "contextedit_stand_in": "t5xxl", "contextedit_te_config": json.dumps(T5_STANDIN_CONFIG)})

    with open(os.path.join(os.path.dirname(comfy.clip_model.__file__), "sd1_clip_config.json")) as f:
        clip = comfy.clip_model.CLIPTextModel(json.load(f), torch.float16, "meta", ops)
    _save(tensors_of(clip, torch.float16), os.path.join(out_dir, FLUX_NAMES["clip_l"]), meta)

    with torch.device("meta"):
        taef1 = comfy.taesd.taesd.TAESD(latent_channels=TAEF1_LATENT["channels"])
    parts = {"taef1_encoder": taef1.taesd_encoder, "taef1_decoder": taef1.taesd_decoder}
    combined = {"vae_scale": torch.tensor(TAEF1_LATENT["scale"]), "vae_shift": torch.tensor(TAEF1_LATENT["shift"])}
    for role, module in parts.items():
        tensors = tensors_of(module, torch.float16)
        _save(tensors, os.path.join(out_dir, FLUX_NAMES[role]), meta)
        prefix = "taesd_encoder." if role == "taef1_encoder" else "taesd_decoder."
        combined.update({prefix + k: v for k, v in tensors.items()})
    _save(combined, os.path.join(out_dir, FLUX_NAMES["vae"]), meta)


def _detect_unet(file):
    """What comfy.sd.load_diffusion_model (UNETLoader's loader) makes of a diffusion-model file."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model(file)
    dm = model.model.diffusion_model
    return {"model": type(model.model.model_config).__name__,
            "depth": len(dm.double_blocks), "depth_single_blocks": len(dm.single_blocks),
            "hidden_size": dm.hidden_size, "context_in_dim": dm.txt_in.in_features}


def detect(files):
    _import_comfy()
    import comfy.sd

    result = {}
    for f in files:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            f, output_vae=True, output_clip=True, embedding_directory=None)
        result[os.path.basename(f)] = {
            "model": type(model.model.model_config).__name__,
            "in_channels": model.model.diffusion_model.in_channels,
            "clip": clip is not None,
            "vae": type(vae.first_stage_model).__name__ if vae is not None else None,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "generate":
        generate(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "generate-flux":
        generate_flux(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "detect":
        detect(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
