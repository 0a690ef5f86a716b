"""Denoiser abstraction, schedules and inversion (DDIM / direct / null-text) on a tiny diffusers UNet."""

import pytest
import torch

from contextedit.nodes.mag_edit.denoiser import DiffusersDenoiser, nearest_timestep
from contextedit.nodes.mag_edit.inversion import (CaptureSpec, cfg_eps, ddim_schedule, invert, replay_source)
from fixtures.tiny_mag import TableEncoder, WordTokenizer, sd_alphas_cumprod, sd_like_unet

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
    assert float(s[0]) == pytest.approx(float(den.sigma_table[981]))
    assert float(s[-2]) == pytest.approx(float(den.sigma_table[1]))
    assert bool((s[:-1][1:] < s[:-1][:-1]).all())
    # abar = 1 / (1 + sigma^2)
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
    torch.testing.assert_close(eps, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        den(x, 0.0, cond)


def test_direct_inversion_reconstructs_exactly(setup):
    den, cond, uncond, x0 = setup
    sigmas = ddim_schedule(den.sigma_table, STEPS)
    src = invert(den, x0, cond, uncond, sigmas, "direct", 7.5)
    assert torch.equal(src.latents[-1], x0)
    # each guided step of the source branch plus its offset lands on z* (fp32 rounding only)
    with torch.no_grad():
        for i in range(STEPS):
            eps = cfg_eps(den, src.inverted[i], float(sigmas[i]), cond, uncond, 7.5)
            nxt = src.inverted[i] + (float(sigmas[i + 1]) - float(sigmas[i])) * eps + src.offsets[i]
            assert float((nxt - src.inverted[i + 1]).abs().max()) <= 1e-5
    # the free-running source branch: a random tiny UNet under CFG 7.5 amplifies fp32 rounding
    # step after step, so the end-to-end check runs in float64
    den64 = DiffusersDenoiser(sd_like_unet().double(), sd_alphas_cumprod())
    x64, c64, u64 = x0.double(), cond.double(), uncond.double()
    src64 = invert(den64, x64, c64, u64, sigmas, "direct", 7.5)
    rec = replay_source(den64, src64, c64)
    assert float((rec - x64).abs().max()) <= 1e-4
    ddim = invert(den64, x64, c64, u64, sigmas, "ddim", 7.5)
    assert float((ddim.latents[-1] - x64).abs().max()) > 1e-2  # what direct inversion fixes


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
    # the recorded trajectory is what the live reconstruction branch computes
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
