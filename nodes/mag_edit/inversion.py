"""Inversion of a source latent, kept as a reusable *source branch*.

All three methods start with DDIM inversion under the source prompt alone (guidance 1, as
prompt-to-prompt / PnP do) and then walk back down with classifier-free guidance, producing the
reconstruction branch MAG-Edit runs next to the edit:

* ``ddim``      -- plain DDIM: the guided walk back drifts from the source;
* ``direct``    -- PnP / DirectInversion: offset_i = z*_{i+1} - step(z*_i) is added to the source
                   branch only, so its trajectory *is* z* (exact reconstruction, no optimisation);
* ``null-text`` -- per step, Adam on the unconditional embedding (<=10 iterations, lr
                   1e-2*(1-i/100), early stop at 1e-5 + 2e-5*i, warm start from the previous step).

The walk back records the source's attention (:class:`SourceRecorder`) at the latents the
reconstruction branch actually visits, so the edit loop never has to re-run the source branch:
``SourceBranch.latents[i]`` and ``SourceBranch.store`` are what a live reconstruction branch would
compute at step i (notes/algorithms.md (c) 2).

Schedules are lists of sigmas, descending, ending in 0 (ComfyUI's ``ddim_uniform``): sampling
step i goes from ``sigmas[i]`` to ``sigmas[i+1]``.
"""

from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from ...attention_patches.controller import LayerSelector
from ...attention_patches.injection import SourceAttentionStore, SourceRecorder

METHODS = ("direct", "null-text", "ddim")
# cond_or_uncond id of the inversion chunk when it shares a UNet call with the source branch
# (ComfyUI numbers conditionings past the negative from 2; recorders and injections act on 0)
INVERSION_BRANCH = 2


def ddim_schedule(sigma_table: torch.Tensor, steps: int) -> torch.Tensor:
    """ComfyUI's ddim_uniform: every (1000//steps)-th training sigma from timestep 1, descending, then 0.

    Exactly ``steps`` steps: where 1000 is not a multiple of ``steps`` ComfyUI's version yields a
    step more; we drop the noisiest one so step counts (and the fractions based on them) hold."""
    n = len(sigma_table)
    stride = max(n // steps, 1)
    picked = [float(sigma_table[x]) for x in range(1, n, stride)][:steps]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)


def vp_scale(sigma) -> float:
    """x (sigma parameterisation) -> variance-preserving latent: multiply by this."""
    return float(1.0 / (1.0 + float(sigma) ** 2) ** 0.5)


def guided_chunks(cond, uncond, guidance: float):
    """[(context, branch id)] of one classifier-free-guided evaluation: [uncond, cond] (branches
    [1, 0]), or [cond] alone at guidance 1. :func:`guide` combines their outputs."""
    return [(cond, 0)] if guidance == 1.0 else [(uncond, 1), (cond, 0)]


def guide(eps_chunks, guidance: float):
    """eps_u + w (eps_c - eps_u) from the outputs of :func:`guided_chunks`' chunks, in order."""
    if guidance == 1.0:
        return eps_chunks[0]
    eps_u, eps_c = eps_chunks
    return eps_u + guidance * (eps_c - eps_u)


def cfg_eps(denoiser, x, sigma, cond, uncond, guidance: float, controller=None, concat=None):
    """The guided eps at (x, sigma): the chunks of :func:`guided_chunks` in one batched call."""
    b = x.shape[0]
    chunks = guided_chunks(cond, uncond, guidance)
    ctx = torch.cat([c.expand(b, -1, -1) for c, _ in chunks])
    cc = torch.cat([concat] * len(chunks)) if concat is not None else None
    eps = denoiser(torch.cat([x] * len(chunks)), sigma, ctx, concat=cc, controller=controller,
                   branches=[br for _, br in chunks])
    return guide(list(eps.split(b)), guidance)


