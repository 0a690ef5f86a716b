"""Boxes -> masks, morphology, per-plan mask batches and the overlay preview."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contextedit.nodes.errors import InputError
from contextedit.nodes.executability.plan import EditItem, EditPlan
from contextedit.nodes.masks.box_masks import (
    box_to_mask, boxes_to_mask, dilate_mask, feather_mask, gaussian_kernel, item_masks,
    overlay, palette_color, plan_masks, union_masks,
)


def grid(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---- box_to_mask: the pixel rule ---------------------------------------------------------------
def test_integer_box_covers_exactly_its_pixels():
    mask = box_to_mask([1, 2, 4, 3], height=5, width=6)
    expected = torch.zeros(5, 6)
    expected[2, 1:4] = 1
    assert mask.dtype == torch.float32 and mask.shape == (5, 6)
    assert torch.equal(mask, expected)


def test_whole_image_box():
    assert torch.equal(box_to_mask([0, 0, 6, 5], 5, 6), torch.ones(5, 6))


def test_pixel_centres_on_the_border_are_inside():
    # centres 0.5 and 1.5 lie on the borders of [0.5, 1.5]
    assert torch.equal(box_to_mask([0.5, 0.5, 1.5, 1.5], 3, 3),
                       grid([[1, 1, 0], [1, 1, 0], [0, 0, 0]]))


def test_fractional_box_uses_pixel_centres():
    # x in [0.6, 2.4] holds centre 1.5 only; y in [0.2, 2.6] holds 0.5, 1.5, 2.5
    assert torch.equal(box_to_mask([0.6, 0.2, 2.4, 2.6], 4, 4),
                       grid([[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]))


def test_box_thinner_than_a_pixel_marks_its_middle_column():
    assert torch.equal(box_to_mask([2.6, 1.0, 2.9, 3.0], 4, 5),
                       grid([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0],
                             [0, 0, 0, 0, 0]]))


@pytest.mark.parametrize("box", [[3, 1, 3, 4], [3, 4, 5, 1], [10, 0, 20, 5], [-5, -5, -1, -1]])
def test_empty_or_outside_boxes_mark_nothing(box):
    assert torch.count_nonzero(box_to_mask(box, 4, 5)) == 0


def test_partly_outside_box_is_clipped():
    assert torch.equal(box_to_mask([-3, -3, 2, 1], 3, 3),
                       grid([[1, 1, 0], [0, 0, 0], [0, 0, 0]]))


@pytest.mark.parametrize("box", [[0, 0, 1], [0, 0, float("nan"), 1], "0 0 1 1", [0, 0, True, 1]])
def test_malformed_boxes_raise(box):
    with pytest.raises(InputError):
        box_to_mask(box, 4, 4)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(x1=st.integers(-3, 12), y1=st.integers(-3, 12), w=st.integers(0, 12),
       h=st.integers(0, 12), height=st.integers(1, 10), width=st.integers(1, 10))
def test_integer_boxes_count_matches_clipped_area(x1, y1, w, h, height, width):
    mask = box_to_mask([x1, y1, x1 + w, y1 + h], height, width)
    area_x = max(0, min(x1 + w, width) - max(x1, 0))
    area_y = max(0, min(y1 + h, height) - max(y1, 0))
    assert int(mask.sum()) == area_x * area_y
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


# ---- union ---------------------------------------------------------------------------------
def test_boxes_to_mask_is_the_union():
    mask = boxes_to_mask([[0, 0, 2, 2], [1, 1, 3, 3]], 4, 4)
    assert torch.equal(mask, grid([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]))
    assert torch.count_nonzero(boxes_to_mask([], 4, 4)) == 0


def test_union_masks_tensor_and_list():
    a = grid([[1, 0], [0, 0]])
    b = grid([[0, 0.5], [0, 1]])
    expected = grid([[1, 0.5], [0, 1]])
    assert torch.equal(union_masks(torch.stack([a, b])), expected)
    assert torch.equal(union_masks([a, b]), expected)
    assert torch.equal(union_masks(torch.zeros(0, 2, 3)), torch.zeros(2, 3))
    with pytest.raises(InputError):
        union_masks([])
    with pytest.raises(InputError):
        union_masks([a, torch.zeros(3, 3)])


# ---- dilation / erosion ----------------------------------------------------------------------
def test_dilate_single_pixel_to_square():
    mask = torch.zeros(7, 7)
    mask[3, 3] = 1
    out = dilate_mask(mask, 2)
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1
    assert torch.equal(out, expected)


def test_dilate_at_the_border_and_batched():
    masks = torch.zeros(2, 4, 5)
    masks[0, 0, 0] = 1
    masks[1, 3, 4] = 1
    out = dilate_mask(masks, 1)
    assert out.shape == (2, 4, 5)
    assert torch.equal(out[0], grid([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0] * 5, [0] * 5]))
    assert torch.equal(out[1], grid([[0] * 5, [0] * 5, [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]))


def test_erode_with_negative_pixels():
    mask = torch.zeros(7, 7)
    mask[1:6, 1:6] = 1
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = 1
    assert torch.equal(dilate_mask(mask, -1), expected)
    # the image border does not erode
    assert torch.equal(dilate_mask(torch.ones(3, 3), -1), torch.ones(3, 3))


def test_dilate_zero_is_a_copy():
    mask = grid([[0, 1], [0, 0]])
    out = dilate_mask(mask, 0)
    assert torch.equal(out, mask) and out.data_ptr() != mask.data_ptr()


# ---- feathering ------------------------------------------------------------------------------
def reference_feather(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Direct 2-D sum with replicated edges (the separable code must equal it)."""
    sigma = pixels / 3.0
    offsets = np.arange(-pixels, pixels + 1)
    k = np.exp(-(offsets ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            total = 0.0
            for a, ka in zip(offsets, k):
                for b, kb in zip(offsets, k):
                    ii = min(max(i + a, 0), h - 1)
                    jj = min(max(j + b, 0), w - 1)
                    total += ka * kb * mask[ii, jj]
            out[i, j] = total
    return np.clip(out, 0, 1)


def test_gaussian_kernel_values():
    k = gaussian_kernel(1).double()
    e = math.exp(-4.5)  # sigma = 1/3: exp(-1 / (2/9))
    # the kernel is computed in float32 (eps 1.19e-7) from 3 exp + 1 normalising sum: values <= 1,
    # so a few ulps, < 1e-7 absolute; a wrong sigma moves the edge taps by ~1e-3 or more
    assert torch.allclose(k, torch.tensor([e, 1, e], dtype=torch.float64) / (1 + 2 * e),
                          rtol=0, atol=1e-7)
    assert torch.equal(gaussian_kernel(0), torch.ones(1))


@pytest.mark.parametrize("pixels", [1, 2, 3])
def test_feather_matches_direct_convolution(pixels):
    mask = torch.zeros(6, 7)
    mask[1:4, 2:6] = 1
    mask[5, 0] = 1
    out = feather_mask(mask, pixels)
    assert out.shape == mask.shape
    expected = reference_feather(mask.numpy().astype(np.float64), pixels)
    # float32 separable convolution vs a float64 loop: each output sums (2p+1)**2 <= 49 products of
    # values in [0, 1], so rounding stays below 49 * 1.19e-7 ~ 6e-6 worst case and ~1e-7 in practice;
    # 1e-6 absolute (outputs are <= 1) is far below the 1/49 a misplaced tap would change
    assert np.allclose(out.numpy(), expected, rtol=0, atol=1e-6)


def test_feather_keeps_zero_exactly_and_ones_near_one():
    assert torch.count_nonzero(feather_mask(torch.zeros(5, 5), 3)) == 0
    # an all-ones mask convolved with a normalised kernel: 1 up to float32 rounding of the 7+7-tap
    # separable sums (14 * 1.19e-7 ~ 1.7e-6 worst case); a kernel that leaks at the border shows as
    # a drop of several percent
    assert torch.allclose(feather_mask(torch.ones(5, 5), 3), torch.ones(5, 5), rtol=0, atol=2e-6)
    mask = grid([[0, 1], [0, 0]])
    assert torch.equal(feather_mask(mask, 0), mask)


# ---- per-plan mask batches ---------------------------------------------------------------------
def make_plan():
    return EditPlan(items=(
        EditItem("make the sky blue", True, "sky", "sky", ((0, 0, 8, 2),), "attribute"),
        EditItem("remove the pancakes", False, "no pancakes", "pancakes", ((1, 1, 4, 4),),
                 "remove"),
        EditItem("make it a painting", True, "style", "", (), "style"),
        EditItem("add a bird", True, "room", "bird", ((6, 3, 8, 6), (0, 5, 1, 6)), "add"),
    ), image_size=(8, 6))


def test_plan_masks_in_instruction_order_with_exact_zero_neg():
    masks = plan_masks(make_plan())
    assert masks.shape == (4, 6, 8) and masks.dtype == torch.float32
    expected0 = torch.zeros(6, 8)
    expected0[0:2, :] = 1
    assert torch.equal(masks[0], expected0)
    assert torch.count_nonzero(masks[1]) == 0          # [NEG]: exactly zero, box ignored
    assert torch.equal(masks[2], torch.ones(6, 8))     # executable, no box: the whole image
    expected3 = torch.zeros(6, 8)
    expected3[3:6, 6:8] = 1
    expected3[5, 0] = 1
    assert torch.equal(masks[3], expected3)


def test_plan_masks_neg_stays_zero_after_dilate_and_feather():
    masks = plan_masks(make_plan(), dilate=2, feather=2)
    assert torch.count_nonzero(masks[1]) == 0
    assert torch.equal(masks[1], torch.zeros(6, 8))
    assert masks[0].sum() > plan_masks(make_plan())[0].sum()  # the sky mask grew


def test_plan_masks_rescale_to_another_size():
    masks = plan_masks(make_plan(), height=12, width=16)
    expected0 = torch.zeros(12, 16)
    expected0[0:4, :] = 1
    assert masks.shape == (4, 12, 16)
    assert torch.equal(masks[0], expected0)


def test_item_masks_rules_and_empty_plan():
    masks = item_masks([None, [], [[0, 0, 1, 1]]], 2, 2)
    assert torch.equal(masks, torch.stack([torch.zeros(2, 2), torch.ones(2, 2),
                                           grid([[1, 0], [0, 0]])]))
    assert item_masks([], 3, 4).shape == (0, 3, 4)
    with pytest.raises(InputError):
        plan_masks(EditPlan(items=()))  # no size known


# ---- overlay -------------------------------------------------------------------------------
def test_overlay_blends_each_mask_with_its_colour():
    image = torch.full((2, 2, 3, 3), 0.5)
    masks = torch.zeros(2, 2, 3)
    masks[0, 0, 0] = 1
    masks[1, 1, 2] = 1
    out = overlay(image, masks, alpha=0.5)
    c0 = torch.tensor(palette_color(0))
    c1 = torch.tensor(palette_color(1))
    assert out.shape == image.shape
    # one float32 blend (a*x + (1-a)*c) of values in [0, 1]: within a few ulps (default allclose
    # bounds, 1e-8 + 1e-5 relative, are ~100x that); a wrong colour or alpha is off by >= 0.05
    assert torch.allclose(out[:, 0, 0], 0.5 * 0.5 + 0.5 * c0)
    assert torch.allclose(out[:, 1, 2], 0.5 * 0.5 + 0.5 * c1)
    assert torch.equal(out[:, 0, 1], image[:, 0, 1])  # no mask: unchanged
    assert not torch.allclose(c0, c1)


def test_overlay_per_image_masks_and_alpha_channel():
    image = torch.zeros(2, 2, 2, 4)
    image[..., 3] = 0.25
    masks = torch.zeros(2, 1, 2, 2)
    masks[1, 0] = 1
    out = overlay(image, masks, alpha=1.0)
    assert torch.equal(out[0], image[0])
    # alpha 1: the colour itself, up to the float32 rounding of 1*c + 0*x (exact in practice)
    assert torch.allclose(out[1, ..., :3], torch.tensor(palette_color(0)).expand(2, 2, 3))
    assert torch.equal(out[..., 3], image[..., 3])


def test_palette_colours_are_distinct():
    colours = {tuple(round(c, 3) for c in palette_color(i)) for i in range(32)}
    assert len(colours) == 32


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(InputError):
        overlay(torch.zeros(1, 4, 4, 3), torch.zeros(1, 3, 4))
    with pytest.raises(InputError):
        overlay(torch.zeros(4, 4, 3), torch.zeros(1, 4, 4))


# ---- inputs are never mutated ------------------------------------------------------------------
def test_inputs_unchanged():
    image = torch.rand(1, 6, 8, 3)
    masks = plan_masks(make_plan())
    boxes = [[0, 0, 3, 3], [1, 1, 4, 4]]
    image_before, masks_before = image.clone(), masks.clone()
    boxes_before = [list(b) for b in boxes]
    overlay(image, masks)
    dilate_mask(masks, 2)
    dilate_mask(masks, -1)
    feather_mask(masks, 2)
    union_masks(masks)
    union_masks(list(masks))
    boxes_to_mask(boxes, 6, 8)
    item_masks([boxes, None], 6, 8, dilate=1, feather=1)
    assert torch.equal(image, image_before)
    assert torch.equal(masks, masks_before)
    assert boxes == boxes_before
