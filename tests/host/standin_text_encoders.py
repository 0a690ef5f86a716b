"""TEST-ONLY ComfyUI plugin: lets the stock text-encoder loaders load our small FLUX.1 stand-ins.

Loaded only into the host tests' ComfyUI server (tests/host/conftest.py links it into that
server's custom_nodes folder); it is not part of the pack and never shipped.

Why it exists: ComfyUI 0.8.0 builds FLUX.1's T5 from the fixed t5_config_xxl.json whatever the
file holds (comfy/text_encoders/flux.py -> sd3_clip.T5XXLModel: 24 layers, 4.7 B parameters), so
no small T5 loads through DualCLIPLoader alone and a full-size one cannot run in CI. ComfyUI has
its own override for this: SDClipModel merges ``model_options["t5xxl_model_config"]``
(``<model_name>_model_config``) into the config it builds from (comfy/sd1_clip.py). The stock
loaders do not expose it, so this module wraps ``comfy.sd.load_clip`` (what CLIPLoader /
DualCLIPLoader call) and adds that option only when a file's safetensors metadata marks it as
our stand-in: ``contextedit_stand_in`` = ``t5xxl`` and ``contextedit_te_config`` = the JSON
config overrides (written by tests/host/tiny_checkpoints.py). Any other file, or one that cannot
be read as safetensors, goes through ComfyUI's loader untouched. (The CLIP-L stand-in is a
full-size file and needs nothing from here.)
"""

import json
import logging

import comfy.sd

STAND_IN_KEY = "contextedit_stand_in"
CONFIG_KEY = "contextedit_te_config"
KNOWN = ("t5xxl",)

_stock_load_clip = comfy.sd.load_clip
log = logging.getLogger(__name__)


def stand_in_options(path):
    """{"<name>_model_config": {...}} for a marked stand-in file, else {}."""
    if not str(path).endswith(".safetensors"):
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not ours: ComfyUI's loader reports its own errors
        return {}
    name = metadata.get(STAND_IN_KEY)
    if name not in KNOWN:
        return {}
    return {f"{name}_model_config": json.loads(metadata[CONFIG_KEY])}


def load_clip(ckpt_paths, embedding_directory=None, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION, model_options={}):  # noqa: B006 - ComfyUI's signature
    extra = {}
    for path in ckpt_paths:
        extra.update(stand_in_options(path))
    if extra:
        log.info("contextedit test plugin: stand-in text encoder config %s", extra)
        model_options = {**model_options, **extra}
    return _stock_load_clip(ckpt_paths, embedding_directory=embedding_directory, clip_type=clip_type,
                            model_options=model_options)


comfy.sd.load_clip = load_clip

NODE_CLASS_MAPPINGS = {}  # a plugin without nodes; ComfyUI skips modules lacking this attribute
