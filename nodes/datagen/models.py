"""Find the pipeline's models: a path as given, or a name in a ComfyUI models folder.

The CLI runs outside ComfyUI, so ComfyUI's ``folder_paths`` is not importable; ``--models-dir``
(the ComfyUI ``models`` folder) stands in for it through :func:`local_folder_paths`, and the names
resolve exactly as the pack's loader nodes resolve them (``model_folders.resolve_model``):
VLMs in ``models/LLM/<folder>``, SAM in ``models/sams``, the inpainting checkpoint in
``models/checkpoints`` (single file) or ``models/diffusers/<folder>``, Grounding DINO in
``models/grounding-dino/<folder>``. Nothing is downloaded.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from ..errors import ModelNotFoundError
from ..model_folders import WEIGHT_EXTENSIONS, register_model_folders, resolve_model

EXTRA_KINDS = {"checkpoints": set(WEIGHT_EXTENSIONS), "diffusers": set(), "grounding-dino": set()}


def local_folder_paths(models_dir=None):
    """An object shaped like ComfyUI's ``folder_paths`` for the folder ``models_dir``."""
    models_dir = os.path.abspath(models_dir) if models_dir else os.path.abspath("models")
    table = {kind: ([os.path.join(models_dir, kind)], set(exts)) for kind, exts in EXTRA_KINDS.items()}

    def get_filename_list(kind):
        names = []
        for root in table.get(kind, ([], set()))[0]:
            if os.path.isdir(root):
                for dirpath, _, files in os.walk(root):
                    names += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                              for f in files]
        return sorted(names)

    fp = SimpleNamespace(models_dir=models_dir, folder_names_and_paths=table,
                         get_filename_list=get_filename_list)
    register_model_folders(fp)
    return fp


def find_model(value, kinds, models_dir=None, what: str = "model") -> str:
    """``value`` when it is an existing file or folder, else the model of that name in the first
    of ``kinds`` (ComfyUI folder names) under ``models_dir`` holding it."""
    if value is None or not str(value).strip():
        raise ModelNotFoundError(kinds if isinstance(kinds, str) else " or ".join(kinds), str(value),
                                 [], f"a path or a name for the {what}")
    if os.path.exists(value):
        return os.path.abspath(value)
    fp = local_folder_paths(models_dir)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return resolve_model(kinds, str(value), fp)
