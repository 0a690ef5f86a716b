"""Box conventions of VLM families -> source-image pixels, and Qwen's smart resize."""

import math

import pytest

from contextedit.nodes.errors import ContextEditError, InputError
from contextedit.nodes.executability.box_coords import (
    ABSOLUTE, RELATIVE_1000, SOURCE_PIXELS, family_of, model_input_size_for, smart_resize,
    to_source_pixels,
)


def approx_box(box):
    # Box conversion is a handful of float64 multiplications/divisions per coordinate (scale to the
    # model's input, back to the source size): each rounds by <= 2**-53 ~ 1.1e-16 relative, so
    # ~10 ops stay far below 1e-12 relative; abs=1e-12 covers coordinates that are exactly 0. A
    # wrong convention is off by a factor (e.g. 1000/640), never by 1e-12.
    return pytest.approx(box, rel=1e-12, abs=1e-12)


# ---- smart_resize ----------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, kwargs, expected", [
    # plain rounding to multiples of 28: 480/28 = 17.14 -> 17, 640/28 = 22.86 -> 23
    (480, 640, {}, (476, 644)),
    # 300/28 = 10.71 -> 11, 1000/28 = 35.71 -> 36
    (300, 1000, {}, (308, 1008)),
    (1080, 1920, {}, (1092, 1932)),
    # ties round to even like Python's round(): 70/28 = 2.5 -> 2, 42/28 = 1.5 -> 2
    (70, 700, {}, (56, 700)),
    # too many pixels: 4004*4004 > 16384*28*28 -> scale by sqrt, floor to 28: 3584 = 128*28
    (4000, 4000, {}, (3584, 3584)),
    # transformers' processor default max_pixels (28*28*1280)
    (1080, 1920, {"max_pixels": 28 * 28 * 1280}, (728, 1316)),
    # too few pixels: 28*28 < 3136 -> scale up, ceil to 28
    (20, 30, {}, (56, 84)),
    # another factor
    (480, 640, {"factor": 32, "max_pixels": 100000}, (256, 352)),
    # a side shorter than half the factor still gets one factor (qwen_vl_utils behaviour)
    (28, 5000, {}, (28, 5012)),
])
def test_smart_resize_matches_qwen_rules(height, width, kwargs, expected):
    assert smart_resize(height, width, **kwargs) == expected


def test_smart_resize_properties_on_many_sizes():
    for height in range(1, 3000, 97):
        for width in range(1, 3000, 89):
            if max(height, width) / min(height, width) > 200:
                continue
            h, w = smart_resize(height, width)
            assert h % 28 == 0 and w % 28 == 0 and h >= 28 and w >= 28
            assert h * w <= 16384 * 28 * 28
            assert h * w >= 4 * 28 * 28
            # each side is within one factor step of a common scaling, so the aspect ratio
            # changes by at most those two steps (unless a side was forced up to one factor)
            if min(h, w) > 28:
                bound = math.log1p(28 / (h - 28)) + math.log1p(28 / (w - 28))
                # + 1e-12: two float64 logs of ratios (~1e-16 relative each) on a bound of order 0.1
                assert abs(math.log(h / w) - math.log(height / width)) <= bound + 1e-12


@pytest.mark.parametrize("args", [(0, 10), (10, -1), (10.5, 10), (True, 10), (10, 10000)])
def test_smart_resize_rejects_bad_sizes(args):
    with pytest.raises(InputError):
        smart_resize(*args)


# ---- family_of -------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type, convention, known", [
    ("qwen2_5_vl", ABSOLUTE, True),
    ("Qwen2_5_VLForConditionalGeneration", ABSOLUTE, True),
    ("qwen2_vl", RELATIVE_1000, True),
    ("qwen3_vl", RELATIVE_1000, True),
    ("qwen3_vl_moe", RELATIVE_1000, True),
    ("Qwen/Qwen2.5-VL-7B-Instruct", ABSOLUTE, True),
    ("Qwen/Qwen2-VL-2B-Instruct", RELATIVE_1000, True),
    ("Qwen/Qwen3-VL-8B-Instruct", RELATIVE_1000, True),
    ("llava", RELATIVE_1000, False),
    ("", RELATIVE_1000, False),
])
def test_family_of(model_type, convention, known):
    family = family_of(model_type)
    assert family.convention == convention
    assert family.known is known
    assert bool(family.note) is (not known)
    if not known:
        assert "0-1000" in family.note


# ---- absolute (Qwen2.5-VL) -------------------------------------------------------------------
def test_absolute_640x480_scales_by_input_size():
    # the model saw 644x476 (smart resize of 640x480)
    assert to_source_pixels([322, 238, 644, 476], ABSOLUTE, (640, 480), (644, 476)) == \
        approx_box((320.0, 240.0, 640.0, 480.0))
    assert to_source_pixels([0, 0, 644, 476], ABSOLUTE, (640, 480), (644, 476)) == \
        approx_box((0.0, 0.0, 640.0, 480.0))
    assert to_source_pixels([100, 50, 200, 150], ABSOLUTE, (640, 480), (644, 476)) == approx_box(
        (100 * 640 / 644, 50 * 480 / 476, 200 * 640 / 644, 150 * 480 / 476))


