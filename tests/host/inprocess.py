"""Import ComfyUI into the test process (for tests that call node classes and the model directly).

CPU only: ``args.cpu`` must be set before ``comfy.model_management`` is imported, or it asserts
CUDA. The pack's node modules import ``comfy_api``, so they are importable only after this.
"""

import importlib
import sys

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
