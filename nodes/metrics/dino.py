"""DINO ViT features with timm (weights from local files): PIE-Bench structure distance, DINO similarity.

The reference code loads ``torch.hub.load('facebookresearch/dino:main', name)``. We build the same
network with ``timm`` (``pretrained=False``; timm's ViT has DINO's parameter names) and load the
official checkpoint (``dino_vitbase8_pretrain.pth`` / ``dino_deitsmall16_pretrain.pth``) or a
safetensors copy. The architecture is read from the weights' shapes; heads = width / 64 (the DINO
ViTs' head width).

- **Structure distance** (PIE-Bench, ViT-B/8): the image as float **0..255** (quirk kept: the
  reference applies the ImageNet normalisation to 0-255 values, not 0-1), resized so the short
  side is 224 (``Resize(224, max_size=480)``, bilinear without antialias, torchvision 0.13's tensor
  default), ImageNet-normalised; the keys of the last block's attention (layer 11 of 12), heads
  concatenated per token (CLS included), their cosine self-similarity matrix; the distance is the
  MSE between the two images' matrices. The whole images are compared (PIE-Bench's
  ``structure_distance`` metric takes no mask). PIE-Bench images are square (224 x 224 after the
  resize, so no position-embedding interpolation); for other aspect ratios timm interpolates the
  position embeddings (DINO's own interpolation differs slightly) and the pixels past the last whole
  patch are dropped, as DINO's strided patch convolution does.
- **DINO similarity** (MagicBrush, ViT-S/16): ``Resize(256, bicubic)``, ``CenterCrop(224)``,
  ``ToTensor``, ImageNet normalisation; cosine of the CLS tokens after the final norm (the DINO
  hub model's output).
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("teacher", "state_dict", "model"):  # DINO training checkpoints nest the nets
            if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
    state = {re.sub(r"^(module\.|backbone\.)+", "", k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def vit_from_state(state: dict):
    """A timm VisionTransformer matching a DINO state dict, weights loaded, eval, frozen."""
    from timm.models.vision_transformer import VisionTransformer

    for needed in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        if needed not in state:
            raise ValueError(f"not a DINO/timm ViT state dict (no '{needed}')")
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    tokens = state["pos_embed"].shape[1] - 1
    grid = round(tokens ** 0.5)
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    model = VisionTransformer(
        img_size=grid * patch, patch_size=patch, embed_dim=width, depth=depth,
        num_heads=max(1, width // 64), mlp_ratio=hidden / width, qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=0, dynamic_img_size=True,
    )
    model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


def _device(model):
    return next(model.parameters()).device


def structure_input(image_u8: np.ndarray) -> torch.Tensor:
    """PIE-Bench's ``global_transform`` on a 0..255 float image: [1, 3, h, w]."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.from_numpy(np.ascontiguousarray(image_u8).astype(np.float32)).permute(2, 0, 1)
    x = TF.resize(x, 224, interpolation=InterpolationMode.BILINEAR, max_size=480, antialias=False)
    x = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    return x.unsqueeze(0)


@torch.no_grad()
def last_block_keys(model, x: torch.Tensor) -> torch.Tensor:
    """Keys of the last block's attention, heads concatenated: [tokens, width] (DINO's qkv layout)."""
    captured = []
    ph, pw = model.patch_embed.patch_size
    # DINO's patch embedding is a stride-p convolution, which drops a remainder row/column of pixels;
    # timm asserts divisibility instead, so drop the remainder here (same result)
    x = x[..., : x.shape[-2] // ph * ph, : x.shape[-1] // pw * pw]
    handle = model.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(x.to(_device(model)))
    finally:
        handle.remove()
    qkv = captured[0][0]  # [tokens, 3 * width]
    tokens = qkv.shape[0]
    heads = model.blocks[-1].attn.num_heads
    keys = qkv.reshape(tokens, 3, heads, -1).permute(1, 2, 0, 3)[1]  # [heads, tokens, head_dim]
    return keys.transpose(0, 1).reshape(tokens, -1)


def cosine_self_similarity(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """PIE-Bench's ``attn_cosine_sim``: x x^T / max(|x_i||x_j|, eps)."""
    norms = x.norm(dim=1, keepdim=True)
    return (x @ x.T) / torch.clamp(norms @ norms.T, min=eps)


@torch.no_grad()
def structure_distance(model, source_u8: np.ndarray, edited_u8: np.ndarray) -> float:
    a = cosine_self_similarity(last_block_keys(model, structure_input(source_u8)))
    b = cosine_self_similarity(last_block_keys(model, structure_input(edited_u8)))
    return float(F.mse_loss(b, a))


def cls_input(image_u8: np.ndarray) -> torch.Tensor:
    """MagicBrush's DINO transform: Resize(256, bicubic), CenterCrop(224), ToTensor, ImageNet norm."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return transform(Image.fromarray(np.ascontiguousarray(image_u8))).unsqueeze(0)


@torch.no_grad()
def cls_features(model, image_u8: np.ndarray) -> torch.Tensor:
    """The CLS token after the final norm: [width] (what the DINO hub model returns)."""
    return model.forward_features(cls_input(image_u8).to(_device(model)))[0, 0].float().cpu()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """``1 - scipy.spatial.distance.cosine(a, b)``, MagicBrush's similarity, in float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a @ b) / (a.norm() * b.norm()))


def dino_similarity(model, a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    return cosine(cls_features(model, a_u8), cls_features(model, b_u8))
