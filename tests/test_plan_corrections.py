"""The artist's corrections to an edit plan (ContextEdit Review Plan's engine), without ComfyUI:
keyed by instruction number + text + image fingerprint, stale ones dropped with a note, bad ones
refused with an error naming the 'corrections' input, empty = the very same plan."""

import json

import pytest
import torch

from contextedit.nodes.errors import InputError
from contextedit.nodes.executability.manual import manual_plans
from contextedit.nodes.executability.plan import EditItem, EditPlan
from contextedit.nodes.masks.canvas import masks_message
from contextedit.nodes.masks.decode import decode_batch
from contextedit.nodes.review.canvas import REVIEW_KEY, review_message
from contextedit.nodes.review.corrections import (
    image_fingerprint,
    parse_corrections,
    review_plans,
    validate_corrections,
)

INSTRUCTIONS = "recolour the red square\nrecolour the blue disc\nremove the moon"
BOXES = "[[8, 8, 40, 40], [56, 16, 88, 56], [10, 44, 30, 60]]"


def image(seed=0, h=64, w=96):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


IMG = image()
PLANS = manual_plans(IMG, INSTRUCTIONS, BOXES, "3")
FP = image_fingerprint(IMG[0])


def corrections(*items, fingerprint=FP):
    entry = {"items": list(items)}
    if fingerprint is not None:
        entry["image"] = fingerprint
    return json.dumps({"schema": "contextedit.plan_corrections", "version": 1, "images": [entry]})


def item(number, instruction=None, **changes):
    text = instruction if instruction is not None else INSTRUCTIONS.split("\n")[number - 1]
    return {"number": number, "instruction": text, **changes}


# ---- the fingerprint --------------------------------------------------------------------------
def test_fingerprint_is_size_and_pixel_hash():
    assert FP.startswith("96x64:") and len(FP.split(":")[1]) == 16
    assert image_fingerprint(IMG[0].clone()) == FP                       # same pixels, same key
    assert image_fingerprint(image(seed=1)[0]) != FP                      # another picture
    assert image_fingerprint(image(h=65)[0]).startswith("96x65:")
    # changes below half an 8-bit step round to the same pixels: a reloaded PNG keeps its key
    assert image_fingerprint((IMG[0] * 255).round() / 255) == image_fingerprint((IMG[0] * 255).round() / 255 + 1e-4)


# ---- empty = unchanged ------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   \n ", None, json.dumps({"images": []})])
def test_empty_corrections_give_the_same_plan(text):
    review = review_plans(PLANS, IMG, text)
    assert review.plans[0] is PLANS[0]
    assert review.applied == () and review.dropped == ()
    assert review.fingerprints == [FP]


# ---- applied ----------------------------------------------------------------------------------
def test_boxes_verdict_and_resolved_text_are_applied_to_that_instruction_only():
    text = corrections(item(1, boxes=[[20, 10, 52, 42]]),
                       item(2, executable=False),
                       item(3, executable=True, resolved="remove the crescent moon", boxes=[]))
    review = review_plans(PLANS, IMG, text)
    (plan,) = review.plans
    first, second, third = plan.items
    assert first.boxes == ((20.0, 10.0, 52.0, 42.0),) and first.executable
    assert not second.executable and second.boxes == PLANS[0].items[1].boxes
    assert second.reason.startswith("corrected by the artist to [NEG]")
    assert third.executable and third.boxes == () and third.resolved == "remove the crescent moon"
    assert plan.executable_instructions() == "recolour the red square\nremove the crescent moon"
    assert len(review.applied) == 3 and review.dropped == ()
    assert any("[MASK] -> [NEG]" in note for note in plan.notes)
    # the input plan is untouched
    assert PLANS[0].items[1].executable and PLANS[0].items[0].boxes == ((8.0, 8.0, 40.0, 40.0),)


def test_masks_follow_the_corrected_plan():
    text = corrections(item(1, boxes=[[20, 10, 52, 42]]), item(2, executable=False))
    review = review_plans(PLANS, IMG, text)
    masks, union, _ = decode_batch(IMG, review.plans)
    assert masks[0, 10:42, 20:52].eq(1).all() and masks[0].sum() == 32 * 32
    assert masks[1].eq(0).all()  # flipped to [NEG]: all black


