"""CLIP similarities (transformers ``CLIPModel`` from a local Hugging Face folder, local files only).

Two image preprocessings, S, C, mean, std read from the folder's ``preprocessor_config.json``
(224 / 224 / OpenAI's mean and std for the real models):

- ``center_crop`` (default): OpenAI CLIP's ``preprocess`` on a PIL image: ``Resize(S, bicubic)`` of
  the short side, ``CenterCrop(C)``, ``ToTensor``, normalisation. That is what MagicBrush
  (``clip.load``) and, through the PIL-based ``CLIPProcessor`` of its time, torchmetrics'
  ``CLIPScore`` in PIE-Bench did.
- ``ip2p``: InstructPix2Pix's ``metrics/clip_similarity.py``: the image as a [0, 1] float tensor,
  ``F.interpolate`` to C x C (bicubic, ``align_corners=False``, no antialias; the aspect ratio is
  not kept and nothing is cropped), normalisation. (Its ``compute_metrics.py`` passes [-1, 1]
  images to that class, which documents [0, 1] input; we follow the class's documented input.)

Text is tokenised with the folder's tokenizer, truncated to 77.

- :func:`clip_score` (PIE-Bench, ViT-L/14): torchmetrics' CLIPScore, ``100 * max(cos(img, txt), 0)``.
- :func:`cosine` pairs (MagicBrush CLIP-I / CLIP-T with ViT-B/32; Emu Edit CLIP-img / CLIP-out with
  ViT-L/14 and the ``ip2p`` preprocessing): plain cosine of the projected embeddings, no scaling or clamp.
- :func:`direction_similarity` (Emu Edit / InstructPix2Pix CLIPdir): cos(E_img(out) - E_img(in),
  E_txt(target caption) - E_txt(source caption)).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _size(value, default):
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
        return default
    return int(value) if value else default


class ClipModel:
    """A frozen CLIPModel plus its tokenizer and preprocessing constants."""

    def __init__(self, model, tokenizer, resize=224, crop=224, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
        self.model = model
        self.tokenizer = tokenizer
        self.resize, self.crop = int(resize), int(crop)
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def load(cls, folder: str, device=None) -> ClipModel:
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        model.eval()
        model.requires_grad_(False)
        if device is not None:
            model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        pre = {}
        path = os.path.join(folder, "preprocessor_config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                pre = json.load(handle)
        image_size = int(model.config.vision_config.image_size)
        return cls(model, tokenizer, resize=_size(pre.get("size"), image_size),
                   crop=_size(pre.get("crop_size"), image_size),
                   mean=pre.get("image_mean", OPENAI_CLIP_MEAN), std=pre.get("image_std", OPENAI_CLIP_STD))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def preprocess(self, image_u8: np.ndarray, mode: str = "center_crop") -> torch.Tensor:
        if mode == "ip2p":
            x = torch.from_numpy(np.ascontiguousarray(image_u8).astype(np.float32) / 255).permute(2, 0, 1)[None]
            x = torch.nn.functional.interpolate(x, size=(self.crop, self.crop), mode="bicubic", align_corners=False)
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
            return ((x - mean) / std)[0]
        if mode != "center_crop":
            raise ValueError(f"unknown CLIP preprocessing '{mode}' (center_crop or ip2p)")
        from PIL import Image
        from torchvision import transforms

        transform = transforms.Compose([
            transforms.Resize(self.resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(self.crop),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])
        return transform(Image.fromarray(np.ascontiguousarray(image_u8)).convert("RGB"))

    @torch.no_grad()
    def image_features(self, images_u8, preprocess: str = "center_crop") -> torch.Tensor:
        """Projected image embeddings [B, P] (not normalised), float32 on CPU.

        One forward per image (as the reference scripts do): a batch may round differently per
        row, and equal images must give bit-equal embeddings."""
        rows = []
        for image in images_u8:
            pixels = self.preprocess(image, preprocess).unsqueeze(0).to(self.device)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            rows.append(self.model.visual_projection(pooled).float().cpu())
        return torch.cat(rows)

    @torch.no_grad()
    def text_features(self, texts) -> torch.Tensor:
        """Projected text embeddings [B, P] (not normalised), float32 on CPU; one forward per text."""
        rows = []
        for text in texts:
            tokens = self.tokenizer([text], truncation=True, max_length=77, return_tensors="pt")
            out = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                        attention_mask=tokens["attention_mask"].to(self.device))
            rows.append(self.model.text_projection(out.pooler_output).float().cpu())
        return torch.cat(rows)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> float:
    """a.b / (max(|a|, eps) max(|b|, eps)) in float64 (``F.cosine_similarity``'s guard: a zero vector,
    e.g. the image difference of an unchanged image in CLIPdir, gives 0, not NaN)."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a @ b) / (torch.clamp(a.norm(), min=eps) * torch.clamp(b.norm(), min=eps)))


def clip_score(clip: ClipModel, image_u8: np.ndarray, text: str) -> float:
    """torchmetrics CLIPScore: 100 * max(cos(image, text), 0)."""
    return max(100.0 * cosine(clip.image_features([image_u8])[0], clip.text_features([text])[0]), 0.0)


def direction_similarity(clip: ClipModel, source_u8, edited_u8, source_caption: str, target_caption: str,
                         preprocess: str = "ip2p") -> float:
    img = clip.image_features([source_u8, edited_u8], preprocess)
    txt = clip.text_features([source_caption, target_caption])
    return cosine(img[1] - img[0], txt[1] - txt[0])
