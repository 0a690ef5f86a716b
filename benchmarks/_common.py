"""Shared bits of the benchmark scripts: load the checkout as package ``contextedit`` and make
the test fixtures (tiny model factories) importable."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_pack():
    if "contextedit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("contextedit", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["contextedit"] = mod
        spec.loader.exec_module(mod)
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return sys.modules["contextedit"]


def comfy_tiny_sd15():
    """ComfyUI imported in-process from COMFYUI_PATH and the tiny SD1.5 test checkpoint (generated
    once into $CONTEXTEDIT_TEST_CACHE, else a temp folder): (comfyui root, comfy, (MODEL, CLIP, VAE))."""
    import os
    import tempfile

    root = os.environ.get("COMFYUI_PATH")
    if not root:
        sys.exit("--comfy needs COMFYUI_PATH")
    load_pack()
    from host.inprocess import import_comfy, load_checkpoint
    from host.tiny_checkpoints import SD15_NAME, ensure_tiny_checkpoints

    comfy = import_comfy(root)
    cache = Path(os.environ.get("CONTEXTEDIT_TEST_CACHE") or Path(tempfile.gettempdir()) / "contextedit_bench")
    ckpt = ensure_tiny_checkpoints(cache / "checkpoints", root)[SD15_NAME]
    return root, comfy, load_checkpoint(root, ckpt)


def half_masks(side: int):
    """Two masks [2, H, W] of a side*8 square image: the left half and the right half."""
    import torch

    masks = torch.zeros(2, side * 8, side * 8)
    masks[0, :, : side * 4] = 1
    masks[1, :, side * 4:] = 1
    return masks
