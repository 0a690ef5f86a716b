"""The metric networks: which files a user places, where, and how they are loaded (local files only).

Every file lives in the ``metrics`` model folder (``ComfyUI/models/metrics``, or any ``metrics:``
path of extra_model_paths.yaml); the CLI takes ``--models DIR`` instead. For each network the
first name found wins:

==================  ===================================================================================
network             names looked up (in this order)
==================  ===================================================================================
CLIP ViT-L/14       ``clip-vit-large-patch14/`` (HF folder of openai/clip-vit-large-patch14: config.json,
                    model.safetensors, tokenizer files, preprocessor_config.json)
CLIP ViT-B/32       ``clip-vit-base-patch32/`` (HF folder of openai/clip-vit-base-patch32)
DINO ViT-B/8        ``dino_vitb8.safetensors``, ``dino_vitbase8_pretrain.pth`` (official DINO release)
DINO ViT-S/16       ``dino_vits16.safetensors``, ``dino_deitsmall16_pretrain.pth`` (official DINO release)
LPIPS backbone      ``squeezenet1_1-b8a52dc0.pth`` (torchvision's ImageNet SqueezeNet 1.1),
                    ``squeezenet1_1.safetensors``
LPIPS linear heads  ``lpips_squeeze.pth`` (optional: torchmetrics installs the same file)
==================  ===================================================================================

Nothing is downloaded: CLIP loads with ``local_files_only=True``, DINO is a timm model created
without pretrained weights and filled from the file, LPIPS is built with a random backbone and
filled from the files (see lpips_net.py). A missing network raises ModelNotFoundError naming the
file names, the folders searched and where to download it (nodes/model_catalog.py). Loaded
networks are cached per (file, device); under ComfyUI a network leaves the cache when ComfyUI
unloads it (Unload models: the node passes :func:`forget` as the ManagedModel's ``on_unload``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from ..errors import ModelNotFoundError
from ..model_catalog import lookup
from ..model_folders import resolve_model

KIND = "metrics"


@dataclass(frozen=True)
class NetworkSpec:
    key: str
    label: str
    names: tuple
    what: str


NETWORKS = {
    "clip_l14": NetworkSpec("clip_l14", "CLIP ViT-L/14", ("clip-vit-large-patch14",),
                            "the Hugging Face folder of openai/clip-vit-large-patch14 (config.json, "
                            "model.safetensors, tokenizer files, preprocessor_config.json)"),
    "clip_b32": NetworkSpec("clip_b32", "CLIP ViT-B/32", ("clip-vit-base-patch32",),
                            "the Hugging Face folder of openai/clip-vit-base-patch32 (config.json, "
                            "model.safetensors, tokenizer files, preprocessor_config.json)"),
    "dino_b8": NetworkSpec("dino_b8", "DINO ViT-B/8", ("dino_vitb8.safetensors", "dino_vitbase8_pretrain.pth"),
                           "DINO ViT-B/8 weights (the official dino_vitbase8_pretrain.pth, or a safetensors "
                           "copy named dino_vitb8.safetensors)"),
    "dino_s16": NetworkSpec("dino_s16", "DINO ViT-S/16", ("dino_vits16.safetensors", "dino_deitsmall16_pretrain.pth"),
                            "DINO ViT-S/16 weights (the official dino_deitsmall16_pretrain.pth, or a safetensors "
                            "copy named dino_vits16.safetensors)"),
    "lpips": NetworkSpec("lpips", "LPIPS (SqueezeNet)", ("squeezenet1_1-b8a52dc0.pth", "squeezenet1_1.safetensors"),
                         "torchvision's ImageNet SqueezeNet 1.1 state dict (squeezenet1_1-b8a52dc0.pth) for "
                         "LPIPS; optionally lpips_squeeze.pth (LPIPS linear heads) beside it"),
}
LPIPS_LIN_NAMES = ("lpips_squeeze.pth",)

_CACHE: dict = {}


def folder_paths_for(dirs) -> SimpleNamespace:
    """A folder_paths-shaped object listing ``dirs`` under ``metrics`` (for the CLI and tests)."""
    dirs = [str(d) for d in dirs]
    return SimpleNamespace(folder_names_and_paths={KIND: (dirs, set())}, models_dir=dirs[0] if dirs else "",
                           get_filename_list=lambda kind: [])


def locate(network: str, fp=None) -> str:
    """Path of the first file / folder of ``network`` found; ModelNotFoundError naming all names."""
    spec = NETWORKS[network]
    searched = []
    for name in spec.names:
        try:
            return resolve_model(KIND, name, fp)
        except ModelNotFoundError as error:
            searched = error.searched
    sources = [entry.hint() for entry in (lookup(n, KIND) for n in spec.names) if entry is not None]
    raise ModelNotFoundError(KIND, " or ".join(spec.names), searched,
                             f"{spec.what}, needed for {spec.label}", source=" ".join(sources) or None)


def _locate_optional(names, fp):
    for name in names:
        try:
            return resolve_model(KIND, name, fp)
        except ModelNotFoundError:
            continue
    return None


class MetricModels:
    """Lazily loaded metric networks. ``fp`` is ComfyUI's folder_paths (node) or folder_paths_for().

    ``manager(engine, module, network)``, when given, wraps a freshly loaded network (loaded on
    ``device``, the offload device then) in an object whose ``load()`` puts it on the compute device
    and returns the engine: the node passes ComfyUI's memory manager (nodes/managed.py), so the
    networks are offloaded like every other model instead of staying on the GPU. An instance (one
    node run) keeps what it handed out, so a network ComfyUI unloads mid-run (and the cache forgets)
    is not read from disk again within the run."""

    def __init__(self, fp=None, device="cpu", manager=None):
        self.fp = fp
        self.device = device
        self.manager = manager
        self._held = {}  # network -> engine or wrapper: this instance keeps what it used, even if forgotten

    @classmethod
    def from_dirs(cls, dirs, device="cpu") -> MetricModels:
        return cls(folder_paths_for(dirs), device)

    def _cached(self, network, path, build):
        key = (network, path, str(self.device))
        if key not in _CACHE:
            _CACHE[key] = build(path)
        return _CACHE[key]

    def get(self, network: str):
        held = self._held.get(network)
        if held is None:
            held = engine = self._load(network)
            if self.manager is not None:
                key = ("managed", id(engine))
                held = _CACHE.get(key)
                if held is None:
                    module = getattr(engine, "model", engine) if network.startswith("clip") else engine
                    held = _CACHE[key] = self.manager(engine, module, network)
            self._held[network] = held
        return held if self.manager is None else held.load()

    def _load(self, network: str):
        path = locate(network, self.fp)
        if network in ("clip_l14", "clip_b32"):
            from .clip_sim import ClipModel

            return self._cached(network, path, lambda p: ClipModel.load(p, device=self.device))
        if network in ("dino_b8", "dino_s16"):
            from .dino import load_state, vit_from_state

            return self._cached(network, path, lambda p: vit_from_state(load_state(p)).to(self.device))
        if network == "lpips":
            from .lpips_net import build_lpips_squeeze

            lin = _locate_optional(LPIPS_LIN_NAMES, self.fp)
            return self._cached(network, f"{path}|{lin}",
                                lambda _p: build_lpips_squeeze(path, lin).to(self.device))
        raise KeyError(network)


def forget(engine) -> None:
    """Drop ``engine`` and its memory-manager wrapper from the cache (ComfyUI unloaded it)."""
    for key in [k for k, v in _CACHE.items() if v is engine or k == ("managed", id(engine))]:
        del _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()
