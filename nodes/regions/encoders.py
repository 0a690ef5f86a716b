"""Frozen encoders the region predictor reads: CLIP vision, CLIP text and the T5 instruction encoder.

All load with transformers from local files only (``local_files_only=True``, safetensors, no remote
code), are put in eval mode with ``requires_grad_(False)``, and run in plain torch so gradients can
still flow *through* them to their inputs (L_CLIP back-propagates through the CLIP image encoder to
the composited image, and from there to the soft region).

- :class:`ClipVisionEncoder`: an HF folder (``CLIPVisionModelWithProjection`` or a full CLIP
  folder) or a single ``.safetensors`` state dict (transformers key names, as in ComfyUI's
  ``models/clip_vision``) plus a config (``config=`` path/dict, a sibling ``<name>.json`` or
  ``config.json``, or inferred for standard widths). Preprocessing (resize + CLIP normalisation)
  is done in torch, so it is differentiable.
- :class:`ClipTextEncoder`: CLIP text tower with projection (T_o, T_e of section 3.1).
- :class:`T5InstructionEncoder`: FLAN-T5 encoder features F_ins of the instruction.
"""

from __future__ import annotations

import json
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _infer_vision_config(state: dict):
    """A CLIPVisionConfig from a state dict's shapes (heads: hidden // 64, the OpenAI ViTs' rule)."""
    from transformers import CLIPVisionConfig

    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, _, patch_size, _ = patch.shape
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = round((positions - 1) ** 0.5)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    if hidden % 64:
        raise InputError("clip_vision", f"has hidden size {hidden}; its number of attention heads cannot be "
                         "inferred from the weights.", "Put the model's config.json next to the file "
                         "(as <name>.json) or use the Hugging Face folder.")
    proj = state.get("visual_projection.weight")
    return CLIPVisionConfig(
        hidden_size=hidden, patch_size=patch_size, image_size=grid * patch_size,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(layers), num_attention_heads=hidden // 64,
        projection_dim=proj.shape[0] if proj is not None else hidden, hidden_act="quick_gelu",
    )


class ClipVisionEncoder(nn.Module):
    """Frozen CLIP ViT: images [B, 3, H, W] in 0..1 -> (I [B, proj_dim], F [B, N, hidden])."""

    def __init__(self, model, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
        super().__init__()
        self.model = _freeze(model)
        cfg = model.config
        self.image_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        self.hidden_size = int(cfg.hidden_size)
        self.projection_dim = int(cfg.projection_dim)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def load(cls, path, config=None, device=None, dtype=None, input_name: str = "clip_vision") -> ClipVisionEncoder:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        path = str(path)
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise InputError(input_name, f"folder '{path}' has no config.json.",
                                 "Use a Hugging Face CLIP (vision) folder or a .safetensors file.")
            model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True, use_safetensors=True)
            pre = _read_json(os.path.join(path, "preprocessor_config.json")) or {}
            mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        elif os.path.isfile(path):
            from safetensors.torch import load_file

            if not path.endswith(".safetensors"):
                raise InputError(input_name, f"'{os.path.basename(path)}' is not a .safetensors file.",
                                 "Convert it to safetensors (weights-only loading) or use the HF folder.")
            state = load_file(path)
            state = {k[len("model."):] if k.startswith("model.vision_model.") else k: v for k, v in state.items()}
            if "vision_model.embeddings.patch_embedding.weight" not in state:
                raise InputError(input_name, f"'{os.path.basename(path)}' is not a CLIP vision state dict "
                                 "(no vision_model.embeddings.patch_embedding.weight).",
                                 "Use a transformers-format CLIP vision file or folder.")
            if config is None:
                for candidate in (os.path.splitext(path)[0] + ".json", os.path.join(os.path.dirname(path), "config.json")):
                    if os.path.isfile(candidate):
                        config = candidate
                        break
            if config is None:
                vcfg = _infer_vision_config(state)
            elif isinstance(config, CLIPVisionConfig):
                vcfg = config
            else:
                data = config if isinstance(config, dict) else _read_json(config)
                if data is None:
                    raise InputError(input_name, f"config '{config}' is unreadable.", "Pass a CLIP config.json.")
                data = data.get("vision_config", data)
                data = {k: v for k, v in data.items() if k not in ("architectures", "model_type", "transformers_version")}
                vcfg = CLIPVisionConfig(**data)
            model = CLIPVisionModelWithProjection(vcfg)
            missing, _ = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if "position_ids" not in k]
            if missing:
                raise InputError(input_name, f"weights miss {len(missing)} tensors (e.g. {missing[0]}).",
                                 "Use a CLIP vision model with a projection (…WithProjection) and its config.")
        else:
            raise InputError(input_name, f"'{path}' does not exist.", "Pick a CLIP vision file or folder.")
        encoder = cls(model, mean, std)
        if device is not None or dtype is not None:
            encoder.to(device=device, dtype=dtype)
        return encoder

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] 0..1 -> CLIP input (squashed to image_size square, normalised); differentiable."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError("image", f"must be [B, 3, H, W], got {tuple(images.shape)}.", "Pass an RGB image batch.")
        size = (self.image_size, self.image_size)
        dtype = self.mean.dtype
        x = images.to(dtype)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor):
        """-> (image_embeds [B, projection_dim] = E_v(X)^[CLS], patch_features [B, N, hidden] = E_v(X)^[patches])."""
        out = self.model(pixel_values=self.preprocess(images).to(self.model.dtype), output_hidden_states=False)
        return out.image_embeds, out.last_hidden_state[:, 1:]