@dataclass
class CaptureSpec:
    """Which source attention to keep: steps [0, cross_steps) for cross-, [0, self_steps) for
    self-attention, in the layers the selectors choose."""

    cross_steps: int = 0
    self_steps: int = 0
    cross_selector: LayerSelector = LayerSelector(downscales=(8, 16, 32, 64))
    self_selector: LayerSelector = LayerSelector(downscales=(16, 32, 64), cross=False, self_attn=True)
    store_dtype: Optional[torch.dtype] = None


@dataclass
class SourceBranch:
    method: str
    sigmas: torch.Tensor                 # [N+1], descending, sigmas[N] = 0
    inverted: List[torch.Tensor]         # z*_i at sigmas[i] from the guidance-1 DDIM inversion
    latents: List[torch.Tensor]          # reconstruction branch at sigmas[i]; latents[N] = its result
    uncond: List[torch.Tensor]           # unconditional context used at step i (both branches)
    guidance: float
    offsets: Optional[List[torch.Tensor]] = None   # direct inversion only
    store: SourceAttentionStore = field(default_factory=SourceAttentionStore)
    null_text_iterations: List[int] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def ddim_invert(denoiser, x0, sigmas, cond, concat=None, progress=None) -> List[torch.Tensor]:
    """z*_N = x0 up to z*_0 at sigmas[0], eps evaluated at the next (noisier) sigma as P2P does.
    Returned in sampling order: [z*_0 (noisiest), ..., z*_N = x0]."""
    n = len(sigmas) - 1
    z = x0
    out = [x0]
    with torch.no_grad():
        for j in range(n, 0, -1):
            s_cur, s_next = float(sigmas[j]), float(sigmas[j - 1])
            eps = denoiser(z, s_next, cond, concat=concat, branches=[0])
            z = z + (s_next - s_cur) * eps
            out.append(z)
            if progress:
                progress()
    return out[::-1]


def _recorder(spec: Optional[CaptureSpec], store: SourceAttentionStore, step: int):
    if spec is None or (step >= spec.cross_steps and step >= spec.self_steps):
        return None
    rec = SourceRecorder(store, spec.cross_selector, spec.self_selector)
    rec.step = step
    rec.record_cross = step < spec.cross_steps
    rec.record_self = step < spec.self_steps
    return rec


def invert(denoiser, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, sigmas: torch.Tensor,
           method: str = "direct", guidance: float = 7.5, capture: Optional[CaptureSpec] = None,
           concat=None, null_text_iterations: int = 10, null_text_lr: float = 1e-2,
           null_text_epsilon: float = 1e-5, progress: Optional[Callable] = None) -> SourceBranch:
    """Invert ``x0`` (sigma-parameterised latent, [B, C, h, w]) under ``cond``; see module doc."""
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; expected one of {METHODS}")
    store = SourceAttentionStore(dtype=capture.store_dtype if capture else None)
    if method == "direct":
        inverted, offsets = _direct_inversion(denoiser, x0, sigmas, cond, uncond, guidance, capture, store, concat,
                                              progress)
        return SourceBranch(method, sigmas, inverted, list(inverted), [uncond] * (len(sigmas) - 1), guidance,
                            offsets, store)

    n = len(sigmas) - 1
    inverted = ddim_invert(denoiser, x0, sigmas, cond, concat=concat, progress=progress)
    latents, unconds, nti_iters = [inverted[0]], [], []
    z = inverted[0]
    null = uncond.detach().clone()
    for i in range(n):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if method == "null-text":
            null, used = _optimise_null(denoiser, z, s_cur, s_next, cond, null, inverted[i + 1], guidance, i,
                                        concat, null_text_iterations, null_text_lr, null_text_epsilon)
            nti_iters.append(used)
        unconds.append(null.detach().clone() if method == "null-text" else uncond)
        with torch.no_grad():
            eps = cfg_eps(denoiser, z, s_cur, cond, unconds[-1], guidance, controller=_recorder(capture, store, i),
                          concat=concat)
            z = z + (s_next - s_cur) * eps
        latents.append(z)
        if progress:
            progress()
    return SourceBranch(method, sigmas, inverted, latents, unconds, guidance, None, store, nti_iters)