def test_single_image_shorthand_and_no_fingerprint():
    text = json.dumps({"items": [item(2, executable=False)]})
    (plan,) = review_plans(PLANS, IMG, text).plans
    assert not plan.items[1].executable
    # no fingerprint: applies to any image (keyed by the instruction only)
    (plan,) = review_plans(manual_plans(image(seed=5), INSTRUCTIONS, BOXES, "3"), image(seed=5), text).plans
    assert not plan.items[1].executable


def test_blank_resolved_means_the_instruction_itself():
    resolved = review_plans(PLANS, IMG, corrections(item(1, resolved="paint the square green"))).plans
    back = review_plans(resolved, IMG, corrections(item(1, resolved="  "))).plans[0]
    assert resolved[0].items[0].resolved == "paint the square green"
    assert back.items[0].resolved == back.items[0].instruction


def test_batch_images_are_keyed_by_their_own_fingerprint():
    images = torch.cat([image(seed=0), image(seed=1)])
    plans = manual_plans(images, INSTRUCTIONS, BOXES, "3")
    second = image_fingerprint(images[1])
    text = json.dumps({"images": [{"image": second, "items": [item(1, executable=False)]},
                                  {"items": [item(2, executable=False)]}]})
    review = review_plans(plans, images, text)
    # image 1 has no entry of its own: the fingerprint-free one applies; image 2 uses its own only
    assert [i.executable for i in review.plans[0].items] == [True, False, False]
    assert [i.executable for i in review.plans[1].items] == [False, True, False]


# ---- dropped, never misapplied -----------------------------------------------------------------
def test_correction_for_another_image_is_dropped_with_a_note():
    other = image_fingerprint(image(seed=7)[0])
    review = review_plans(PLANS, IMG, corrections(item(2, executable=False), fingerprint=other))
    assert review.plans[0].items == PLANS[0].items
    assert review.applied == ()
    assert len(review.dropped) == 1 and other in review.dropped[0] and "image changed" in review.dropped[0]
    assert review.dropped[0] in review.plans[0].notes and "dropped" in review.summary()


def test_correction_whose_instruction_changed_is_dropped_not_moved():
    # the artist corrected "recolour the blue disc" (number 2); then the instructions were reordered
    plans = manual_plans(IMG, "recolour the blue disc\nrecolour the red square", "[[56, 16, 88, 56], [8, 8, 40, 40]]", "")
    review = review_plans(plans, IMG, corrections(item(2, executable=False)))
    assert [i.executable for i in review.plans[0].items] == [True, True]   # nothing applied elsewhere
    assert len(review.dropped) == 1 and "'recolour the red square'" in review.dropped[0]
    # a number past the end
    review = review_plans(PLANS, IMG, corrections(item(4, "add a sun", executable=False)))
    assert review.plans[0].items == PLANS[0].items and "3 instruction(s)" in review.dropped[0]


def test_some_dropped_others_applied():
    text = corrections(item(1, boxes=[[0, 0, 10, 10]]), item(2, "recolour the green disc", executable=False))
    review = review_plans(PLANS, IMG, text)
    assert review.plans[0].items[0].boxes == ((0.0, 0.0, 10.0, 10.0),)
    assert review.plans[0].items[1].executable
    assert len(review.applied) == 1 and len(review.dropped) == 1


