"""Denoiser abstraction, schedules and inversion (DDIM / direct / null-text) on a tiny diffusers UNet."""

import pytest
import torch

from contextedit.attention_patches.injection import SourceAttentionStore, SourceRecorder
from contextedit.nodes.mag_edit.denoiser import DiffusersDenoiser, nearest_timestep
from contextedit.nodes.mag_edit.inversion import (CaptureSpec, cfg_eps, ddim_invert, ddim_schedule, invert,
                                                  replay_source)
from fixtures.tiny_mag import GaussianDataDenoiser, TableEncoder, WordTokenizer, sd_alphas_cumprod, sd_like_unet

STEPS = 8


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    unet = sd_like_unet()
    den = DiffusersDenoiser(unet, sd_alphas_cumprod())
    tok = WordTokenizer()
    enc = TableEncoder(tok)
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    return den, enc("a white cat on a table"), enc(""), x0


def test_schedule_is_comfy_ddim_uniform(setup):
    den = setup[0]
    s = ddim_schedule(den.sigma_table, 50)
    assert len(s) == 51 and float(s[-1]) == 0.0
    # the schedule copies table entries through float32: pytest.approx's 1e-6 relative default is
    # ~8 ulp of float32, room for the one conversion
    assert float(s[0]) == pytest.approx(float(den.sigma_table[981]))
    assert float(s[-2]) == pytest.approx(float(den.sigma_table[1]))
    assert bool((s[:-1][1:] < s[:-1][:-1]).all())
    # abar = 1 / (1 + sigma^2); sigma = sqrt((1 - abar) / abar) and back is ~4 float32 operations on
    # values <= 1: rtol 1e-5 (~80 ulp) with atol 1e-6 for the smallest abar (~5e-3)
    torch.testing.assert_close(1 / (1 + den.sigma_table ** 2), sd_alphas_cumprod(), atol=1e-6, rtol=1e-5)