def _direct_inversion(denoiser, x0, sigmas, cond, uncond, guidance, capture, store, concat, progress):
    """DDIM inversion and the source branch's guided steps in one pass.

    The source branch of direct inversion sits on z*_i at every step, so its guided forward at
    step i needs only z*_i: it rides in the same UNet call as the inversion forward that starts
    from z*_i (a batch [inversion chunk at sigma_{i-1} | uncond, cond at sigma_i], per-sample
    sigmas), and its attention is recorded there. N + 1 calls instead of 2N.
    Returns (inverted latents in sampling order, offsets)."""
    n = len(sigmas) - 1
    b = x0.shape[0]
    latents = {n: x0}
    offsets = [None] * n
    z = x0
    with torch.no_grad():
        for j in range(n, -1, -1):          # z = z*_j
            # (context, branch, sigma) per chunk: the inversion chunk first, then the source's
            chunks = []
            if j > 0:                        # inversion: z*_j -> z*_{j-1}, eps at the noisier sigma (P2P)
                chunks.append((cond, INVERSION_BRANCH, float(sigmas[j - 1])))
            if j < n:                        # the source branch's step j, guided, at z*_j
                chunks += [(c, br, float(sigmas[j])) for c, br in guided_chunks(cond, uncond, guidance)]
            sig = torch.tensor([s for _, _, s in chunks], dtype=torch.float32, device=z.device).repeat_interleave(b)
            cc = torch.cat([concat] * len(chunks)) if concat is not None else None
            eps = denoiser(torch.cat([z] * len(chunks)), sig, torch.cat([c.expand(b, -1, -1) for c, _, _ in chunks]),
                           concat=cc, controller=_recorder(capture, store, j) if j < n else None,
                           branches=[br for _, br, _ in chunks])
            out = list(eps.split(b))
            if j < n:
                src = guide(out[1:] if j > 0 else out, guidance)
                y = z + (float(sigmas[j + 1]) - float(sigmas[j])) * src
                offsets[j] = latents[j + 1] - y
                if progress:
                    progress()
            if j > 0:
                z = z + (float(sigmas[j - 1]) - float(sigmas[j])) * out[0]
                latents[j - 1] = z
                if progress:
                    progress()
    return [latents[i] for i in range(n + 1)], offsets


def _optimise_null(denoiser, z, s_cur, s_next, cond, null, target, guidance, i, concat, iterations, lr, epsilon):
    """Null-text inversion's inner loop for step i; the loss is taken on the variance-preserving
    latents, as in the reference code. Returns (embedding, iterations used)."""
    scale = vp_scale(s_next)
    with torch.no_grad():
        eps_c = denoiser(z, s_cur, cond, concat=concat, branches=[0])
    null = null.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([null], lr=lr * (1.0 - i / 100.0))
    used = 0
    for _ in range(iterations):
        with torch.enable_grad():
            eps_u = denoiser(z, s_cur, null.expand(z.shape[0], -1, -1), concat=concat, branches=[1])
            eps = eps_u + guidance * (eps_c - eps_u)
            prev = z + (s_next - s_cur) * eps
            loss = torch.nn.functional.mse_loss(prev * scale, target * scale)
            # gradient w.r.t. the embedding only: nothing accumulates in the model's weights
            (null.grad,) = torch.autograd.grad(loss, [null])
        opt.step()
        used += 1
        if loss.item() < epsilon + i * 2e-5:
            break
    return null.detach(), used


def replay_source(denoiser, source: SourceBranch, cond: torch.Tensor, concat=None) -> torch.Tensor:
    """Run the reconstruction branch live from ``source.latents[0]`` (with the offsets / null
    embeddings it was built with) and return its result; equals ``source.latents[-1]``."""
    z = source.latents[0]
    with torch.no_grad():
        for i in range(source.steps):
            s_cur, s_next = float(source.sigmas[i]), float(source.sigmas[i + 1])
            eps = cfg_eps(denoiser, z, s_cur, cond, source.uncond[i], source.guidance, concat=concat)
            z = z + (s_next - s_cur) * eps
            if source.offsets is not None:
                z = z + source.offsets[i]
    return z