# ---- malformed: a clear error naming the input -------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("{oops", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"images": [{"items": [{"number": 1}]}]}), "needs 'instruction'"),
    (json.dumps({"items": [{"number": 0, "instruction": "x"}]}), "instruction number"),
    (json.dumps({"items": [{"number": 1, "instruction": "x", "executable": "yes"}]}), "true ([MASK])"),
    (json.dumps({"items": [{"number": 1, "instruction": "x", "boxes": [[10, 10, 5, 20]]}]}), "x1 < x2"),
    (json.dumps({"items": [{"number": 1, "instruction": "x", "boxes": [[-1, 0, 5, 5]]}]}), "negative"),
    (json.dumps({"items": [{"number": 1, "instruction": "x", "boxes": [[0, 0, 5]]}]}), "[x1, y1, x2, y2]"),
    (json.dumps({"items": [{"number": 1, "instruction": "x", "boxes": [[0, 0, 5, float("inf")]]}]}), "finite"),
    (json.dumps({"items": [{"number": 1, "instruction": "x", "colour": "red"}]}), "unknown key"),
    (json.dumps({"items": [{"number": 1, "instruction": "x"}, {"number": 1, "instruction": "x"}]}), "twice"),
    (json.dumps({"image": "big picture", "items": []}), "fingerprint"),
    (json.dumps({"images": [{"items": []}, {"items": []}]}), "2 entries"),
    (json.dumps({"version": 2, "images": []}), "version"),
    (json.dumps({"schema": "something.else", "images": []}), "schema"),
])
def test_malformed_corrections_name_the_input(text, words):
    with pytest.raises(InputError) as e:
        parse_corrections(text)
    assert e.value.input_name == "corrections" and words in str(e.value)
    message = validate_corrections(text)   # what POST /prompt answers
    assert isinstance(message, str) and "corrections" in message


def test_box_outside_the_image_is_an_error_not_a_clamp():
    with pytest.raises(InputError) as e:
        review_plans(PLANS, IMG, corrections(item(1, boxes=[[50, 10, 97, 42]])))
    assert e.value.input_name == "corrections" and "96x64" in str(e.value)


def test_box_outside_but_for_another_image_is_dropped_not_an_error():
    other = image_fingerprint(image(seed=3)[0])
    review = review_plans(PLANS, IMG, corrections(item(1, boxes=[[50, 10, 970, 42]]), fingerprint=other))
    assert review.plans[0].items == PLANS[0].items and len(review.dropped) == 1


def test_plan_batch_mismatch_names_the_plan():
    with pytest.raises(InputError) as e:
        review_plans(PLANS * 2, torch.cat([IMG, IMG, IMG]), "")
    assert e.value.input_name == "plan"


# ---- what the canvas is sent -------------------------------------------------------------------
def test_review_message_carries_plan_model_plan_colours_and_notes():
    plans = [EditPlan(items=(EditItem("a", True, boxes=((1, 2, 3, 4),)), EditItem("b", False)), image_size=(96, 64))]
    review = review_plans(plans, IMG, json.dumps({"image": FP, "items": [item(2, "b", executable=True)]}))
    ref = {"filename": "x.png", "subfolder": "", "type": "temp"}
    message = review_message(review, plans, [ref], IMG)
    json.dumps(message)  # it travels as JSON
    (entry,) = message[REVIEW_KEY]
    assert entry["image"] == ref and entry["fingerprint"] == FP and entry["plan_size"] == [96, 64]
    assert entry["colours"] == ["#1f77b4", "#ff7f0e"]
    assert entry["plan"]["items"][1]["executable"] and not entry["model_plan"]["items"][1]["executable"]
    assert len(entry["applied"]) == 1


def test_masks_message_reports_area_box_and_an_empty_neg():
    masks, _, _ = decode_batch(IMG, PLANS)
    message = masks_message(PLANS, masks, [{"filename": "m.png", "subfolder": "", "type": "temp"}], IMG, sam_used=False)
    (entry,) = message["contextedit_masks"]
    first, second, third = entry["items"]
    assert first["area"] == 32 * 32 and first["bbox"] == [8, 8, 40, 40] and first["centroid"] == [24.0, 24.0]
    assert third["executable"] is False and third["area"] == 0 and third["bbox"] is None
    assert entry["source"] == "boxes"


def test_previews_for_the_canvas_are_shrunk_to_1024_px_only_when_larger():
    from contextedit.nodes.masks.canvas import preview_pixels

    small = torch.rand(1, 64, 96, 3)
    assert preview_pixels(small) is small
    big = torch.full((2, 1500, 3000, 3), 0.25)
    big[:, :, 1500:] = 0.75                      # left half dark, right half light
    shrunk = preview_pixels(big)
    assert shrunk.shape == (2, 512, 1024, 3)
    # area averages of a constant are that constant (float32 rounding of a few-term mean: 1e-6 bounds it)
    assert (shrunk[:, :, :500] - 0.25).abs().max() < 1e-6 and (shrunk[:, :, 524:] - 0.75).abs().max() < 1e-6
