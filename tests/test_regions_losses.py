"""The paper's losses (eq. 4-11), the gradient path to the head, and test-time optimisation."""

import pytest
import torch
import torch.nn.functional as F
from contextedit.nodes.errors import InputError
from contextedit.nodes.regions import losses as L
from contextedit.nodes.regions.model import RegionPredictor
from contextedit.nodes.regions.objective import (
    RegionEncoders,
    composite,
    encode_batch,
    optimize_region,
    region_losses,
)
from fixtures.tiny_models import write_test_image
from fixtures.tiny_regions import edited_copy
from regions_common import TINY_HEAD, box_mask, load_image, one_thread, tiny_encoders  # noqa: F401


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


class LookupText:
    """A text embedder that maps each description to a fixed vector (CLIP-space stand-in)."""

    def __init__(self, table):
        self.table = table
        self.projection_dim = next(iter(table.values())).shape[-1]

    def __call__(self, texts):
        return torch.stack([self.table[t] for t in texts])


def test_test_time_region_moves_to_where_the_edit_shows(encoders, images):
    """G(X, t_e) repaints the left box *and* tints the whole image; T_e is CLIP's embedding of the
    ideal edit (left box only), T_o that of the source. The fitted region must cover the left box
    more than the rest, much more than the fresh head does, and the loss must drop."""
    source, edited = images
    generated = (edited * 0.6 + torch.tensor([0.4, 0.0, 0.4]).view(1, 3, 1, 1)).clamp(0, 1)  # tinted everywhere
    with torch.no_grad():
        ideal, _ = encoders.vision(edited)
        original, _ = encoders.vision(source)
    text = LookupText({"a red box": original[0], "a green box": ideal[0]})
    enc = RegionEncoders(encoders.vision, encoders.instruction, text)
    result = optimize_region(enc, source, "make the red box green", "a red box", "a green box", generated,
                             steps=60, lr=1e-2, config=enc.predictor_config(**TINY_HEAD),
                             weights=L.LossWeights(lambda_s=3e-3))  # eq. 9 sums N^2 terms
    inside = box_mask(64, 64, grid=4).flatten() > 0.5

    def contrast(region):
        p = region.probs[0]
        return float(p[inside].mean() - p[~inside].mean())

    assert result.losses[-1] < 0.5 * result.losses[0], result.losses[::10]
    assert contrast(result.region) > 0.3 and contrast(result.region) > contrast(result.initial_region) + 0.25
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
