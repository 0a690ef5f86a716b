"""From a batch of (image, instruction, t_o, t_e, generated image) to L_total, with a real gradient path.

The paper conditions a frozen generator on the thresholded region (appendix A: at every denoising
step z_{t-1} = m * z_{t-1}^model + (1 - m) * z_{t-1}^src_noised, eq. 23). A hard mask has no
gradient, and the released LearnRegion code has none either (notes/algorithms.md section 4). Here
the blend of eq. 23 is applied in pixel space with the *soft* region, at the end of generation:

    X_res = m_soft * G(X, t_e) + (1 - m_soft) * X          (eq. 23 with z -> pixels, one step)

where G(X, t_e) is the frozen generator's output for the target description (computed once, with
no gradient: the generator stays fixed, as the paper requires). L_CLIP back-propagates through the
frozen CLIP image encoder to X_res, through the blend to m_soft, and into every parameter of the
head (:func:`region_losses`; tests check the gradient reaches each one).

:func:`optimize_region` is the test-time mode: with no trained checkpoint, a fresh head is fitted
to one image with the same losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import InputError
from .losses import LossWeights, clip_loss, sem_align_loss, total_loss
from .model import RegionOutput, RegionPredictor, RegionPredictorConfig

MIN_IMAGE_SIDE = 32
# Test-time mode defaults (Adam on a fresh default-size head), from benchmarks/region_loss_sweep.py:
# with the default LossWeights, lr 1e-4 localises the edit at both tiny patch grids (4x4, 8x8) for
# every seed tried, in 50 steps; lr 1e-3 saturated the sigmoid into a full region for one of three
# seeds at 4x4 (the head's logits grow fast with d = 768).
DEFAULT_TEST_TIME_STEPS = 50
DEFAULT_TEST_TIME_LR = 1e-4


def composite(source: torch.Tensor, generated: torch.Tensor, soft_region: torch.Tensor) -> torch.Tensor:
    """X_res = m * G + (1 - m) * X with the soft region upsampled to the image (eq. 23 style blend).

    ``source``, ``generated`` [B, 3, H, W]; ``soft_region`` [B, 1, h, w] in 0..1 (any grid)."""
    m = F.interpolate(soft_region.to(source.dtype), size=source.shape[-2:], mode="bilinear", align_corners=False)
    return m * generated + (1.0 - m) * source


@dataclass
class RegionEncoders:
    """The frozen encoders: CLIP vision (E_v), the instruction encoder (E_ins, T5) and CLIP text (E_t).

    ``text`` is any callable list[str] -> [B, D] (normally a ClipTextEncoder); D must equal the
    vision projection size, since L_CLIP compares image and text embeddings."""

    vision: torch.nn.Module
    instruction: torch.nn.Module
    text: Callable | None = None

    def predictor_config(self, **overrides) -> RegionPredictorConfig:
        """A config whose input sizes fit these encoders (``overrides`` set the head's own sizes)."""
        sizes = {"vision_dim": self.vision.hidden_size, "text_dim": self.instruction.hidden_size,
                 "embed_dim": self.vision.projection_dim}
        sizes.update(overrides)
        return RegionPredictorConfig(**sizes)

    def check(self, predictor: RegionPredictor, input_name: str = "region_predictor") -> None:
        """InputError naming ``input_name`` when the predictor was built for other encoders."""
        cfg = predictor.config
        pairs = (("CLIP vision hidden size", cfg.vision_dim, self.vision.hidden_size, "clip_vision"),
                 ("CLIP projection size", cfg.embed_dim, self.vision.projection_dim, "clip_vision"),
                 ("instruction encoder width", cfg.text_dim, self.instruction.hidden_size, "text_encoder"))
        for what, expected, got, encoder_input in pairs:
            if expected != got:
                raise InputError(input_name, f"was trained for a {what} of {expected}, but the {encoder_input} "
                                 f"model gives {got}.", f"Load the {encoder_input} model the predictor was trained "
                                 "with (e.g. CLIP ViT-L/14 + FLAN-T5-base), or train a predictor for this one.")
        text_dim = getattr(self.text, "projection_dim", None)
        if text_dim is not None and text_dim != self.vision.projection_dim:
            raise InputError("clip_text", f"embeds text in {text_dim} dimensions but the CLIP vision model in "
                             f"{self.vision.projection_dim}.", "Use the text tower of the same CLIP model.")


def check_images(images: torch.Tensor, input_name: str = "image") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(input_name, f"must be an RGB batch [B, 3, H, W], got {shape}.", "Pass an RGB image.")
    h, w = images.shape[-2:]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(input_name, f"is {w}x{h} pixels; the region predictor needs at least "
                         f"{MIN_IMAGE_SIDE} pixels on each side.", "Use a larger image (or upscale it first).")
    return images


def _texts(values, batch: int, input_name: str) -> list:
    values = [values] if isinstance(values, str) else list(values)
    if len(values) == 1 and batch > 1:
        values = values * batch
    if len(values) != batch:
        raise InputError(input_name, f"has {len(values)} entries for {batch} images.", "Pass one per image.")
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise InputError(input_name, "is empty.", "Write the text (an instruction or a description).")
    return values


@dataclass
class EncodedBatch:
    """Everything frozen about a batch, computed once with no gradient."""

    source: torch.Tensor            # X [B, 3, H, W]
    generated: torch.Tensor | None  # G(X, t_e) [B, 3, H, W]
    clip_patches: torch.Tensor      # E_v(X)^[patches] [B, N, vision_dim] (F_img before projection)
    i_ori: torch.Tensor             # E_v(X)^[CLS] [B, D]
    ins_features: torch.Tensor      # F_ins [B, L, text_dim]
    ins_mask: torch.Tensor          # [B, L]
    t_o: torch.Tensor | None        # E_t(t_o) [B, D]
    t_e: torch.Tensor | None        # E_t(t_e) [B, D]

    def to(self, device) -> EncodedBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return EncodedBatch(**moved)

    @staticmethod
    def collate(items: list) -> EncodedBatch:
        def cat(name):
            values = [getattr(item, name) for item in items]
            if any(v is None for v in values):
                return None
            if name in ("ins_features", "ins_mask"):  # pad token dimension
                length = max(v.shape[1] for v in values)
                values = [F.pad(v, (0, 0, 0, length - v.shape[1]) if v.dim() == 3 else (0, length - v.shape[1]))
                          for v in values]
            return torch.cat(values)

        return EncodedBatch(**{name: cat(name) for name in vars(items[0])})


@torch.no_grad()
def encode_batch(encoders: RegionEncoders, source, instructions, t_o=None, t_e=None, generated=None) -> EncodedBatch:
    source = check_images(source)
    b = source.shape[0]
    instructions = _texts(instructions, b, "instruction")
    if generated is not None:
        generated = check_images(generated, "generated")
        if generated.shape[0] != b:
            raise InputError("generated", f"has {generated.shape[0]} images for {b} sources.", "Pass one per image.")
        if generated.shape[-2:] != source.shape[-2:]:
            generated = F.interpolate(generated, size=source.shape[-2:], mode="bilinear", align_corners=False,
                                      antialias=True)
    i_ori, patches = encoders.vision(source)
    ins, mask = encoders.instruction(instructions)
    t_o_emb = t_e_emb = None
    if t_o is not None or t_e is not None:
        if encoders.text is None:
            raise InputError("clip_text", "is required for the losses (T_o, T_e).", "Load a CLIP text model.")
        t_o_emb = encoders.text(_texts(t_o, b, "caption")).to(i_ori.device)
        t_e_emb = encoders.text(_texts(t_e, b, "target_caption")).to(i_ori.device)
    return EncodedBatch(source=source, generated=generated, clip_patches=patches, i_ori=i_ori,
                        ins_features=ins, ins_mask=mask, t_o=t_o_emb, t_e=t_e_emb)


def region_losses(predictor: RegionPredictor, vision, batch: EncodedBatch, weights: LossWeights | None = None):
    """L_total (eq. 11) for one batch -> (loss, {term: detached tensor}, RegionOutput).

    The gradient path: head -> soft region -> composite (eq. 23 style) -> frozen CLIP -> L_CLIP."""
    if batch.generated is None or batch.t_e is None or batch.t_o is None:
        raise InputError("dataset", "a sample lacks its generated image or its descriptions (t_o, t_e).",
                         "Run the 'prepare' step (captions, instruction, target caption, generated image).")
    weights = weights or LossWeights()
    out = predictor(batch.clip_patches, batch.ins_features, batch.ins_mask)
    sem_e = predictor.semantic_embedding(out.edited_features)
    sem_o = predictor.semantic_embedding(out.image_features)
    l_sem, sem_terms = sem_align_loss(sem_e, sem_o, batch.t_e, batch.t_o)
    x_res = composite(batch.source, batch.generated, out.soft)
    i_res, f_res = vision(x_res)
    l_clip, clip_terms = clip_loss(i_res, batch.i_ori, batch.clip_patches, f_res, batch.t_e, batch.t_o, weights)
    loss = total_loss(l_sem, l_clip, weights)
    terms = {"total": loss, "semAlign": l_sem, "CLIP": l_clip, **sem_terms, **clip_terms}
    terms["region_mean"] = out.probs.mean()
    return loss, {k: v.detach() for k, v in terms.items()}, out


@torch.no_grad()
def predict_region(predictor: RegionPredictor, encoders: RegionEncoders, images, instructions) -> RegionOutput:
    """Inference: images [B, 3, H, W] 0..1 + instructions -> RegionOutput (``mask_at(H, W)`` for a mask)."""
    encoders.check(predictor)
    batch = encode_batch(encoders, images, instructions)
    return predictor(batch.clip_patches, batch.ins_features, batch.ins_mask)


@dataclass
class TestTimeResult:
    predictor: RegionPredictor
    region: RegionOutput                       # the fitted head's prediction (no grad)
    initial_region: RegionOutput               # the fresh head's prediction before any step
    losses: list = field(default_factory=list)  # L_total per step (before each update), then the final value


def optimize_region(encoders: RegionEncoders, image, instruction, caption, target_caption, generated,
                    steps: int = DEFAULT_TEST_TIME_STEPS, lr: float = DEFAULT_TEST_TIME_LR, config: RegionPredictorConfig | None = None, weights: LossWeights | None = None,
                    seed: int = 0, predictor: RegionPredictor | None = None, on_step=None) -> TestTimeResult:
    """Test-time mode: fit a fresh head (or ``predictor``, copied) on one image for ``steps`` Adam steps.

    Same losses as training (eq. 11). ``on_step(i, steps)`` is called after every step (progress,
    cancellation). Runs with gradients enabled even if the caller is in inference mode."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError("steps", f"must be a positive integer, got {steps!r}.", "Use e.g. 50.")
    with torch.inference_mode(False), torch.enable_grad():
        vision = encoders.vision
        if any(t.is_inference() for t in (*vision.parameters(), *vision.buffers())):
            # loaded (or moved to the GPU) under ComfyUI's inference mode: such weights cannot be
            # saved for backward, and L_CLIP back-propagates through this encoder. A copy made
            # here holds ordinary tensors.
            import copy

            encoders = RegionEncoders(copy.deepcopy(vision), encoders.instruction, encoders.text)
        batch = encode_batch(encoders, image, instruction, caption, target_caption, generated)
        batch = EncodedBatch(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()})
        if predictor is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                predictor = RegionPredictor(config or encoders.predictor_config())
        else:
            import copy

            predictor = copy.deepcopy(predictor)
        encoders.check(predictor)
        predictor.to(batch.source.device).train().requires_grad_(True)
        with torch.no_grad():
            initial = predictor(batch.clip_patches, batch.ins_features, batch.ins_mask)
        optimizer = torch.optim.Adam(predictor.parameters(), lr=lr)
        losses = []
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = region_losses(predictor, encoders.vision, batch, weights)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, steps)
        predictor.eval().requires_grad_(False)
        with torch.no_grad():
            final_loss, _, region = region_losses(predictor, encoders.vision, batch, weights)
        losses.append(float(final_loss))
    return TestTimeResult(predictor=predictor, region=region, initial_region=initial, losses=losses)
