"""The training objective of "Beyond Editing Pairs" (arXiv 2505.19352), section 3.3, term by term.

Notation (section 3.1): T_o, T_e CLIP text embeddings of the original / target descriptions,
I_ori, I_res CLIP image embeddings (CLS, projected) of the source and the generated image,
F_img, F_res their CLIP patch features (N patches), F_Editedimg the instruction-fused features
(eq. 1), f_sem the learnable projection to CLIP space.

    L_semEdited   = 1 - cos(f_sem(F_Editedimg), T_e)                       (4)
    L_semOriginal = 1 - cos(f_sem(F_img), T_o)                             (5)
    L_semAlign    = L_semEdited + L_semOriginal                            (6)
    L_CLIPg       = 1 - cos(I_res, T_e)                                    (7)
    L_CLIPd       = 1 - cos(I_res - I_ori, T_e - T_o)                      (8)
    L_CLIPs       = (1 / N^2) || Sim(F_img) - Sim(F_res) ||_2^2,
                    Sim(F)_ij = F_i . F_j / (||F_i|| ||F_j||)              (9, normalised: see below)
    L_CLIP        = lambda_g L_CLIPg + lambda_d L_CLIPd + lambda_s L_CLIPs (10)
    L_total       = alpha L_semAlign + beta L_CLIP                         (11)

Every term is computed per sample and averaged over the batch.

Normalisation (ours): eq. 9 as printed is a squared Frobenius norm, a *sum* over the N^2 patch
pairs (65,536 terms for ViT-L/14 at 224 px, 256 for a 4x4 grid), while eq. 4-8 are cosine
distances in [0, 2] whatever N is. Summed, L_CLIPs outweighs the other terms by a factor that grows
with N^2, and with every weight at 1 the cheapest way to lower L_total is an empty region
(X_res = X, L_CLIPs = 0): the predictor learns nothing. Here L_CLIPs is the *mean* over the N^2
pairs (each entry of Sim lies in [-1, 1], so the term lies in [0, 4] for any grid), which makes
lambda_s mean the same thing for every CLIP model and resolution; the sum is N^2 times it.
The other terms need no normalisation: they are per-sample cosine distances.

Defaults: the paper gives no values for lambda_g, lambda_d, lambda_s, alpha, beta. lambda_s = 0.1
and the others 1 come from a measured sweep on the tiny localisation scenario at two patch grids
(benchmarks/region_loss_sweep.py prints it; tests/test_regions_losses.py and
tests/test_regions_train.py check that these defaults localise the region at both grids).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """alpha, beta of eq. 11 and lambda_g, lambda_d, lambda_s of eq. 10 (lambda_s weighs the
    N-normalised eq. 9, see the module docstring; defaults from benchmarks/region_loss_sweep.py)."""

    alpha: float = 1.0
    beta: float = 1.0
    lambda_g: float = 1.0
    lambda_d: float = 1.0
    lambda_s: float = 0.1

    def as_dict(self) -> dict:
        return asdict(self)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) along the last dimension, per sample."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def sem_edited_loss(sem_edited: torch.Tensor, t_e: torch.Tensor) -> torch.Tensor:
    """Eq. 4: 1 - cos(f_sem(F_Editedimg), T_e); ``sem_edited`` is f_sem's output [B, D]."""
    return cosine_distance(sem_edited, t_e).mean()


def sem_original_loss(sem_original: torch.Tensor, t_o: torch.Tensor) -> torch.Tensor:
    """Eq. 5: 1 - cos(f_sem(F_img), T_o); ``sem_original`` is f_sem's output [B, D]."""
    return cosine_distance(sem_original, t_o).mean()


def sem_align_loss(sem_edited, sem_original, t_e, t_o):
    """Eq. 6: L_semEdited + L_semOriginal -> (total, {"semEdited": ..., "semOriginal": ...})."""
    edited = sem_edited_loss(sem_edited, t_e)
    original = sem_original_loss(sem_original, t_o)
    return edited + original, {"semEdited": edited, "semOriginal": original}


def clip_guidance_loss(i_res: torch.Tensor, t_e: torch.Tensor) -> torch.Tensor:
    """Eq. 7: 1 - cos(I_res, T_e)."""
    return cosine_distance(i_res, t_e).mean()


def clip_directional_loss(i_res, i_ori, t_e, t_o) -> torch.Tensor:
    """Eq. 8: 1 - cos(I_res - I_ori, T_e - T_o)."""
    return cosine_distance(i_res.float() - i_ori.float(), t_e.float() - t_o.float()).mean()


def patch_self_similarity(features: torch.Tensor) -> torch.Tensor:
    """Sim(F) of eq. 9: pairwise cosine similarities of the patch features, [B, N, N]."""
    unit = F.normalize(features.float(), dim=-1, eps=1e-8)
    return unit @ unit.transpose(1, 2)


def clip_structural_loss(f_img: torch.Tensor, f_res: torch.Tensor) -> torch.Tensor:
    """Eq. 9, normalised: ||Sim(F_img) - Sim(F_res)||_2^2 / N^2 per sample, then the batch mean.

    The paper's squared Frobenius norm is a sum over the N x N patch pairs; dividing by N^2 (the
    mean over pairs) keeps its scale independent of the CLIP grid, so one lambda_s fits every
    model and resolution (module docstring). ``f_img``, ``f_res`` [B, N, C]."""
    diff = patch_self_similarity(f_img) - patch_self_similarity(f_res)
    return diff.pow(2).mean(dim=(1, 2)).mean()


def clip_loss(i_res, i_ori, f_img, f_res, t_e, t_o, weights: LossWeights | None = None):
    """Eq. 10 -> (L_CLIP, {"CLIPg", "CLIPd", "CLIPs"})."""
    w = weights or LossWeights()
    g = clip_guidance_loss(i_res, t_e)
    d = clip_directional_loss(i_res, i_ori, t_e, t_o)
    s = clip_structural_loss(f_img, f_res)
    return w.lambda_g * g + w.lambda_d * d + w.lambda_s * s, {"CLIPg": g, "CLIPd": d, "CLIPs": s}


def total_loss(sem_align: torch.Tensor, clip: torch.Tensor, weights: LossWeights | None = None) -> torch.Tensor:
    """Eq. 11: alpha L_semAlign + beta L_CLIP."""
    w = weights or LossWeights()
    return w.alpha * sem_align + w.beta * clip
