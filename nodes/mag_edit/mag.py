"""MAG-Edit: mask-based attention-adjusted guidance (arXiv 2312.11396; HelenMao/MAG-Edit code_tr).

Per sampling step i of the edit branch (notes/algorithms.md section 1):

1. While i < optimise steps, up to ``iterations`` times: an edit forward (target prompt, no CFG,
   source attention injected), the constraint's loss on the 1/32 cross-attention layers -- token
   ratio (MAG-Edit ``compute_ca_TR``, (1 - act)^2), spatial ratio (``compute_ca_SR``, 3 - 4 act) or
   both summed, ``MagConfig.constraint`` -- (+ the negative-word term from a forward with the
   negative prompt), and the masked
   latent update z <- z - scale * sigma_t * grad_z, inside the mask only, on the
   variance-preserving latent z (as in the reference code). Only the latent gets a gradient.
   Each edit word is scored inside its own mask when one is given per word (the reference pairs
   every edit word with a mask file); the update and the blend use the edit region (the union).
2. A classifier-free-guided DDIM step with P2P injection (cross-attention refine for common
   tokens while i < cross steps; self-attention structure at <= 1/16 resolution while
   i < self steps) on the text chunk.
3. From ``blend_from`` on: outside the 1-latent-pixel-dilated mask the latent is replaced by the
   reconstruction branch's.

The reconstruction branch is never re-run: :func:`inversion.invert` already walked it and kept
its latents and its attention (see inversion.py).
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ...attention_patches.controller import LayerSelector
from ...attention_patches.injection import AttentionInjection
from ...attention_patches.token_ratio import (CrossAttentionProbe, StopForward, mean_ratio, ratio_loss,
                                              word_share_map)
from ..errors import InputError
from .inversion import CaptureSpec, SourceBranch, cfg_eps, ddim_schedule, invert
from .prompts import EditPrompts

EDIT_BRANCH = 0
NEGATIVE_BRANCH = 2  # a third conditioning chunk (ComfyUI numbers extra conds from 2)


@dataclass
class MagConfig:
    steps: int = 50
    guidance: float = 7.5
    inversion: str = "null-text"            # "direct" | "null-text" | "ddim"
    # optimisation
    optimize_fraction: float = 0.5          # steps [0, round(f*steps)) are optimised (paper: 0-24 of 50)
    iterations: int = 15                    # per optimised step
    scale: float = 2.5                      # loss weight; the step is scale * sigma_t * grad
    ratio_target: Optional[float] = None    # stop a step's iterations once the constraint's mean ratio reaches it
    # which mask constraint is optimised: "token" (token ratio, the released code's), "spatial"
    # (spatial ratio) or "both" (their weighted sum); the paper picks token or spatial per edit
    constraint: str = "token"
    token_ratio_weight: float = 1.0         # weight of compute_ca_TR's (1 - act)^2, when the constraint has it
    spatial_ratio_weight: float = 1.0       # weight of compute_ca_SR's 3 - 4 act, when the constraint has it
    negative_scale: float = 5.5             # weight of act_neg^2 (when negative words are given)
    loss_downscales: Tuple[int, ...] = (32,)   # 16x16 at 512 px
    truncate_forward: bool = False          # stop the UNet after the last loss layer during optimisation
    # injection (prompt-to-prompt refine)
    cross_replace_fraction: float = 0.8     # steps [0, 0.8*steps): source cross-attention for common tokens
    self_replace_fraction: float = 0.5      # steps [0, 0.5*steps): source self-attention structure
    cross_downscales: Tuple[int, ...] = (8, 16, 32, 64)
    self_downscales: Tuple[int, ...] = (16, 32, 64)   # <= 1/16 resolution (<= 32x32 at 512 px)
    # blend
    blend_from_fraction: float = 0.7        # steps >= 0.7*steps (paper: the last 15 of 50) blend outside the mask
    blend_dilation: int = 1                 # latent pixels
    # null-text inversion
    null_text_iterations: int = 10
    null_text_lr: float = 1e-2
    null_text_epsilon: float = 1e-5
    # precision: "fp32", "bf16" (autocast on CUDA) or "auto" (bf16 on CUDA, else fp32)
    precision: str = "fp32"
    store_dtype: Optional[torch.dtype] = None   # dtype of the kept source attention (None = as computed)

    def step_counts(self):
        n = self.steps
        return dict(optimize=int(round(self.optimize_fraction * n)), cross=int(round(self.cross_replace_fraction * n)),
                    self_=int(round(self.self_replace_fraction * n)), blend_from=int(round(self.blend_from_fraction * n)))


CONSTRAINTS = {"token": ("token",), "spatial": ("spatial",), "both": ("token", "spatial")}


PRESETS = {
    # MAG-Edit's published settings (notes/algorithms.md section 1)
    "paper": MagConfig(),
    # notes/algorithms.md (c): direct inversion with the source branch kept (no live reconstruction),
    # 30 DDIM steps with the same fractional windows, the first third (10 steps) optimised with
    # <= 4 iterations and an early stop at 80 % token ratio, the UNet truncated after the last
    # loss layer, bf16 on CUDA
    "fast": MagConfig(steps=30, inversion="direct", optimize_fraction=1 / 3, iterations=4, ratio_target=0.8,
                      truncate_forward=True, precision="auto", store_dtype=None),
}


def preset(name: str, **overrides) -> MagConfig:
    if name not in PRESETS:
        raise InputError("preset", f"'{name}' is not one of {tuple(PRESETS)}.", "Pick one from the list.")
    return dataclasses.replace(PRESETS[name], **overrides)


@dataclass
class StepLog:
    step: int
    sigma: float
    ratios: List[float] = field(default_factory=list)       # mean edit token ratio at each iteration's forward
    spatial_ratios: List[float] = field(default_factory=list)  # mean edit spatial ratio, same forwards
    negative_ratios: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)
    ratio_after: Optional[float] = None                    # edit token ratio in this step's sampling forward
    spatial_after: Optional[float] = None                  # edit spatial ratio, same forward


@dataclass
class MagResult:
    latent: torch.Tensor            # edited x0 (sigma parameterisation / process_latent_in space)
    reconstruction: torch.Tensor    # the reconstruction branch's result
    source: SourceBranch
    history: List[StepLog]
    map_before: Optional[torch.Tensor] = None   # [B, h, w] edit words' token ratio, first forward
    map_after: Optional[torch.Tensor] = None    # [B, h, w] after the last optimised step


def check_constraint(name: str):
    if name not in CONSTRAINTS:
        raise InputError("constraint", f"'{name}' is not one of {tuple(CONSTRAINTS)}.",
                         "Pick token ratio, spatial ratio or both.")


def check_inputs(latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate and return the mask as [B, H, W] binary floats."""
    if not torch.is_tensor(latent) or latent.dim() != 4:
        raise InputError("latent", f"expected a latent batch [B, C, h, w], got "
                         f"{tuple(latent.shape) if torch.is_tensor(latent) else type(latent).__name__}.",
                         "Connect a LATENT (e.g. from VAE Encode).")
    if not torch.is_tensor(mask) or mask.dim() not in (2, 3):
        raise InputError("mask", "expected a MASK [B, H, W].", "Connect a mask of the edit region.")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    b, _, lh, lw = latent.shape
    mh, mw = mask.shape[-2:]
    if (mh, mw) != (lh, lw) and (mh, mw) != (lh * 8, lw * 8):
        raise InputError("mask", f"is {mh}x{mw} but the latent is {lh}x{lw} (an image of {lh * 8}x{lw * 8}).",
                         "Give a mask of the source image's size (or the latent's size).")
    if mask.shape[0] not in (1, b):
        raise InputError("mask", f"has {mask.shape[0]} masks for {b} latents.", "Give one mask, or one per latent.")
    binary = (mask.float() > 0.5).float()
    if binary.sum() == 0:
        raise InputError("mask", "is empty (nothing to edit).", "Paint the region to edit white.")
    return binary.expand(b, -1, -1) if binary.shape[0] != b else binary


