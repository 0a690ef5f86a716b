"""IP-Adapter weight files (the format ComfyUI users keep in ``models/ipadapter``).

The plain IP-Adapter (``ip-adapter_sd15``, ``ip-adapter_sd15_light``, ``ip-adapter_sdxl``,
``ip-adapter_sdxl_vit-h``) stores

- ``image_proj.proj.weight`` [c*C, E], ``image_proj.proj.bias`` [c*C]: CLIP vision ``image_embeds``
  (width E) -> c tokens of the UNet's context width C;
- ``image_proj.norm.weight`` / ``.bias`` [C]: a LayerNorm on each token;
- ``ip_adapter.{n}.to_k_ip.weight`` / ``.to_v_ip.weight`` [inner, C] for n = 1, 3, 5, ...: one pair
  per cross-attention layer. n is the index into diffusers' ``unet.attn_processors`` (attn1 and
  attn2 of every transformer block alternate, attn1 has no weights), whose order is: down blocks,
  up blocks, mid block. SD1.5 has 16 such layers, SDXL 70.

The ``.bin`` files hold the same tensors as ``{"image_proj": {"proj.weight": ...}, "ip_adapter":
{"1.to_k_ip.weight": ...}}``. Variants with a Resampler (``-plus``), an MLP projection (FaceID,
``full-face``) or LoRA weights are other formats and are refused with a message saying so.

Plain torch + safetensors: importable without ComfyUI.
"""

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

PROJ_W, PROJ_B = "image_proj.proj.weight", "image_proj.proj.bias"
NORM_W, NORM_B = "image_proj.norm.weight", "image_proj.norm.bias"
LAYER_KEY = re.compile(r"^ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight$")
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which IP-Adapter's ImageProjModel uses

INPUT = "ipadapter"