def test_denoiser_matches_the_unet_in_vp_form(setup):
    den, cond, _, x0 = setup
    sigma = float(den.sigma_table[500])
    x = x0 + sigma * torch.randn_like(x0)
    with torch.no_grad():
        eps = den(x, sigma, cond)
        t = nearest_timestep(torch.tensor([sigma]), den.sigma_table)
        ref = den.unet(x / (1 + sigma ** 2) ** 0.5, t, encoder_hidden_states=cond).sample
    assert int(t) == 500
    # same UNet, same inputs up to the input scaling computed once in float32 vs float64 (<= 1 ulp
    # of x): the difference is that ulp carried through the net, eps ~ 1, bound 1e-5 (~80 ulp)
    torch.testing.assert_close(eps, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        den(x, 0.0, cond)


def test_direct_inversion_reconstructs_exactly(setup):
    """fp32 throughout. The source branch MAG-Edit runs next to the edit is the kept trajectory:
    it ends on the source latent exactly, and each of its guided steps, recomputed on its own
    (outside the fused inversion call), plus its offset lands on z*_{i+1}.

    Bound of the recomputed step. The fused call evaluates the UNet on the batch [inversion chunk,
    uncond, cond] with per-sample sigmas; the recomputation on [uncond, cond]. The same sample in a
    different batch goes through differently blocked GEMM/conv reductions, so each eps may differ
    by a reassociation error of a few ulp of its largest element; guidance w = 7.5 turns that into
    up to (1 + 2w) times as much in eps_u + w (eps_c - eps_u), and the step multiplies it by
    |sigma_{i+1} - sigma_i|. Adding z*_i, the step and the offset rounds at most 2 ulp of the
    latents' magnitude. So per step

        |err_i| <= |dsigma_i| (1 + 2w) * 32 eps32 max|eps| + 4 eps32 (max|z*_i| + max|z*_{i+1}|)

    with 32 ulp allowed per UNet evaluation: measured, the discrepancy is at most 4.4 ulp of
    max|eps| (2.38e-5 absolute at step 1, dsigma 1.61) on torch 2.14.1 and 2.15.0 alike, so the
    bound has 7x headroom for other builds and CPUs, and stays ~1e-4 of the step itself
    (|dsigma| max|eps| ~ 3): a wrong offset or an unguided step misses by O(1)."""
    den, cond, uncond, x0 = setup
    sigmas = ddim_schedule(den.sigma_table, STEPS)
    src = invert(den, x0, cond, uncond, sigmas, "direct", 7.5)
    assert src.latents[-1].dtype == torch.float32
    assert torch.equal(src.latents[-1], x0)  # latents[N] is x0 itself: exact by construction
    assert all(torch.equal(a, b) for a, b in zip(src.latents, src.inverted))
    with torch.no_grad():
        for i in range(STEPS):
            eps = cfg_eps(den, src.inverted[i], float(sigmas[i]), cond, uncond, 7.5)
            dsigma = float(sigmas[i + 1]) - float(sigmas[i])
            nxt = src.inverted[i] + dsigma * eps + src.offsets[i]
            eps_max = max(float(den(src.inverted[i], float(sigmas[i]), c).abs().max()) for c in (cond, uncond))
            f32 = torch.finfo(torch.float32).eps
            # the per-step bound derived in the docstring: UNet reassociation x guidance x step + rounding
            bound = (abs(dsigma) * (1 + 2 * 7.5) * 32 * f32 * eps_max
                     + 4 * f32 * (float(src.inverted[i].abs().max()) + float(src.inverted[i + 1].abs().max())))
            assert float((nxt - src.inverted[i + 1]).abs().max()) <= bound, (i, bound)
    # the fused pass inverts as plain DDIM inversion does (one call per step, guidance 1); the two
    # differ only by the batch-composition reassociation above, accumulated over 8 steps of
    # |dsigma| <= 3.3 (~3e-6 per step measured): atol 1e-5 + rtol 1e-5 of |z*| <= 12.6 is >= 10x that
    for a, b in zip(src.inverted, ddim_invert(den, x0, sigmas, cond)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ddim = invert(den, x0, cond, uncond, sigmas, "ddim", 7.5)
    assert float((ddim.latents[-1] - x0).abs().max()) > 1e-2  # what direct inversion fixes


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_direct_inversion_free_running_replay_in_fp32(guidance):
    """The source branch run live from z*_0 with the offsets (as PnP-Inversion runs it) comes back
    to the source within 1e-4 in fp32 after 50 steps, on a denoiser whose flow is contractive as a
    trained model's is (fixtures.tiny_mag.GaussianDataDenoiser)."""
    den = GaussianDataDenoiser()
    tok = WordTokenizer()
    enc = TableEncoder(tok)
    cond, uncond = enc("a white cat on a table"), enc("")
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    sigmas = ddim_schedule(den.sigma_table, 50)
    src = invert(den, x0, cond, uncond, sigmas, "direct", guidance)
    rec = replay_source(den, src, cond)
    assert rec.dtype == torch.float32
    # 50 replayed steps each rounding ~2 ulp of |x| ~ 4 (5e-7), damped by the contractive flow:
    # 1e-4 is the docstring's claim, ~4x above the sum of per-step roundings (2.4e-5)
    assert float((rec - x0).abs().max()) <= 1e-4
    # without the offsets the same walk misses the source (so the check above can fail)
    plain = invert(den, x0, cond, uncond, sigmas, "ddim", guidance)
    assert float((plain.latents[-1] - x0).abs().max()) > 1e-3


def test_direct_inversion_replay_on_the_tiny_unet(setup):
    """On the random tiny UNet: guidance 1 replays within 1e-4 in fp32 (20 steps). Under CFG 7.5 a
    random UNet's flow amplifies fp32 rounding step after step (measured: 1.9e-4 after 8 steps,
    1.7e-2 after 20, 0.45 after 50), so that replay is checked in float64, where rounding is 1e-16."""
    den, cond, uncond, x0 = setup
    sigmas = ddim_schedule(den.sigma_table, 20)
    src = invert(den, x0, cond, uncond, sigmas, "direct", 1.0)
    # guidance 1: 20 steps of ~2 ulp of |x| <= 12.6 (3e-6 each) plus batch reassociation: <= 1e-4
    assert float((replay_source(den, src, cond) - x0).abs().max()) <= 1e-4
    den64 = DiffusersDenoiser(sd_like_unet().double(), sd_alphas_cumprod())
    x64, c64, u64 = x0.double(), cond.double(), uncond.double()
    sigmas = ddim_schedule(den.sigma_table, STEPS)
    src64 = invert(den64, x64, c64, u64, sigmas, "direct", 7.5)
    # float64 rounding (2e-16 relative) amplified as fp32's is (1.9e-4 from 1.2e-7 over 8 steps,
    # ~2e3x) stays near 1e-12; 1e-4 is the fp32 claim and a wrong offset misses by O(1)
    assert float((replay_source(den64, src64, c64) - x64).abs().max()) <= 1e-4


def test_null_text_beats_ddim_and_keeps_its_embeddings(setup):
    den, cond, uncond, x0 = setup
    sigmas = ddim_schedule(den.sigma_table, 4)
    ddim = invert(den, x0, cond, uncond, sigmas, "ddim", 7.5)
    nti = invert(den, x0, cond, uncond, sigmas, "null-text", 7.5, null_text_iterations=4)
    assert len(nti.uncond) == 4 and not torch.equal(nti.uncond[0], uncond)
    assert all(1 <= n <= 4 for n in nti.null_text_iterations)
    err_ddim = float((ddim.latents[-1] - x0).pow(2).mean())
    err_nti = float((nti.latents[-1] - x0).pow(2).mean())
    assert err_nti < err_ddim
    # the recorded trajectory is what the live reconstruction branch computes: the two run the same
    # 4 steps with batch compositions that differ (reassociation, a few ulp of eps ~ 2 per step,
    # times |dsigma| <= 3.3 and guidance 16x): <= ~1e-6; atol 1e-5 + rtol 1e-5 of |x| <= 12.6
    torch.testing.assert_close(replay_source(den, nti, cond), nti.latents[-1], atol=1e-5, rtol=1e-5)
    assert all(p.grad is None for p in den.unet.parameters())


def test_source_attention_is_kept_in_the_windows_and_layers_asked(setup):
    den, cond, uncond, x0 = setup
    sigmas = ddim_schedule(den.sigma_table, 4)
    src = invert(den, x0, cond, uncond, sigmas, "direct", 7.5, CaptureSpec(cross_steps=3, self_steps=2))
    assert sorted(src.store.cross) == [0, 1, 2] and sorted(src.store.self_attn) == [0, 1]
    # cross: every attn2 (10 in this UNet); self: only <= 1/16 resolution (8x8, 4x4, 2x2 grids here)
    assert len(src.store.cross[0]) == 10 and all(".attn2" in p for p in src.store.cross[0])
    assert len(src.store.self_attn[0]) == 7 and all(".attn1" in p for p in src.store.self_attn[0])
    assert not any(p.startswith(("down_blocks.0", "up_blocks.3")) for p in src.store.self_attn[0])
    for q, k in src.store.self_attn[0].values():
        assert q.shape[0] == 1 and q.shape[1] in (4, 16, 64)
    # the fused pass records the source chunk (z*_i at sigma_i, guided), not the inversion chunk
    # that shares its UNet call (z*_i at sigma_{i-1}): a separate recording of step 1 agrees
    store = SourceAttentionStore()
    rec = SourceRecorder(store)
    rec.step = 1
    with torch.no_grad():
        cfg_eps(den, src.inverted[1], float(sigmas[1]), cond, uncond, 7.5, controller=rec)
    for table, kept in ((store.cross[1], src.store.cross[1]), (store.self_attn[1], src.store.self_attn[1])):
        assert kept.keys() == table.keys()
        for place, (q, k) in table.items():
            # q, k of the same sample in a different batch: reassociation in the layers below, a few
            # ulp of activations of magnitude ~1-10: atol 1e-5, rtol 1e-4 (~800 ulp) is generous
            torch.testing.assert_close(kept[place][0], q, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(kept[place][1], k, atol=1e-5, rtol=1e-4)