def latent_masks(mask: torch.Tensor, lh: int, lw: int, dilation: int):
    """(update mask, blend mask dilated by ``dilation`` latent pixels), both [B, 1, lh, lw]."""
    m = F.interpolate(mask.unsqueeze(1), size=(lh, lw), mode="nearest")
    m = (m != 0).float()
    d = F.max_pool2d(m, 2 * dilation + 1, stride=1, padding=dilation) if dilation > 0 else m
    return m, d


def _precision(config: MagConfig, device) -> str:
    if config.precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return config.precision


def mag_edit(denoiser, x0: torch.Tensor, mask: torch.Tensor, prompts: EditPrompts, config: MagConfig,
             source: Optional[SourceBranch] = None, progress: Optional[Callable] = None,
             word_masks: Optional[torch.Tensor] = None) -> MagResult:
    """Edit ``x0`` (sigma-parameterised latent [B, C, h, w]) inside ``mask``.

    ``word_masks``: None (every edit word is scored inside ``mask``) or [W, H, W], one mask per
    edit word in ``prompts.edit_positions`` order (MAG-Edit's reference scores word i inside its
    own mask); ``mask`` stays the region that is updated and blended (the node passes the union).
    ``source``: a precomputed inversion (same prompts, schedule and capture windows); computed
    here when None. ``progress()`` is called once per unit of work (inversion and edit steps).
    Inputs are never modified.
    """
    mask = check_inputs(x0, mask)
    score_masks = mask
    if word_masks is not None:
        if not torch.is_tensor(word_masks) or word_masks.dim() != 3 or \
                word_masks.shape[0] != len(prompts.edit_positions):
            raise InputError("mask", f"has {tuple(word_masks.shape) if torch.is_tensor(word_masks) else word_masks} "
                             f"word masks for {len(prompts.edit_positions)} edit words.",
                             "Give one mask per edit word, or one mask for all of them.")
        score_masks = [check_inputs(x0, word_masks[i:i + 1]).to(x0.device) for i in range(word_masks.shape[0])]
    check_constraint(config.constraint)
    x0 = x0.detach().clone()
    mask = mask.to(x0.device)
    counts = config.step_counts()
    sigmas = ddim_schedule(denoiser.sigma_table, config.steps)
    upd_mask, blend_mask = latent_masks(mask, x0.shape[-2], x0.shape[-1], config.blend_dilation)
    cross_sel = LayerSelector(downscales=tuple(config.cross_downscales))
    self_sel = LayerSelector(downscales=tuple(config.self_downscales), cross=False, self_attn=True)
    loss_sel = LayerSelector(downscales=tuple(config.loss_downscales))

    with denoiser.autograd_ready(), denoiser.precision(_precision(config, x0.device)):
        if source is None:
            capture = CaptureSpec(counts["cross"], counts["self_"], cross_sel, self_sel, config.store_dtype)
            source = invert(denoiser, x0, prompts.source_context, prompts.uncond_context, sigmas, config.inversion,
                            config.guidance, capture, null_text_iterations=config.null_text_iterations,
                            null_text_lr=config.null_text_lr, null_text_epsilon=config.null_text_epsilon,
                            progress=progress)
        injection = AttentionInjection(source.store, prompts.mapper, prompts.alphas, cross_sel, self_sel)
        z = source.latents[0].detach().clone()
        history, state = [], {"loss_layers": None}
        map_before = map_after = None
        for i in range(config.steps):
            s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
            injection.step = i
            injection.cross_on = i < counts["cross"]
            injection.self_on = i < counts["self_"]
            log = StepLog(i, s_cur)
            if i < counts["optimize"]:
                z, first_map = _optimise(denoiser, z, s_cur, prompts, upd_mask, mask, injection, loss_sel, config,
                                         log, state, score_masks)
                if map_before is None:
                    map_before = first_map
            probe = CrossAttentionProbe(loss_sel, inner=injection)
            with torch.no_grad():
                eps = cfg_eps(denoiser, z, s_cur, prompts.target_context, source.uncond[i], config.guidance,
                              controller=probe)
                z = z + (s_next - s_cur) * eps
            if probe.records:
                log.ratio_after = float(mean_ratio(probe.records, score_masks, prompts.edit_positions).mean())
                log.spatial_after = float(mean_ratio(probe.records, score_masks, prompts.edit_positions,
                                                     kind="spatial").mean())
                if i < counts["optimize"]:
                    map_after = word_share_map(probe.records, prompts.edit_positions)
            if i >= counts["blend_from"]:
                z = blend_mask * z + (1 - blend_mask) * source.latents[i + 1]
            history.append(log)
            if progress:
                progress()
    return MagResult(z.detach(), source.latents[-1], source, history, map_before, map_after)