@dataclass
class IPAdapterWeights:
    """The tensors of one plain IP-Adapter file, checked for internal consistency."""

    proj_weight: torch.Tensor          # [c*C, E]
    proj_bias: torch.Tensor            # [c*C]
    norm_weight: torch.Tensor          # [C]
    norm_bias: torch.Tensor            # [C]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (to_k_ip, to_v_ip) per layer, in n order
    name: str = "ipadapter"

    @property
    def context_dim(self) -> int:
        return self.norm_weight.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.proj_weight.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.proj_weight.shape[0] // self.context_dim

    @property
    def layer_widths(self) -> list[int]:
        return [k.shape[0] for k, _ in self.layers]

    def image_tokens(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP vision ``image_embeds`` [B, E] -> image tokens [B, c, C] (IP-Adapter's ImageProjModel)."""
        if image_embeds.dim() != 2 or image_embeds.shape[1] != self.embed_dim:
            raise InputError(
                "clip_vision", f"gives image embeddings of shape {tuple(image_embeds.shape)}, but '{self.name}' "
                f"expects [batch, {self.embed_dim}] (ViT-H gives 1024, ViT-bigG 1280, ViT-L 768).",
                "Use the CLIP vision model this IP-Adapter was trained with (see its model card).")
        x = image_embeds.float()
        tokens = F.linear(x, self.proj_weight.float(), self.proj_bias.float())
        tokens = tokens.reshape(x.shape[0], self.num_tokens, self.context_dim)
        return F.layer_norm(tokens, (self.context_dim,), self.norm_weight.float(), self.norm_bias.float(),
                            eps=LAYER_NORM_EPS)


def _refuse_variant(keys, name):
    if any(k.startswith(("image_proj.latents", "image_proj.layers.")) for k in keys):
        what = "an IP-Adapter Plus file (Resampler image projection)"
    elif any(k.startswith(("image_proj.proj.0.", "image_proj.proj.2.")) for k in keys):
        what = "an IP-Adapter FaceID / full-face file (MLP image projection)"
    elif any(k.startswith("image_proj.") for k in keys):
        what = "an IP-Adapter variant with an unknown image projection"
    else:
        what = "not an IP-Adapter file (no image_proj.* keys)"
    raise InputError(INPUT, f"'{name}' is {what}.",
                     "Use a plain IP-Adapter (ip-adapter_sd15, ip-adapter_sd15_light, ip-adapter_sdxl or "
                     "ip-adapter_sdxl_vit-h) in models/ipadapter.")


def check_layout(shapes: dict[str, Sequence[int]], name: str = "ipadapter") -> list[int]:
    """Validate the key names and shapes of a plain IP-Adapter; returns the layer numbers n in order.

    Works on shapes alone, so a published layout can be checked without its tensors.
    """
    keys = set(shapes)
    if not {PROJ_W, PROJ_B, NORM_W, NORM_B} <= keys:
        _refuse_variant(keys, name)
    pw, pb, nw, nb = (tuple(shapes[k]) for k in (PROJ_W, PROJ_B, NORM_W, NORM_B))
    if len(nw) != 1 or nb != nw or len(pw) != 2 or pb != (pw[0],) or pw[0] % nw[0] != 0:
        raise InputError(INPUT, f"'{name}' has inconsistent image_proj shapes (proj {pw}, bias {pb}, norm {nw}).",
                         "The file is damaged or not a plain IP-Adapter; download it again.")
    context_dim = nw[0]
    found: dict[int, dict[str, tuple]] = {}
    for key in keys:
        if key.startswith("image_proj."):
            if key not in (PROJ_W, PROJ_B, NORM_W, NORM_B):
                _refuse_variant(keys, name)
            continue
        m = LAYER_KEY.match(key)
        if m is None:
            raise InputError(INPUT, f"'{name}' has an unexpected key '{key}' (a LoRA or another adapter format?).",
                             "Use a plain IP-Adapter file (image_proj.* and ip_adapter.N.to_k_ip/to_v_ip only).")
        found.setdefault(int(m.group(1)), {})[m.group(2)] = tuple(shapes[key])
    if not found:
        raise InputError(INPUT, f"'{name}' has no ip_adapter.N.to_k_ip / to_v_ip layers.",
                         "The file is damaged or not an IP-Adapter; download it again.")
    numbers = sorted(found)
    expected = list(range(1, 2 * len(numbers), 2))
    if numbers != expected:
        raise InputError(INPUT, f"'{name}' numbers its layers {numbers[:6]}..., not 1, 3, 5, ... "
                         f"(one per cross-attention layer).", "Use a plain IP-Adapter file.")
    for n in numbers:
        pair = found[n]
        if set(pair) != {"to_k_ip", "to_v_ip"}:
            raise InputError(INPUT, f"'{name}' layer {n} lacks {({'to_k_ip', 'to_v_ip'} - set(pair)).pop()}.",
                             "The file is damaged; download it again.")
        k, v = pair["to_k_ip"], pair["to_v_ip"]
        if len(k) != 2 or k != v or k[1] != context_dim:
            raise InputError(INPUT, f"'{name}' layer {n} has to_k_ip {k} / to_v_ip {v}; both must be "
                             f"[inner, {context_dim}].", "The file is damaged; download it again.")
    return numbers


def flatten_bin(obj) -> dict[str, torch.Tensor]:
    """{"image_proj": {...}, "ip_adapter": {...}} (the .bin layout) -> flat safetensors-style keys."""
    if isinstance(obj, dict) and set(obj) >= {"image_proj", "ip_adapter"} and \
            all(isinstance(obj[k], dict) for k in ("image_proj", "ip_adapter")):
        flat = {f"image_proj.{k}": v for k, v in obj["image_proj"].items()}
        flat.update({f"ip_adapter.{k}": v for k, v in obj["ip_adapter"].items()})
        return flat
    if isinstance(obj, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return dict(obj)
    raise InputError(INPUT, "holds a pickle that is not an IP-Adapter state dict "
                     "({'image_proj': {...}, 'ip_adapter': {...}}).", "Use a plain IP-Adapter .bin or .safetensors.")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    name = os.path.basename(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as error:
            raise InputError(INPUT, f"'{name}' could not be read as safetensors ({error}).",
                             "The file is damaged; download it again.") from error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(INPUT, f"'{name}' could not be read as a weights-only torch file ({error}).",
                         "Use a .safetensors or a plain .bin IP-Adapter.") from error
    return flatten_bin(obj)


def from_state_dict(sd: dict[str, torch.Tensor], name: str = "ipadapter") -> IPAdapterWeights:
    numbers = check_layout({k: tuple(v.shape) for k, v in sd.items()}, name)
    layers = [(sd[f"ip_adapter.{n}.to_k_ip.weight"], sd[f"ip_adapter.{n}.to_v_ip.weight"]) for n in numbers]
    return IPAdapterWeights(sd[PROJ_W], sd[PROJ_B], sd[NORM_W], sd[NORM_B], layers, name)


def load_ipadapter(path: str) -> IPAdapterWeights:
    """Read and check a plain IP-Adapter file (.safetensors, or .bin via weights-only torch.load)."""
    return from_state_dict(read_state_dict(path), os.path.basename(path))


def match_layers(weights: IPAdapterWeights, places: Sequence, widths: Sequence[tuple[int, int]]) -> dict:
    """{place: (to_k_ip, to_v_ip)} for a UNet whose cross-attention layers, in IP-Adapter order, are
    ``places`` with (inner width, context width) ``widths``. Raises when the file is for another model."""
    n_file, n_model = len(weights.layers), len(places)
    if n_file != n_model:
        kinds = {16: "SD1.x", 70: "SDXL"}
        raise InputError(INPUT, f"'{weights.name}' has {n_file} cross-attention layers "
                         f"({kinds.get(n_file, 'another model')}) but the model has {n_model} "
                         f"({kinds.get(n_model, 'this UNet')}).", "Pick the IP-Adapter made for this model family.")
    out = {}
    for i, (place, (inner, ctx)) in enumerate(zip(places, widths)):
        k, v = weights.layers[i]
        if tuple(k.shape) != (inner, ctx):
            raise InputError(INPUT, f"'{weights.name}' layer {2 * i + 1} is {tuple(k.shape)} but the model's "
                             f"cross-attention at {place} needs ({inner}, {ctx}).",
                             "Pick the IP-Adapter made for this model family.")
        out[place] = (k, v)
    return out
