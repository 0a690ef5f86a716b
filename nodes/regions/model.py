"""The learnable-region predictor of "Beyond Editing Pairs" (arXiv 2505.19352), section 3.2.

CLIP ViT patch features F_img (projected to ``d_model``) are the queries of a cross-attention over
the FLAN-T5 features of the instruction (eq. 1, giving F_Editedimg), a self-attention refines them
(eq. 2, giving F_imgRegion), and a token-wise MLP + sigmoid gives one edit probability per patch
(eq. 3, P_region). ``f_sem`` (section 3.3) projects pooled patch features into the CLIP joint
embedding space for L_semAlign. The probability map is reshaped to the patch grid, thresholded into
M_region and upsampled to any image size (the "multi-scale" region: its extent follows the
instruction, from a few patches to the whole image).

Deviation from the equations, on purpose: each attention is wrapped in a pre-LayerNorm residual
block (``config.residual``). Eq. 1 alone makes every patch a convex mix of instruction tokens,
which throws away what the patch looked like; with ``residual=False`` the module is eq. 1-3 verbatim.

Everything is plain torch; sizes live in :class:`RegionPredictorConfig`, so tests build it tiny.
Checkpoints are one safetensors file whose metadata holds the config as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

CHECKPOINT_FORMAT = "contextedit-region-predictor"
CHECKPOINT_VERSION = "1"


@dataclass
class RegionPredictorConfig:
    """Sizes of the head. Defaults are the paper's: CLIP ViT-L/14 + FLAN-T5-base, d = 768."""

    vision_dim: int = 1024   # CLIP vision hidden size (ViT-L/14: 1024)
    text_dim: int = 768      # instruction encoder width (FLAN-T5-base d_model: 768)
    d_model: int = 768       # the paper's d (section 4: token dimension 768)
    embed_dim: int = 768     # CLIP joint embedding size (ViT-L/14 projection: 768), f_sem's output
    num_heads: int = 1       # eq. 1/2 are single-head; more heads split d as usual
    mlp_hidden: int = 256    # hidden width of the token-wise region MLP (eq. 3)
    sem_hidden: int = 768    # hidden width of f_sem
    threshold: float = 0.5   # P_region >= threshold -> M_region = 1
    residual: bool = True    # pre-LN residual attention blocks (see module docstring)

    def __post_init__(self):
        for name in ("vision_dim", "text_dim", "d_model", "embed_dim", "num_heads", "mlp_hidden", "sem_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(name, f"must be a positive integer, got {value!r}.", "Fix the predictor config.")
        if self.d_model % self.num_heads:
            raise InputError("num_heads", f"{self.num_heads} does not divide d_model {self.d_model}.",
                             "Pick a divisor of d_model.")
        if not 0.0 < float(self.threshold) < 1.0:
            raise InputError("threshold", f"must be in (0, 1), got {self.threshold!r}.", "Use e.g. 0.5.")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RegionPredictorConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Attention(nn.Module):
    """softmax(Q K^T / sqrt(d_head)) V with W_Q, W_K, W_V in R^{d x d} (eq. 1 and 2)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)

    def forward(self, query, context, context_mask=None):
        b, n, d = query.shape
        h = self.num_heads
        q = self.q(query).view(b, n, h, d // h).transpose(1, 2)
        k = self.k(context).view(b, context.shape[1], h, d // h).transpose(1, 2)
        v = self.v(context).view(b, context.shape[1], h, d // h).transpose(1, 2)
        mask = None
        if context_mask is not None:
            mask = context_mask.to(torch.bool)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, n, d)


@dataclass
class RegionOutput:
    """Everything one forward pass produces. Shapes: B batch, N = g*g patches, d = d_model."""

    logits: torch.Tensor             # [B, N] before the sigmoid
    probs: torch.Tensor              # [B, N] P_region (eq. 3)
    image_features: torch.Tensor     # [B, N, d] F_img after the input projection
    edited_features: torch.Tensor    # [B, N, d] F_Editedimg (eq. 1)
    region_features: torch.Tensor    # [B, N, d] F_imgRegion (eq. 2)
    threshold: float

    @property
    def grid(self) -> int:
        return math.isqrt(self.probs.shape[1])

    @property
    def soft(self) -> torch.Tensor:
        """[B, 1, g, g] probability map on the patch grid (differentiable)."""
        g = self.grid
        return self.probs.view(-1, 1, g, g)

    @property
    def mask(self) -> torch.Tensor:
        """[B, 1, g, g] M_region: the thresholded map (0/1 floats, no gradient)."""
        return (self.soft.detach() >= self.threshold).to(self.probs.dtype)

    def soft_at(self, height: int, width: int) -> torch.Tensor:
        """[B, 1, H, W] the soft map bilinearly upsampled to an image size (differentiable)."""
        return F.interpolate(self.soft, size=(int(height), int(width)), mode="bilinear", align_corners=False)

    def mask_at(self, height: int, width: int) -> torch.Tensor:
        """[B, 1, H, W] M_region at an image size: upsampled soft map, then thresholded."""
        return (self.soft_at(height, width).detach() >= self.threshold).to(self.probs.dtype)


class RegionPredictor(nn.Module):
    """Cross-attention + self-attention + token-wise MLP region head, with f_sem (section 3.2-3.3)."""

    def __init__(self, config: RegionPredictorConfig | None = None):
        super().__init__()
        self.config = config = config or RegionPredictorConfig()
        d = config.d_model
        self.image_proj = nn.Linear(config.vision_dim, d)
        self.text_proj = nn.Linear(config.text_dim, d)
        self.cross_norm_q = nn.LayerNorm(d)
        self.cross_norm_kv = nn.LayerNorm(d)
        self.cross_attn = Attention(d, config.num_heads)
        self.self_norm = nn.LayerNorm(d)
        self.self_attn = Attention(d, config.num_heads)
        self.region_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.mlp_hidden), nn.GELU(),
                                        nn.Linear(config.mlp_hidden, 1))
        self.f_sem = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.sem_hidden), nn.GELU(),
                                   nn.Linear(config.sem_hidden, config.embed_dim))

    # ------------------------------------------------------------------ checks

    def check_inputs(self, patch_features, instruction_features, instruction_mask=None):
        cfg = self.config
        if patch_features.dim() != 3 or patch_features.shape[-1] != cfg.vision_dim:
            raise InputError("clip_vision", f"gives patch features of shape {tuple(patch_features.shape)}, but the "
                             f"region predictor expects [B, N, {cfg.vision_dim}].",
                             "Use the CLIP vision model the predictor was trained with.")
        n = patch_features.shape[1]
        if n < 1 or math.isqrt(n) ** 2 != n:
            raise InputError("clip_vision", f"gives {n} patch tokens, not a square grid.",
                             "Use a ViT CLIP vision model (square patch grid, one class token).")
        if instruction_features.dim() != 3 or instruction_features.shape[-1] != cfg.text_dim:
            raise InputError("text_encoder", f"gives features of shape {tuple(instruction_features.shape)}, but the "
                             f"region predictor expects [B, L, {cfg.text_dim}].",
                             "Use the T5 encoder the predictor was trained with.")
        if instruction_features.shape[0] != patch_features.shape[0]:
            raise InputError("instruction", f"batch {instruction_features.shape[0]} does not match the image batch "
                             f"{patch_features.shape[0]}.", "Pass one instruction per image (or one for all).")
        if instruction_mask is not None and not bool(instruction_mask.to(torch.bool).any(dim=1).all()):
            raise InputError("instruction", "is empty (no tokens).", "Write what to edit, e.g. 'make the car red'.")

    # ------------------------------------------------------------------ forward

    def forward(self, patch_features, instruction_features, instruction_mask=None) -> RegionOutput:
        """``patch_features`` [B, N, vision_dim] (CLIP, no class token), ``instruction_features``
        [B, L, text_dim] (T5), ``instruction_mask`` [B, L] (1 = real token) -> :class:`RegionOutput`."""
        self.check_inputs(patch_features, instruction_features, instruction_mask)
        dtype = self.image_proj.weight.dtype
        f_img = self.image_proj(patch_features.to(dtype))
        f_ins = self.text_proj(instruction_features.to(dtype))
        if self.config.residual:
            f_edit = f_img + self.cross_attn(self.cross_norm_q(f_img), self.cross_norm_kv(f_ins), instruction_mask)
            normed = self.self_norm(f_edit)
            f_region = f_edit + self.self_attn(normed, normed)
        else:  # eq. 1 and 2 verbatim
            f_edit = self.cross_attn(f_img, f_ins, instruction_mask)
            f_region = self.self_attn(f_edit, f_edit)
        logits = self.region_mlp(f_region).squeeze(-1)
        return RegionOutput(logits=logits, probs=torch.sigmoid(logits), image_features=f_img,
                            edited_features=f_edit, region_features=f_region, threshold=self.config.threshold)

    def semantic_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """f_sem: spatial features [B, N, d] -> [B, embed_dim] in CLIP space (mean over patches first)."""
        return self.f_sem(features.mean(dim=1))

    # ------------------------------------------------------------------ checkpoints

    def save(self, path, extra_metadata: dict | None = None) -> None:
        """One safetensors file; the config JSON is in the metadata, so loading needs nothing else."""
        from safetensors.torch import save_file

        metadata = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": self.config.to_json()}
        metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path, device=None, input_name: str = "region_predictor") -> RegionPredictor:
        """Load a checkpoint written by :meth:`save` (bit-exact); raises InputError naming ``input_name``."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
            raise InputError(input_name, f"'{path}' is not a readable safetensors file ({error}).",
                             "Pick a checkpoint written by the ContextEdit region trainer.") from None
        if metadata.get("format") != CHECKPOINT_FORMAT or "config" not in metadata:
            raise InputError(input_name, f"'{path}' is not a ContextEdit region-predictor checkpoint "
                             "(no region config in its metadata).",
                             "Pick a checkpoint written by nodes/regions/train.py.")
        model = cls(RegionPredictorConfig.from_json(metadata["config"]))
        state = load_file(str(path))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise InputError(input_name, f"weights do not match its config ({error}).",
                             "The file is damaged; retrain or re-download it.") from None
        model.eval().requires_grad_(False)
        if device is not None:
            model.to(device)
        return model