def _optimise(denoiser, z, sigma, prompts, upd_mask, mask, injection, loss_sel, config, log, state, score_masks):
    """MAG's inner loop at one step; returns the updated latent and the first forward's word map.
    ``score_masks``: the mask every edit word is scored in, or a list with one per word."""
    b = z.shape[0]
    vp = 1.0 / (1.0 + sigma ** 2) ** 0.5
    # the negative forward also runs at scale 0, so its share is always reported
    use_negative = prompts.negative_context is not None
    contexts = [prompts.target_context.expand(b, -1, -1)]
    branches = [EDIT_BRANCH]
    if use_negative:
        contexts.append(prompts.negative_context.expand(b, -1, -1))
        branches.append(NEGATIVE_BRANCH)
    ctx = torch.cat(contexts)
    first_map = None
    # the update runs on the variance-preserving latent, as MAG-Edit's code does (z <- z - sigma*g)
    z_vp = (z * vp).detach()
    for it in range(config.iterations):
        leaf = z_vp.clone().requires_grad_(True)
        stop_after = state["loss_layers"] if config.truncate_forward else None
        probe = CrossAttentionProbe(loss_sel, inner=injection, stop_after=stop_after)
        with torch.enable_grad():
            x = (leaf / vp).repeat(len(branches), 1, 1, 1)
            try:
                denoiser(x, sigma, ctx, controller=probe, branches=branches)
            except StopForward:
                pass
            if state["loss_layers"] is None:
                state["loss_layers"] = len(probe.records)
            loss = torch.zeros(b, device=z.device)
            acts = {kind: mean_ratio(probe.records, score_masks, prompts.edit_positions, EDIT_BRANCH, kind)
                    for kind in ("token", "spatial")}
            weights = {"token": config.token_ratio_weight, "spatial": config.spatial_ratio_weight}
            for kind in CONSTRAINTS[config.constraint]:
                if weights[kind]:
                    loss = loss + weights[kind] * ratio_loss(probe.records, score_masks, prompts.edit_positions,
                                                             EDIT_BRANCH, kind)
            # the early stop watches the optimised ratio(s): every one of them must reach the target
            act = torch.stack([acts[kind] for kind in CONSTRAINTS[config.constraint]]).min(dim=0).values
            if use_negative:
                act_neg = mean_ratio(probe.records, mask, prompts.negative_positions, NEGATIVE_BRANCH)
                if config.negative_scale:
                    loss = loss + config.negative_scale * act_neg ** 2
                log.negative_ratios.append(float(act_neg.detach().mean()))
            log.ratios.append(float(acts["token"].detach().mean()))
            log.spatial_ratios.append(float(acts["spatial"].detach().mean()))
            log.losses.append(float(loss.detach().mean()))
            if first_map is None:
                first_map = word_share_map(probe.records, prompts.edit_positions, EDIT_BRANCH)
            if config.ratio_target is not None and float(act.detach().min()) >= config.ratio_target:
                break
            if not loss.requires_grad:  # every loss weight is zero: nothing to optimise
                break
            (grad,) = torch.autograd.grad(config.scale * loss.sum(), [leaf])
        z_vp = (z_vp - sigma * grad.float().to(z_vp.dtype) * upd_mask).detach()
    return z_vp / vp, first_map
