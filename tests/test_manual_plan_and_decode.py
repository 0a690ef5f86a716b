"""Manual plans (no VLM) and batch mask decoding, without ComfyUI."""

import pytest
import torch

from contextedit.nodes.errors import InputError
from contextedit.nodes.executability.manual import EMPTY_MASK_REASON, USER_NEG_REASON, manual_plans
from contextedit.nodes.masks.decode import decode_batch

IMG = torch.rand(1, 64, 96, 3, generator=torch.Generator().manual_seed(0))


def test_boxes_and_user_negatives():
    plans = manual_plans(IMG, "make the hat red\nadd a moon\nremove the car",
                         "[[0, 0, 10, 10], null, [[5, 5, 20, 20], [30, 30, 40, 40]]]", "3")
    (plan,) = plans
    assert [i.instruction for i in plan.items] == ["make the hat red", "add a moon", "remove the car"]
    assert [i.executable for i in plan.items] == [True, True, False]
    assert plan.items[2].reason == USER_NEG_REASON
    assert plan.items[0].boxes == ((0.0, 0.0, 10.0, 10.0),) and plan.items[1].boxes == ()
    assert plan.image_size == (96, 64)


def test_masks_from_another_pack_give_boxes_and_empty_masks_give_neg():
    masks = torch.zeros(2, 32, 48)      # half resolution of the image
    masks[0, 4:8, 10:20] = 1.0
    (plan,) = manual_plans(IMG, "a\nb", masks=masks)
    assert plan.items[0].executable and plan.items[0].boxes == ((20.0, 8.0, 40.0, 16.0),)
    assert not plan.items[1].executable and plan.items[1].reason == EMPTY_MASK_REASON


def test_bbox_type_from_other_packs():
    (plan,) = manual_plans(IMG, "a\nb", bboxes=[[1, 2, 30, 40], [50, 10, 90, 60]])
    assert plan.items[1].boxes == ((50.0, 10.0, 90.0, 60.0),)


@pytest.mark.parametrize("kwargs, name", [
    (dict(instructions_text="  "), "instructions"),
    (dict(instructions_text="a\nb", boxes_json="[[0,0,1,1]]"), "boxes"),
    (dict(instructions_text="a", boxes_json="{oops"), "boxes"),
    (dict(instructions_text="a\nb", non_executable="3"), "non_executable"),
    (dict(instructions_text="a\nb", masks=torch.zeros(3, 8, 8)), "masks"),
])
def test_bad_input_names_the_input(kwargs, name):
    with pytest.raises(InputError) as e:
        manual_plans(IMG, **kwargs)
    assert e.value.input_name == name


def test_decode_batch_order_neg_zero_and_union():
    images = torch.rand(2, 64, 96, 3)
    before = images.clone()
    plans = manual_plans(images, "left\nmiddle\nright", "[[0,0,30,64],[30,0,60,64],[60,0,96,64]]", "2")
    masks, union, preview = decode_batch(images, plans)
    assert masks.shape == (6, 64, 96) and union.shape == (2, 64, 96) and preview.shape == (2, 64, 96, 3)
    for b in range(2):
        left, middle, right = masks[3 * b: 3 * b + 3]
        assert left[:, :30].eq(1).all() and left[:, 30:].eq(0).all()
        assert middle.eq(0).all()  # [NEG]
        assert right[:, 60:].eq(1).all() and right[:, :60].eq(0).all()
        # the union is an elementwise max of the same tensors: bit-identical by construction
        assert torch.equal(union[b], torch.maximum(left, right))
    assert torch.equal(images, before)
    assert not torch.equal(preview, images)


def test_decode_batch_plan_count_mismatch():
    plans = manual_plans(torch.rand(3, 8, 8, 3), "a")
    with pytest.raises(InputError) as e:
        decode_batch(torch.rand(2, 8, 8, 3), plans)
    assert e.value.input_name == "plan"
