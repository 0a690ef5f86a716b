"""Import ComfyUI into the test process (for tests that call node classes and the model directly).

CPU only: ``args.cpu`` must be set before ``comfy.model_management`` is imported, or it asserts
CUDA. The pack's node modules import ``comfy_api``, so they are importable only after this.
"""

import atexit
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

_loaded = {}


def import_comfy(comfyui_root):
    if "root" in _loaded:
        return _loaded["comfy"]
    root = str(comfyui_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (after args.cpu)
    import comfy.sd
    import comfy.samplers  # noqa: F401
    import comfy.sample  # noqa: F401
    import folder_paths

    # Nodes that save previews (Review Plan, Decode Masks) write to ComfyUI's temp folder, which
    # defaults to <ComfyUI>/temp: keep every write out of the (read-only) ComfyUI tree.
    scratch = Path(tempfile.mkdtemp(prefix="contextedit-inprocess-"))
    atexit.register(shutil.rmtree, scratch, True)
    folder_paths.set_temp_directory(str(scratch / "temp"))
    folder_paths.set_output_directory(str(scratch / "output"))

    _loaded["root"] = root
    _loaded["comfy"] = comfy
    return comfy


def load_checkpoint(comfyui_root, path):
    """(MODEL, CLIP, VAE) from a checkpoint file, as CheckpointLoaderSimple gives them."""
    key = ("ckpt", str(path))
    if key not in _loaded:
        comfy = import_comfy(comfyui_root)
        out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
        _loaded[key] = out[:3]
    return _loaded[key]


def pack_module(comfyui_root, name):
    """A module of the pack (e.g. 'nodes.attention.node'), imported after ComfyUI."""
    import_comfy(comfyui_root)
    return importlib.import_module(f"contextedit.{name}")


def dit_confinement_of(patched):
    """The DiTConfinement a ContextEdit Attention Mask installed on a FLUX.1 / Qwen-Image MODEL
    (found through its DIFFUSION_MODEL wrapper, whatever patches were added on top)."""
    fn = next(f for keys in patched.wrappers.values() for k, fs in keys.items()
              if k.startswith("contextedit_dit_confine") for f in fs)
    return next(c.cell_contents for c in fn.__closure__ if hasattr(c.cell_contents, "segments"))


def tiny_sdxl_layout_unet(comfyui_root, context_dim=16, seed=0):
    """A ComfyUI UNetModel with SDXL's block layout (tiny channels; transformer depths 1 and 2,
    linear proj), weights ~N(0, 0.02) from ``seed``: input 4-5 and 7-8, middle, output 0-5 hold
    cross-attention, transformer index 1 included."""
    import torch

    comfy = import_comfy(comfyui_root)
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=2,
                     channel_mult=(1, 2, 4), num_head_channels=16, transformer_depth=[0, 0, 1, 1, 2, 2],
                     transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=2,
                     context_dim=context_dim, use_spatial_transformer=True, use_linear_in_transformer=True,
                     adm_in_channels=None, num_classes=None, dtype=torch.float32, device="cpu",
                     operations=comfy.ops.disable_weight_init)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return unet