def test_absolute_defaults_to_smart_resize_of_the_image():
    assert model_input_size_for((640, 480)) == (644, 476)
    assert model_input_size_for((1000, 300)) == (1008, 308)
    assert to_source_pixels([322, 238, 644, 476], ABSOLUTE, (640, 480)) == \
        approx_box((320.0, 240.0, 640.0, 480.0))


def test_absolute_non_square_1000x300():
    # 1000 wide, 300 high -> the model saw 1008x308
    assert to_source_pixels([504, 154, 1008, 308], ABSOLUTE, (1000, 300), (1008, 308)) == \
        approx_box((500.0, 150.0, 1000.0, 300.0))
    assert to_source_pixels([100, 50, 200, 100], ABSOLUTE, (1000, 300), (1008, 308)) == \
        approx_box((99.20634920634922, 48.701298701298704, 198.41269841269843,
                    97.40259740259741))


def test_absolute_uses_the_given_input_size_not_the_default():
    # a processor with a small max_pixels showed the model 1316x728 for a 1920x1080 image
    assert to_source_pixels([658, 364, 1316, 728], ABSOLUTE, (1920, 1080), (1316, 728)) == \
        approx_box((960.0, 540.0, 1920.0, 1080.0))


# ---- relative 0-1000 (Qwen2-VL / Qwen3-VL) -----------------------------------------------------
def test_relative_640x480():
    assert to_source_pixels([250, 500, 750, 1000], RELATIVE_1000, (640, 480)) == \
        approx_box((160.0, 240.0, 480.0, 480.0))


def test_relative_1000x300_ignores_model_input_size():
    assert to_source_pixels([100, 100, 900, 900], RELATIVE_1000, (1000, 300), (1008, 308)) == \
        approx_box((100.0, 30.0, 900.0, 270.0))
    assert to_source_pixels([333, 1, 334, 999], RELATIVE_1000, (1000, 300)) == \
        approx_box((333.0, 0.3, 334.0, 299.7))


def test_source_pixels_is_identity_within_the_image():
    assert to_source_pixels([1.5, 2, 30, 40.25], SOURCE_PIXELS, (64, 48)) == \
        approx_box((1.5, 2.0, 30.0, 40.25))


# ---- repairs and rejections ----------------------------------------------------------------
def test_swapped_corners_are_reordered():
    assert to_source_pixels([750, 1000, 250, 500], RELATIVE_1000, (640, 480)) == \
        approx_box((160.0, 240.0, 480.0, 480.0))
    assert to_source_pixels([644, 0, 322, 476], ABSOLUTE, (640, 480), (644, 476)) == \
        approx_box((320.0, 0.0, 640.0, 480.0))


def test_boxes_are_clamped_to_the_image():
    assert to_source_pixels([-50, -10, 1200, 500], RELATIVE_1000, (640, 480)) == \
        approx_box((0.0, 0.0, 640.0, 240.0))
    assert to_source_pixels([600, 400, 900, 700], ABSOLUTE, (640, 480), (644, 476)) == \
        approx_box((600 * 640 / 644, 400 * 480 / 476, 640.0, 480.0))
    box = to_source_pixels([-5, -5, 10, 10], SOURCE_PIXELS, (64, 48))
    assert box == (0.0, 0.0, 10.0, 10.0)
    assert all(math.copysign(1.0, v) == 1.0 for v in box)  # no -0.0


@pytest.mark.parametrize("box", [
    [100, 100, 100, 200],            # zero width
    [100, 200, 300, 200],            # zero height
    [1100, 0, 1200, 100],            # right of the image: zero width after clamping
    [0, -300, 100, -1],              # above the image
    [float("nan"), 0, 10, 10],
    [0, 0, float("inf"), 10],
    [0, 0, 1e308, 1e308],            # overflows to inf when scaled
    [1, 2, 3],                       # three numbers
    [1, 2, 3, 4, 5],
    ["1", 2, 3, 4],                  # strings are the parser's job, not ours
    [True, 0, 10, 10],
    None,
    "0 0 10 10",
    {"x1": 0},
])
def test_unusable_boxes_give_none(box):
    assert to_source_pixels(box, RELATIVE_1000, (640, 480)) is None


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError) as info:
        to_source_pixels([0, 0, 10, 10], "percent", (640, 480))
    assert info.value.input_name == "convention"
    with pytest.raises(InputError) as info:
        to_source_pixels([0, 0, 10, 10], RELATIVE_1000, (640, 0))
    assert info.value.input_name == "image_size"
    with pytest.raises(ContextEditError):
        to_source_pixels([0, 0, 10, 10], ABSOLUTE, (640, 480), (0, 5))
