"""Model folders of the pack and one resolver for all of them.

ComfyUI keeps ``folder_paths.folder_names_and_paths[name] = ([paths...], {extensions})``. Users add
paths with extra_model_paths.yaml, which ComfyUI reads *before* custom nodes load, so registration
here only ever adds our default folder and our extensions to what is already there.

The module works on any object shaped like ComfyUI's ``folder_paths`` (tests pass a fake), and
imports the real one lazily.
"""

import os
from dataclasses import dataclass

from .errors import ModelNotFoundError
from .model_catalog import download_hint

WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class ModelFolder:
    name: str            # folder_paths key, also the folder under models/
    layout: str          # "file": one weights file per model; "hf": a Hugging Face folder per model
    extensions: tuple    # for "file" layout
    expected: str        # human description used in errors


# Ours are registered by register_model_folders(); core's are listed so the resolver can describe them.
MODEL_FOLDERS = {
    "sams": ModelFolder("sams", "file", (".pth", ".pt", ".safetensors"),
                        "a segment-anything checkpoint (e.g. sam_vit_b_01ec64.pth, vit_b/l/h)"),
    "LLM": ModelFolder("LLM", "hf", (),
                       "a Hugging Face model folder (config.json, tokenizer/processor files, *.safetensors), "
                       "e.g. models/LLM/Qwen2.5-VL-3B-Instruct"),
    "contextedit": ModelFolder("contextedit", "file", (".safetensors",),
                               "a ContextEdit region-predictor checkpoint (*.safetensors)"),
    "clip_vision": ModelFolder("clip_vision", "file", WEIGHT_EXTENSIONS,
                               "a CLIP vision model (e.g. clip_vit_large_patch14.safetensors)"),
    "text_encoders": ModelFolder("text_encoders", "file", WEIGHT_EXTENSIONS,
                                 "a text encoder (e.g. a FLAN-T5 folder or safetensors file)"),
    "metrics": ModelFolder("metrics", "file", WEIGHT_EXTENSIONS,
                           "an evaluation network for ContextEdit Edit Metrics (CLIP Hugging Face folders, "
                           "DINO / SqueezeNet weights; see nodes/metrics/models.py)"),
    "ipadapter": ModelFolder("ipadapter", "file", (".safetensors", ".bin"),
                             "a plain IP-Adapter file (e.g. ip-adapter_sd15.safetensors, ip-adapter_sdxl.bin)"),
}
OWN_FOLDERS = ("sams", "LLM", "contextedit", "metrics", "ipadapter")


def _folder_paths(fp=None):
    if fp is not None:
        return fp
    import folder_paths  # ComfyUI's module; only available inside ComfyUI

    return folder_paths


def register_model_folders(fp=None) -> None:
    """Add ``models/<name>`` for each of our folders, keeping every path already registered."""
    fp = _folder_paths(fp)
    table = fp.folder_names_and_paths
    for name in OWN_FOLDERS:
        spec = MODEL_FOLDERS[name]
        default = os.path.join(fp.models_dir, name)
        if name in table:
            paths, exts = table[name]
            if default not in paths:
                paths.append(default)
            if spec.extensions and exts:  # an empty set means "any extension": keep it that way
                exts = set(exts) | set(spec.extensions)
            table[name] = (paths, exts)
        else:
            table[name] = ([default], set(spec.extensions) if spec.layout == "file" else set())


def search_paths(kind: str, fp=None) -> list:
    fp = _folder_paths(fp)
    if kind not in fp.folder_names_and_paths:
        return []
    return list(fp.folder_names_and_paths[kind][0])


def _is_hf_folder(path: str) -> bool:
    """A Hugging Face model folder (config.json) or a diffusers pipeline folder (model_index.json)."""
    return any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "model_index.json"))


def list_hf_folders(kind: str, fp=None, max_depth: int = 3) -> list:
    """Names (relative, '/'-separated) of every Hugging Face folder under the kind's paths."""
    found = []
    for root in search_paths(kind, fp):
        if not os.path.isdir(root):
            continue
        root_depth = root.rstrip(os.sep).count(os.sep)
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            if _is_hf_folder(dirpath) and dirpath != root:
                found.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
                dirnames[:] = []  # a model folder's subfolders are part of it
            elif dirpath.count(os.sep) - root_depth >= max_depth:
                dirnames[:] = []
    return sorted(set(found))


def list_models(kind: str, fp=None) -> list:
    """What a loader node offers in its combo box."""
    spec = MODEL_FOLDERS.get(kind)
    if spec is not None and spec.layout == "hf":
        return list_hf_folders(kind, fp)
    fp = _folder_paths(fp)
    return list(fp.get_filename_list(kind))


def none_installed(kind) -> str:
    """The one option a loader's list shows when its folder is empty (an empty list reads as
    "undefined" in the frontend); choosing it fails validation with where to get a model."""
    first = kind if isinstance(kind, str) else kind[0]
    return f"(none installed in models/{first})"


def combo_options(kind, names) -> list:
    """``names``, or the :func:`none_installed` placeholder when there are none."""
    names = list(names)
    return names if names else [none_installed(kind)]


def _kind_matches(kind, root: str, rel: str):
    """The file or folder ``rel`` under ``root`` when it is a model of ``kind``'s layout."""
    spec = MODEL_FOLDERS.get(kind)
    candidate = os.path.join(root, rel)
    if spec is not None and spec.layout == "hf":
        return candidate if os.path.isdir(candidate) and _is_hf_folder(candidate) else None
    if os.path.isfile(candidate):
        return candidate
    if os.path.isdir(candidate) and _is_hf_folder(candidate):
        return candidate  # text encoders / CLIP vision may also be HF folders
    return None


def resolve_model(kind, name: str, fp=None, expected: str = None) -> str:
    """Full path of model ``name`` of ``kind``; raises ModelNotFoundError naming where it looked,
    what it expected and, from the model catalogue, where to download it.

    ``kind`` may be a tuple of kinds (e.g. ("text_encoders", "LLM")): the first holding ``name``
    wins, and the error lists every folder of every kind."""
    kinds = tuple(kind) if isinstance(kind, (tuple, list)) else (kind,)
    label = " or ".join(kinds)
    spec = MODEL_FOLDERS.get(kinds[0])
    expected = expected or (spec.expected if spec else f"a model file for '{kinds[0]}'")
    searched = [root for k in kinds for root in search_paths(k, fp)]

    def missing(headline=None, what=expected):
        return ModelNotFoundError(label, str(name), searched, what, source=download_hint(name, kinds),
                                  headline=headline)

    if name in {none_installed(k) for k in kinds} | {none_installed(kinds)}:
        raise missing(headline=f"No {label} model is installed.")
    if not name or not isinstance(name, str):
        raise missing()
    rel = name.replace("/", os.sep)
    if os.path.isabs(rel) or ".." in rel.split(os.sep):
        raise missing(what=expected + " (a name relative to the folder)")
    for k in kinds:
        for root in search_paths(k, fp):
            found = _kind_matches(k, root, rel)
            if found:
                return found
    raise missing()


def check_model(kind, name, fp=None, expected: str = None):
    """For a node's ``validate_inputs``: True when :func:`resolve_model` finds ``name``, else the
    error text. A linked input (None at validation time) is checked when the node runs."""
    if name is None:
        return True
    try:
        resolve_model(kind, name, fp, expected)
    except ModelNotFoundError as error:
        return str(error)
    return True