def _load_text_encoder(cls, model_cls, path, device, input_name, problem, fix):
    """A frozen text encoder ``cls(model, tokenizer)`` from a local Hugging Face folder (no hub)."""
    from transformers import AutoTokenizer

    path = str(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise InputError(input_name, f"'{path}' {problem}", fix)
    model = model_cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = cls(model, tokenizer)
    if device is not None:
        encoder.to(device)
    return encoder


class ClipTextEncoder(nn.Module):
    """Frozen CLIP text tower with projection: list of strings -> T [B, projection_dim]."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.projection_dim = int(model.config.projection_dim)

    @classmethod
    def load(cls, path, device=None, input_name: str = "clip_text") -> ClipTextEncoder:
        from transformers import CLIPTextModelWithProjection

        return _load_text_encoder(cls, CLIPTextModelWithProjection, path, device, input_name,
                                  "is not a Hugging Face folder (no config.json).",
                                  "Use a CLIP folder that holds the text tower and tokenizer "
                                  "(e.g. openai/clip-vit-large-patch14).")

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, texts) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        max_len = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77), 77)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(**batch).text_embeds.float()


class T5InstructionEncoder(nn.Module):
    """Frozen (FLAN-)T5 encoder: list of instructions -> (F_ins [B, L, d_model], mask [B, L])."""

    def __init__(self, model, tokenizer, max_length: int = 128):
        super().__init__()
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.hidden_size = int(model.config.d_model)

    @classmethod
    def load(cls, path, device=None, input_name: str = "text_encoder") -> T5InstructionEncoder:
        from transformers import T5EncoderModel

        return _load_text_encoder(cls, T5EncoderModel, path, device, input_name,
                                  "is not a Hugging Face T5 folder (no config.json).",
                                  "Use a FLAN-T5 folder such as google/flan-t5-base.")

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, instructions):
        instructions = [instructions] if isinstance(instructions, str) else list(instructions)
        for text in instructions:
            if not isinstance(text, str) or not text.strip():
                raise InputError("instruction", "is empty.", "Write what to edit, e.g. 'make the car red'.")
        batch = self.tokenizer(instructions, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        features = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return features.float(), batch["attention_mask"]
