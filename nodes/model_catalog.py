"""Every model the pack's loaders or its shipped workflows name: where it goes and where to get it.

One table, read by
- the model resolver (``model_folders.resolve_model``): a missing model's error ends with where to
  download it (or, for the region-predictor head, how to train it);
- ``tools/workflow_models.py``: writes ComfyUI's ``properties.models`` metadata (name, url,
  directory, hash) on the loader nodes of ``workflows/*.json``, read by the frontend's
  missing-models dialog;
- the README's "Where the models go" table (tests/test_model_catalog.py keeps the two in sync);
- anything that wants to list a workflow's models with their sources (:func:`entries_for_workflow`).

Plain Python, no ComfyUI import. Sources are the official model repositories (for files that
ComfyUI's own templates use, the Comfy-Org / comfyanonymous repackaged file those templates link).
Nothing is downloaded by the pack.

A ``sha256`` is given only where it could be read from a trustworthy record of that exact file: the
Hugging Face LFS pointer (oid) of the official file, of an HF duplicate of the official repository,
or several independent checksum lists that agree (``hash_source`` says which). Where none was
found the hash is left out rather than guessed.

API
---
``CATALOG``                       all entries (tuple of :class:`ModelEntry`)
``lookup(name, directory=None)``  the entry for a file/folder name, optionally in one model folder
``folder_hint(directory)``        what to put in a model folder when no entry names the file
``download_hint(name, kinds)``    one sentence for an error message: where to get ``name``
``entries_for_workflow(graph)``   [(node_id, node_type, entry)] for a UI- or API-format workflow
``properties_models(entry)``      the ``properties.models`` item ComfyUI's frontend reads, or None
``LOADER_INPUTS``                 {loader node type: {model input: folders it reads}}
"""

from __future__ import annotations

from dataclasses import dataclass

FILE = "file"      # one weights file in the model folder
FOLDER = "folder"  # a Hugging Face model folder (config.json, weights, tokenizer/processor files)

HF = "https://huggingface.co"


@dataclass(frozen=True)
class ModelEntry:
    name: str                 # the file / folder name a loader widget shows (relative to the folder)
    directory: str            # ComfyUI model folder (folder_paths key): "checkpoints", "sams", "LLM", ...
    layout: str               # FILE or FOLDER
    what: str                 # what it is and what uses it, for people
    source: str | None        # the official page or repository (None: no download, see ``how``)
    how: str                  # how to get it into place, one sentence
    url: str | None = None    # direct download of exactly this file (FILE only)
    sha256: str | None = None
    hash_source: str = ""     # where the sha256 was read
    alternatives: tuple = ()  # other directories the loader also searches for this name

    @property
    def directories(self) -> tuple:
        return (self.directory, *self.alternatives)

    def hint(self) -> str:
        """One sentence for an error message: where to get it and how to place it."""
        if self.source is None:
            return self.how
        if self.how:
            return f"Get it from {self.source}: {self.how}"
        return f"Get it from {self.source}."


def _hf_file(repo: str, path: str) -> str:
    return f"{HF}/{repo}/resolve/main/{path}"


def _hf_folder(name: str, repo: str, directory: str, what: str, alternatives: tuple = ()) -> ModelEntry:
    return ModelEntry(
        name=name, directory=directory, layout=FOLDER, what=what, source=f"{HF}/{repo}",
        how=(f"download the whole repository into models/{directory}/{name} "
             f"(e.g. `hf download {repo} --local-dir models/{directory}/{name}`)."),
        alternatives=alternatives)


def _file(name: str, directory: str, what: str, source: str, url: str, sha256: str | None = None,
          hash_source: str = "", save_as: bool = False) -> ModelEntry:
    how = (f"download {url} and save it as models/{directory}/{name}." if save_as
           else f"download {url} into models/{directory}/.")
    return ModelEntry(name=name, directory=directory, layout=FILE, what=what, source=source, how=how,
                      url=url, sha256=sha256, hash_source=hash_source)


