"""The paper's losses (eq. 4-11), the gradient path to the head, and test-time optimisation."""

import pytest
import torch
import torch.nn.functional as F
from contextedit.nodes.errors import InputError
from contextedit.nodes.regions import losses as L
from contextedit.nodes.regions.encoders import ClipVisionEncoder
from contextedit.nodes.regions.model import RegionPredictor
from contextedit.nodes.regions.objective import (
    composite,
    encode_batch,
    optimize_region,
    region_losses,
)
from fixtures.tiny_models import (
    make_tiny_clip_vision,
    make_tiny_clip_vision_8x8,
    write_test_image,
)
from fixtures.tiny_regions import LocalisationScenario, contrast_and_area, edited_copy
from regions_common import TINY_HEAD, load_image, one_thread, tiny_encoders  # noqa: F401


@pytest.fixture(scope="module")
def encoders(generated_dir):
    return tiny_encoders(generated_dir)


@pytest.fixture(scope="module")
def images(generated_dir):
    src = write_test_image(generated_dir / "regions" / "src.png", 64, 64)
    edited = edited_copy(src, generated_dir / "regions" / "edited.png")
    return load_image(src), load_image(edited)


def test_losses_match_the_equations():
    torch.manual_seed(0)
    a, b, c, d = (torch.randn(3, 8) for _ in range(4))
    cos = lambda x, y: (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    assert torch.allclose(L.sem_edited_loss(a, b), (1 - cos(a, b)).mean(), atol=1e-6)           # (4)
    assert torch.allclose(L.sem_original_loss(c, d), (1 - cos(c, d)).mean(), atol=1e-6)         # (5)
    total, parts = L.sem_align_loss(a, c, b, d)                                                  # (6)
    assert torch.allclose(total, parts["semEdited"] + parts["semOriginal"])
    assert torch.allclose(L.clip_guidance_loss(a, b), (1 - cos(a, b)).mean(), atol=1e-6)        # (7)
    assert torch.allclose(L.clip_directional_loss(a, c, b, d), (1 - cos(a - c, b - d)).mean(), atol=1e-6)  # (8)
    fa, fb = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    def sim(f):
        return torch.tensor([[[float(cos(f[k, i], f[k, j])) for j in range(5)] for i in range(5)] for k in range(2)])

    # eq. 9 with the normalisation the pack adds: the squared Frobenius norm divided by N^2 pairs
    ref = torch.tensor([sum((float(sim(fa)[k, i, j]) - float(sim(fb)[k, i, j])) ** 2
                            for i in range(5) for j in range(5)) / 25 for k in range(2)]).mean()
    # entries in [0, 4], 25 float32 products + a mean: 1e-5 is ~100x the rounding
    assert torch.allclose(L.clip_structural_loss(fa, fb), ref, atol=1e-5)                        # (9)
    # identical features: every Sim entry cancels exactly, up to float32 rounding of the cosines
    assert float(L.clip_structural_loss(fa, fa)) == pytest.approx(0.0, abs=1e-6)
    # scale independent of N: every patch repeated (N -> 2N) tiles Sim 2x2, the mean is unchanged
    # (the paper's sum would be 4x); same float32 rounding bound as above
    twice = lambda f: f.repeat_interleave(2, dim=1)
    assert torch.allclose(L.clip_structural_loss(twice(fa), twice(fb)), L.clip_structural_loss(fa, fb), atol=1e-5)
    w = L.LossWeights(alpha=0.5, beta=2.0, lambda_g=0.1, lambda_d=0.2, lambda_s=0.3)
    clip, terms = L.clip_loss(a, c, fa[:1].expand(3, 5, 8), fb[:1].expand(3, 5, 8), b, d, w)     # (10)
    assert torch.allclose(clip, 0.1 * terms["CLIPg"] + 0.2 * terms["CLIPd"] + 0.3 * terms["CLIPs"])
    assert torch.allclose(L.total_loss(total, clip, w), 0.5 * total + 2.0 * clip)                # (11)


def test_composite_is_the_eq23_blend():
    x, g = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    assert torch.equal(composite(x, g, torch.zeros(1, 1, 2, 2)), x)
    assert torch.equal(composite(x, g, torch.ones(1, 1, 2, 2)), g)
    half = composite(x, g, torch.full((1, 1, 2, 2), 0.25))
    # upsampling a constant map and 0.25 * 1 + 0.75 * 0 are exact in float32; allclose's default
    # rtol 1e-5 only absorbs a last-bit difference in the interpolation weights
    assert torch.allclose(half, torch.full_like(half, 0.25))


def test_every_head_parameter_gets_gradient(encoders, images):
    """Unlike the released LearnRegion code, L_CLIP reaches the head: all parameters on the region
    path get a non-zero gradient from L_CLIP alone; f_sem gets one from L_semAlign; all from L_total."""
    source, edited = images
    batch = encode_batch(encoders, source.repeat(2, 1, 1, 1), ["make the red box green", "add a hat"],
                         ["a red box", "a blue disc"], ["a green box", "a disc with a hat"],
                         edited.repeat(2, 1, 1, 1))
    torch.manual_seed(0)
    head = RegionPredictor(encoders.predictor_config(**TINY_HEAD))
    sem_path = ("f_sem", "image_proj", "text_proj", "cross_")  # L_semAlign reaches f_sem and eq. 1
    for weights, on_path in ((L.LossWeights(alpha=0.0), lambda n: not n.startswith("f_sem")),
                             (L.LossWeights(beta=0.0), lambda n: n.startswith(sem_path)),
                             (L.LossWeights(), lambda n: True)):
        head.zero_grad(set_to_none=True)
        loss, _, _ = region_losses(head, encoders.vision, batch, weights)
        loss.backward()
        for name, p in head.named_parameters():
            grad = 0.0 if p.grad is None else float(p.grad.abs().sum())
            assert (grad > 0) == on_path(name), (weights, name, grad)


GRIDS = {"4x4": make_tiny_clip_vision, "8x8": make_tiny_clip_vision_8x8}


@pytest.fixture(scope="module", params=sorted(GRIDS))
def scenario(request, generated_dir):
    """The localisation scenario at a 4x4 (N = 16) and an 8x8 (N = 64) CLIP patch grid."""
    vision = ClipVisionEncoder.load(GRIDS[request.param](generated_dir).folder)
    assert vision.grid_size == int(request.param[0])
    return LocalisationScenario(generated_dir, vision)


def test_test_time_region_moves_to_where_the_edit_shows(scenario):
    """Shipped defaults only (steps, lr, loss weights, head size): G(X, t_e) repaints the left box
    *and* tints the whole image; T_e is CLIP's embedding of the ideal edit (left box only), T_o that
    of the source. The fitted region must cover the left box and little else (an empty or a full
    region has contrast 0 and area 0 or 1), unlike the fresh head, and the loss must drop; at both
    patch grids, so a loss whose scale grows with N fails. Measured (4x4 / 8x8): contrast
    +0.75 / +0.94, area 0.44 / 0.23; with eq. 9 summed over N^2 pairs: contrast ~0, area 0."""
    result = optimize_region(scenario.encoders, *scenario.args)
    contrast, area = contrast_and_area(result.region.probs[0], scenario.inside)
    initial, _ = contrast_and_area(result.initial_region.probs[0], scenario.inside)
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses[::10]
    assert contrast > 0.5 and contrast > initial + 0.25, (contrast, initial)
    assert 0.1 < area < 0.6, area
    assert not torch.equal(result.region.mask, result.initial_region.mask)


def test_test_time_mode_with_real_tiny_encoders(encoders, images):
    source, edited = images
    result = optimize_region(encoders, source, "make the red box green", "a red box and a blue disc",
                             "a green box and a blue disc", edited, steps=15, lr=1e-2,
                             config=encoders.predictor_config(**TINY_HEAD))
    assert len(result.losses) == 16 and result.losses[-1] < result.losses[0]
    assert not torch.equal(result.region.probs, result.initial_region.probs)
    assert result.region.mask_at(64, 64).shape == (1, 1, 64, 64)
    with pytest.raises(InputError) as info:
        optimize_region(encoders, source, "", "a", "b", edited, steps=2)
    assert info.value.input_name == "instruction"
    with pytest.raises(InputError) as info:
        optimize_region(encoders, F.interpolate(source, size=(20, 20)), "x", "a", "b", edited, steps=2)
    assert info.value.input_name == "image"