_LFS = "Hugging Face LFS oid of the file at the source"
_LFS_COPY = "Hugging Face LFS oid of a duplicate of the source repository"
_SAM_SRC = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_SAM_HASH = ("the same sha256 in several independent checksum lists of Meta's release file "
             "(the name's 6-hex suffix is its md5 prefix)")
_IPA = "h94/IP-Adapter"
_DINO_SRC = "https://github.com/facebookresearch/dino#pretrained-models"

CATALOG = (
    # ------------------------------------------------------------------ the pack's own loaders
    _hf_folder("Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct", "LLM",
               "Qwen2.5-VL 3B Instruct, the vision-language model of Load VLM (Check Instructions, "
               "Rewrite Edit Instruction)"),
    _file("sam_vit_b_01ec64.pth", "sams", "segment-anything ViT-B (Load SAM)", _SAM_SRC,
          "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
          "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", _SAM_HASH),
    _file("sam_vit_l_0b3195.pth", "sams", "segment-anything ViT-L (Load SAM)", _SAM_SRC,
          "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
          "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", _SAM_HASH),
    _file("sam_vit_h_4b8939.pth", "sams", "segment-anything ViT-H (Load SAM)", _SAM_SRC,
          "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
          "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", _SAM_HASH),
    ModelEntry(
        name="region_predictor.safetensors", directory="contextedit", layout=FILE,
        what="the learnable edit-region head (Load Region Predictor); no weights are published",
        source=None,
        how=("No download exists: train one with the pack's CLI (`python nodes/regions/train.py prepare "
             "...` then `python nodes/regions/train.py train ... --out runs/region`, see the README, "
             "'Training a region predictor') and copy runs/region/region_predictor.safetensors into "
             "models/contextedit/; or pick 'none (test-time mode)' to fit a head per image.")),
    _file("clip_vit_large_patch14.safetensors", "clip_vision",
          "CLIP ViT-L/14, the image encoder of Load Region Predictor", f"{HF}/openai/clip-vit-large-patch14",
          _hf_file("openai/clip-vit-large-patch14", "model.safetensors"),
          "a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb", _LFS_COPY, save_as=True),
    _hf_folder("clip-vit-large-patch14", "openai/clip-vit-large-patch14", "clip_vision",
               "CLIP ViT-L/14 as a Hugging Face folder: Load Region Predictor's clip_text (test-time "
               "mode) or clip_vision", alternatives=("text_encoders",)),
    _hf_folder("flan-t5-base", "google/flan-t5-base", "text_encoders",
               "FLAN-T5 base, the instruction encoder of Load Region Predictor", alternatives=("LLM",)),
    _file("ip-adapter_sd15.safetensors", "ipadapter", "IP-Adapter for SD1.5 (Image Stream; CLIP ViT-H)",
          f"{HF}/{_IPA}", _hf_file(_IPA, "models/ip-adapter_sd15.safetensors"),
          "289b45f16d043d0bf542e45831f971dcdaabe18b656f11e86d9dfba7e9ee3369", _LFS_COPY),
    _file("ip-adapter_sd15_light.safetensors", "ipadapter",
          "IP-Adapter light for SD1.5 (Image Stream; CLIP ViT-H)",
          f"{HF}/{_IPA}", _hf_file(_IPA, "models/ip-adapter_sd15_light.safetensors")),
    _file("ip-adapter_sdxl_vit-h.safetensors", "ipadapter", "IP-Adapter for SDXL (Image Stream; CLIP ViT-H)",
          f"{HF}/{_IPA}", _hf_file(_IPA, "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"),
          "ebf05d918348aec7abb02a5e9ecef77e0aaea6914a5c4ea13f50d45eb1681831", _LFS_COPY),
    _file("ip-adapter_sdxl.safetensors", "ipadapter", "IP-Adapter for SDXL (Image Stream; CLIP ViT-bigG)",
          f"{HF}/{_IPA}", _hf_file(_IPA, "sdxl_models/ip-adapter_sdxl.safetensors")),
    # ------------------------------------------------------------------ Edit Metrics' networks
    _hf_folder("clip-vit-large-patch14", "openai/clip-vit-large-patch14", "metrics",
               "CLIP ViT-L/14 for Edit Metrics (PIE-Bench, Emu Edit CLIP scores)"),
    _hf_folder("clip-vit-base-patch32", "openai/clip-vit-base-patch32", "metrics",
               "CLIP ViT-B/32 for Edit Metrics (MagicBrush CLIP-I / CLIP-T)"),
    _file("dino_vitbase8_pretrain.pth", "metrics", "DINO ViT-B/8 for Edit Metrics (PIE-Bench structure distance)",
          _DINO_SRC, "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    _file("dino_deitsmall16_pretrain.pth", "metrics", "DINO ViT-S/16 for Edit Metrics (MagicBrush / Emu Edit DINO)",
          _DINO_SRC, "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"),
    _file("squeezenet1_1-b8a52dc0.pth", "metrics", "SqueezeNet 1.1 (torchvision, ImageNet), the LPIPS backbone "
          "of Edit Metrics", "https://pytorch.org/vision/stable/models/squeezenet.html",
          "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
    _file("lpips_squeeze.pth", "metrics", "LPIPS linear heads for SqueezeNet (optional: torchmetrics "
          "installs the same file)", "https://github.com/richzhang/PerceptualSimilarity",
          "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/squeeze.pth",
          "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
          "computed from the copy torchmetrics installs; equals an independent checksum list of the source file",
          save_as=True),
    # ------------------------------------------------------------------ stock loaders in the workflows
    _file("instruct-pix2pix-00-22000.safetensors", "checkpoints", "InstructPix2Pix (SD1.5), the editing model "
          "of the IP2P workflows", f"{HF}/timbrooks/instruct-pix2pix",
          _hf_file("timbrooks/instruct-pix2pix", "instruct-pix2pix-00-22000.safetensors"),
          "fbc31a67aab29ad38eef622a252d3fa4b0a81d4a4dc65da416cf45b13aa67688", _LFS),
    _file("v1-5-pruned-emaonly-fp16.safetensors", "checkpoints", "Stable Diffusion 1.5 (MAG Edit, region edit)",
          f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive",
          _hf_file("Comfy-Org/stable-diffusion-v1-5-archive", "v1-5-pruned-emaonly-fp16.safetensors"),
          "e9476a13728cd75d8279f6ec8bad753a66a1957ca375a1464dc63b37db6e3916", _LFS),
    ModelEntry(
        name="sd-v1-5-inpainting.safetensors", directory="checkpoints", layout=FILE,
        what="Stable Diffusion 1.5 inpainting (editing pair workflow, data pipeline)",
        source=f"{HF}/stable-diffusion-v1-5/stable-diffusion-inpainting",
        how=("the official repository ships it as sd-v1-5-inpainting.ckpt: put that file in "
             "models/checkpoints/ and pick it in Load Checkpoint (ComfyUI loads .ckpt weights safely), "
             "or save a safetensors conversion of it under this name.")),
    _file("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision",
          "CLIP ViT-H/14 image encoder for ip-adapter_sd15 / _sdxl_vit-h (Load CLIP Vision)",
          f"{HF}/Comfy-Org/CLIP-ViT-H-14-laion2B-s32B-b79K_repackaged",
          _hf_file("Comfy-Org/CLIP-ViT-H-14-laion2B-s32B-b79K_repackaged",
                   "split_files/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")),
    _file("CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "clip_vision",
          "CLIP ViT-bigG/14 image encoder for ip-adapter_sdxl (Load CLIP Vision)", f"{HF}/{_IPA}",
          _hf_file(_IPA, "sdxl_models/image_encoder/model.safetensors"), save_as=True),
    _file("flux1-dev-kontext_fp8_scaled.safetensors", "diffusion_models", "FLUX.1 Kontext dev, fp8 (Kontext workflow)",
          f"{HF}/Comfy-Org/flux1-kontext-dev_ComfyUI",
          _hf_file("Comfy-Org/flux1-kontext-dev_ComfyUI", "split_files/diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors"),
          "630ba795ec64283b4230ea23cf79406c2c68b7c578229ed139f30043eadb30a2", _LFS),
    _file("clip_l.safetensors", "text_encoders", "CLIP-L text encoder for FLUX.1 (Kontext workflow)",
          f"{HF}/comfyanonymous/flux_text_encoders", _hf_file("comfyanonymous/flux_text_encoders", "clip_l.safetensors"),
          "660c6f5b1abae9dc498ac2d21e1347d2abdb0cf6c0c0c8576cd796491d9a6cdd", _LFS_COPY),
    _file("t5xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders", "T5-XXL text encoder, fp8 (Kontext workflow)",
          f"{HF}/comfyanonymous/flux_text_encoders",
          _hf_file("comfyanonymous/flux_text_encoders", "t5xxl_fp8_e4m3fn_scaled.safetensors"),
          "a498f0485dc9536735258018417c3fd7758dc3bccc0a645feaa472b34955557a", _LFS),
    _file("ae.safetensors", "vae", "FLUX.1 VAE (Kontext workflow)", f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged",
          _hf_file("Comfy-Org/Lumina_Image_2.0_Repackaged", "split_files/vae/ae.safetensors"),
          "afc8e28272cd15db3919bacdb6918ce9c1ed22e96cb12c4d5ed0fba823529e38", _LFS),
    _file("qwen_image_edit_2509_fp8_e4m3fn.safetensors", "diffusion_models",
          "Qwen-Image-Edit 2509, fp8 (Qwen workflow)", f"{HF}/Comfy-Org/Qwen-Image-Edit_ComfyUI",
          _hf_file("Comfy-Org/Qwen-Image-Edit_ComfyUI", "split_files/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors")),
    _file("qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders",
          "Qwen2.5-VL 7B text encoder for Qwen-Image, fp8 (Qwen workflow)", f"{HF}/Comfy-Org/Qwen-Image_ComfyUI",
          _hf_file("Comfy-Org/Qwen-Image_ComfyUI", "split_files/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"),
          "cb5636d852a0ea6a9075ab1bef496c0db7aef13c02350571e388aea959c5c0b4", _LFS),
    _file("qwen_image_vae.safetensors", "vae", "Qwen-Image VAE (Qwen workflow)", f"{HF}/Comfy-Org/Qwen-Image_ComfyUI",
          _hf_file("Comfy-Org/Qwen-Image_ComfyUI", "split_files/vae/qwen_image_vae.safetensors"),
          "a70580f0213e67967ee9c95f05bb400e8fb08307e017a924bf3441223e023d1f", _LFS),
)

# Where to get a model for a folder when the name asked for is not one the catalogue knows (a
# fine-tune, another size, the "(none installed ...)" placeholder): full sentences for errors.
_FOLDER_HINTS = {
    "LLM": (f"Vision-language models are Hugging Face folders, e.g. {HF}/Qwen/Qwen2.5-VL-3B-Instruct: "
            "download the whole repository into models/LLM/Qwen2.5-VL-3B-Instruct."),
    "sams": (f"Segment-anything checkpoints: {_SAM_SRC} (e.g. "
             "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth into models/sams/)."),
    "ipadapter": (f"Plain IP-Adapter files: {HF}/{_IPA} (e.g. "
                  f"{_hf_file(_IPA, 'models/ip-adapter_sd15.safetensors')} into models/ipadapter/)."),
    "clip_vision": (f"CLIP ViT-L/14: {HF}/openai/clip-vit-large-patch14 (model.safetensors saved as "
                    "models/clip_vision/clip_vit_large_patch14.safetensors, or the whole repository as a folder)."),
    "text_encoders": (f"FLAN-T5: {HF}/google/flan-t5-base (download the whole repository into "
                      "models/text_encoders/flan-t5-base)."),
    "metrics": "The networks and their sources are listed in the README, 'Measuring edit quality'.",
}
_FOLDER_HINTS["contextedit"] = next(e.how for e in CATALOG if e.directory == "contextedit")

# The model inputs of each loader node (stock loaders included) and the folders each one reads;
# "off" values (e.g. "none") name no model.
LOADER_INPUTS = {
    "ContextEditLoadVLM": {"model_name": ("LLM",)},
    "ContextEditLoadSAM": {"sam_name": ("sams",)},
    "ContextEditLoadRegionPredictor": {"region_predictor": ("contextedit",), "clip_vision": ("clip_vision",),
                                       "text_encoder": ("text_encoders", "LLM"),
                                       "clip_text": ("clip_vision", "text_encoders")},
    "ContextEditImageStream": {"ipadapter": ("ipadapter",)},
    "CheckpointLoaderSimple": {"ckpt_name": ("checkpoints",)},
    "UNETLoader": {"unet_name": ("diffusion_models",)},
    "CLIPLoader": {"clip_name": ("text_encoders",)},
    "DualCLIPLoader": {"clip_name1": ("text_encoders",), "clip_name2": ("text_encoders",)},
    "VAELoader": {"vae_name": ("vae",)},
    "CLIPVisionLoader": {"clip_name": ("clip_vision",)},
}
OFF_VALUES = ("none", "none (test-time mode)")
LOADER_DIRECTORIES = {node: tuple(dict.fromkeys(d for dirs in inputs.values() for d in dirs))
                      for node, inputs in LOADER_INPUTS.items()}


def lookup(name: str, directory=None) -> ModelEntry | None:
    """The entry named ``name`` (as a loader widget shows it); ``directory`` (a folder name or a
    tuple of them) restricts it to entries placed in (or also searched in) those folders."""
    if not isinstance(name, str):
        return None
    wanted = (directory,) if isinstance(directory, str) else tuple(directory or ())
    for entry in CATALOG:
        if entry.name == name and (not wanted or set(wanted) & set(entry.directories)):
            return entry
    return None


def folder_hint(directory: str) -> str | None:
    return _FOLDER_HINTS.get(directory)


def download_hint(name, kinds) -> str | None:
    """Where to get ``name`` searched in ``kinds`` (a folder name or several): the entry's hint,
    else where to get a model for the first of those folders that has a hint; None when nothing
    is known."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    entry = lookup(name, kinds)
    if entry is not None:
        return entry.hint()
    for kind in kinds:
        hint = folder_hint(kind)
        if hint:
            return hint
    return None


def _nodes(graph: dict):
    """(node_id, node_type, string values) of each node of a UI- or API-format workflow."""
    if isinstance(graph.get("nodes"), list):  # UI format (subgraph definitions included)
        nodes = list(graph["nodes"])
        for sub in (graph.get("definitions") or {}).get("subgraphs") or []:
            nodes.extend(sub.get("nodes") or [])
        for node in nodes:
            values = node.get("widgets_values") or []
            values = values.values() if isinstance(values, dict) else values
            yield node.get("id"), node.get("type"), [v for v in values if isinstance(v, str)]
    else:  # API format: {id: {"class_type", "inputs"}}
        for node_id, node in graph.items():
            if isinstance(node, dict) and "class_type" in node:
                inputs = node.get("inputs") or {}
                yield node_id, node["class_type"], [v for v in inputs.values() if isinstance(v, str)]


def entries_for_workflow(graph: dict) -> list:
    """[(node_id, node_type, ModelEntry)] for every catalogued model a workflow's loaders name,
    in node order (a name used by two loaders is listed twice)."""
    found = []
    for node_id, node_type, values in _nodes(graph):
        directories = LOADER_DIRECTORIES.get(node_type)
        if not directories:
            continue
        for value in values:
            entry = lookup(value, directories)
            if entry is not None:
                found.append((node_id, node_type, entry))
    return found


def properties_models(entry: ModelEntry) -> dict | None:
    """The ``properties.models`` item ComfyUI's frontend reads (name, url, directory[, hash,
    hash_type]), or None for a model it cannot describe.

    The pinned frontend (1.35.9) reports a model missing unless a file named exactly ``name`` is
    listed in ``directory``, and downloads ``url`` under ``name``: a Hugging Face folder (never a
    single listed file) would be reported missing even when installed, and an entry without a direct
    file download has nothing to download. Those get no metadata; their source is in the error the
    server gives and in the README."""
    if entry.layout != FILE or not entry.url:
        return None
    item = {"name": entry.name, "url": entry.url, "directory": entry.directory}
    if entry.sha256:
        item["hash"] = entry.sha256
        item["hash_type"] = "SHA256"
    return item
