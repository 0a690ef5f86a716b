"""InsightEdit's comprehension in the executability check: reasoning instructions resolved into
explicit ones (kept next to the user's words), and every grounding syntax of the supported VLM
families read with that family's coordinate convention.

Fuzz budget: tag-syntax replies 2,000 (the rest of the parser's 11,000 are in test_reply_parser).
"""

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contextedit.nodes.attention.mask_patch import instructions_from
from contextedit.nodes.errors import PlanParseError
from contextedit.nodes.executability.box_coords import (ABSOLUTE, RELATIVE_1000, family_of,
                                                        smart_resize)
from contextedit.nodes.executability.checker import check_instructions
from contextedit.nodes.executability.manual import manual_plans
from contextedit.nodes.executability.plan import SCHEMA_VERSION, EditItem, EditPlan
from contextedit.nodes.executability.reply_parser import parse_reply
from contextedit.nodes.executability.vlm_runtime import GROUNDING_TOKENS, decode_reply
from test_reply_parser import FUZZ_SETTINGS, check_never_crashes
from test_vlm_runtime import _Canned, image, qwen25  # noqa: F401  (fixtures)

SIZE = (640, 480)
REASONING = "remove the thing that keeps food cold"
RESOLVED = "remove the refrigerator"


def close(box, expected):
    # boxes are scaled by one multiply and one divide in float64 (~2e-16 relative each)
    return all(abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(box, expected))


# ---- the plan carries both texts ---------------------------------------------------------
def test_resolved_defaults_to_the_users_words_and_v1_plans_still_load():
    v1 = {"version": 1, "items": [{"instruction": "make the sky blue", "executable": True}]}
    plan = EditPlan.from_dict(v1)
    assert plan.items[0].resolved == "make the sky blue" and not plan.items[0].was_resolved
    assert SCHEMA_VERSION == 2
    out = json.loads(plan.to_json())
    assert out["version"] == 2 and out["items"][0]["resolved"] == "make the sky blue"


def test_resolved_round_trips_and_drives_the_editing_text():
    item = EditItem(instruction=REASONING, resolved=RESOLVED, executable=True, target="refrigerator",
                    boxes=((10.0, 20.0, 200.0, 400.0),), edit_type="remove")
    plan = EditPlan(items=(item, EditItem(instruction="add a hat", executable=False)), image_size=SIZE)
    again = EditPlan.from_json(plan.to_json())
    assert again == plan and again.items[0].resolved == RESOLVED
    assert plan.executable_instructions() == RESOLVED
    report = plan.report().splitlines()
    assert f"1. [MASK] {REASONING} -> {RESOLVED}" in report
    assert "2. [NEG] add a hat" in report          # nothing to resolve: one text, no arrow


def test_resolved_must_be_text():
    data = {"version": 2, "items": [{"instruction": "x", "resolved": 3, "executable": True}]}
    with pytest.raises(PlanParseError) as info:
        EditPlan.from_dict(data)
    assert info.value.field == "items[0].resolved"


def test_manual_plan_resolves_to_what_was_typed():
    plan = manual_plans(torch.zeros(1, 48, 64, 3), "replace the cat with a dog\nmake the sky blue")[0]
    assert [i.resolved for i in plan.items] == [i.instruction for i in plan.items]
    assert not any(i.was_resolved for i in plan.items)


def test_the_attention_mask_uses_the_resolved_instruction():
    plan = EditPlan(items=(EditItem(instruction=REASONING, resolved=RESOLVED, executable=True),
                           EditItem(instruction="make the sky blue", executable=True)))
    spec = instructions_from("", plan, torch.ones(2, 8, 8))
    assert spec.instructions == [RESOLVED, "make the sky blue"]
    assert RESOLVED in spec.prompt and REASONING not in spec.prompt


# ---- the reply parser reads the resolution ------------------------------------------------
def test_reply_with_a_resolution():
    reply = json.dumps({"source_caption": "a kitchen", "target_caption": "a kitchen without a fridge",
                        "edits": [{"index": 1, "executable": True, "resolved": RESOLVED,
                                   "reason": "the refrigerator keeps food cold", "target": "refrigerator",
                                   "box": [100, 200, 300, 900], "edit_type": "remove"},
                                  {"index": 2, "executable": True, "box": None, "edit_type": "style"}]})
    plan = parse_reply(reply, [REASONING, "make it a watercolour"], RELATIVE_1000, SIZE)
    first, second = plan.items
    assert (first.instruction, first.resolved, first.target) == (REASONING, RESOLVED, "refrigerator")
    assert first.was_resolved and not second.was_resolved
    assert second.resolved == "make it a watercolour"
    assert close(first.boxes[0], (100 * 640 / 1000, 200 * 480 / 1000, 300 * 640 / 1000, 900 * 480 / 1000))


@pytest.mark.parametrize("key", ["resolved_instruction", "explicit_instruction", "rewritten"])
def test_resolution_under_other_key_names(key):
    reply = json.dumps([{"index": 1, "executable": True, key: RESOLVED, "box": [0, 0, 500, 500]}])
    assert parse_reply(reply, [REASONING], RELATIVE_1000, SIZE).items[0].resolved == RESOLVED


# ---- grounding syntaxes, one example per family -------------------------------------------
# What each family is trained to write when asked to ground "the dog" (model cards / processors):
QWEN_VL_V1 = "<ref>the dog</ref><box>(211,412),(577,891)</box>"
QWEN2_VL = "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(211,412),(577,891)<|box_end|>"
QWEN25_VL = '```json\n[\n\t{"bbox_2d": [135, 114, 402, 380], "label": "the dog"}\n]\n```'
QWEN3_VL = '```json\n[\n\t{"bbox_2d": [211, 412, 577, 891], "label": "the dog"}\n]\n```'


def relative(x1, y1, x2, y2, size=SIZE):
    w, h = size
    return (x1 * w / 1000, y1 * h / 1000, x2 * w / 1000, y2 * h / 1000)


@pytest.mark.parametrize("model_type, reply", [
    ("qwen_vl", QWEN_VL_V1),   # unknown to family_of: guessed 0-1000, and the tags say 0-1000 anyway
    ("qwen2_vl", QWEN2_VL),
    ("qwen3_vl", QWEN3_VL),
])
def test_relative_grounding_syntaxes(model_type, reply):
    convention = family_of(model_type).convention
    plan = parse_reply(reply, ["remove the dog"], convention, SIZE)
    item = plan.items[0]
    assert item.executable and item.target == "the dog"
    assert len(item.boxes) == 1 and close(item.boxes[0], relative(211, 412, 577, 891))


def test_qwen25_grounding_is_in_pixels_of_the_resized_input():
    convention = family_of("qwen2_5_vl").convention
    assert convention == ABSOLUTE
    h_in, w_in = smart_resize(SIZE[1], SIZE[0])
    plan = parse_reply(QWEN25_VL, ["remove the dog"], convention, SIZE, (w_in, h_in))
    expected = (135 * 640 / w_in, 114 * 480 / h_in, 402 * 640 / w_in, 380 * 480 / h_in)
    assert close(plan.items[0].boxes[0], expected)


def test_tag_boxes_are_0_1000_even_for_an_absolute_family():
    # a Qwen2.5-VL reply quoting Qwen2-VL tags: the tags' own convention wins
    plan = parse_reply(QWEN2_VL, ["remove the dog"], ABSOLUTE, SIZE, (644, 476))
    assert close(plan.items[0].boxes[0], relative(211, 412, 577, 891))


def test_qwen2_tags_several_boxes_and_two_instructions():
    reply = ("Sure. <|object_ref_start|>the cups<|object_ref_end|><|box_start|>(10,10),(100,100)<|box_end|>"
             "<|box_start|>(200,200),(300,300)<|box_end|> and <|object_ref_start|>the sky<|object_ref_end|>"
             "<|box_start|>(0,0),(1000,400)<|box_end|>")
    plan = parse_reply(reply, ["make the sky blue", "remove the cups", "add a bird"], RELATIVE_1000, SIZE)
    sky, cups, bird = plan.items
    assert sky.executable and close(sky.boxes[0], relative(0, 0, 1000, 400))
    assert cups.executable and len(cups.boxes) == 2
    assert close(cups.boxes[1], relative(200, 200, 300, 300))
    assert not bird.executable


def test_tagged_box_inside_our_json_is_0_1000():
    reply = json.dumps({"edits": [{"index": 1, "executable": True,
                                   "box": "<|box_start|>(100,100),(500,500)<|box_end|>"}]})
    plan = parse_reply(reply, ["remove the dog"], ABSOLUTE, SIZE, (644, 476))
    assert close(plan.items[0].boxes[0], relative(100, 100, 500, 500))


def test_decoding_keeps_grounding_tags_and_drops_chat_tokens(qwen25):  # noqa: F811
    # Qwen2-VL's tokenizer lists the grounding tags among its additional special tokens
    tokenizer = copy.deepcopy(qwen25.processor.tokenizer)
    others = [t for t in tokenizer.all_special_tokens if t not in ("<|im_end|>", "<|endoftext|>")]
    tokenizer.add_special_tokens({"additional_special_tokens": others + list(GROUNDING_TOKENS)})
    assert "<|box_start|>" in tokenizer.all_special_tokens
    ids = tokenizer(QWEN2_VL + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert "<|im_end|>" in tokenizer.decode(ids, skip_special_tokens=False)
    lost = tokenizer.decode(ids, skip_special_tokens=True)
    assert lost == "the dog(211,412),(577,891)"  # what a plain decode would hand the parser
    assert decode_reply(tokenizer, ids) == QWEN2_VL


def test_a_reasoning_instruction_flows_through_the_check(qwen25, image):  # noqa: F811
    reply = json.dumps({"source_caption": "a kitchen", "edits": [
        {"index": 1, "executable": True, "resolved": RESOLVED, "target": "refrigerator",
         "box": [0, 0, 42, 28], "edit_type": "remove"}], "target_caption": "a kitchen"})
    with _Canned(qwen25, reply) as canned:
        plan, _ = check_instructions(qwen25, image, REASONING)
    assert '"resolved"' in canned.prompts[0]
    assert plan.items[0].instruction == REASONING and plan.items[0].resolved == RESOLVED
    assert f"{REASONING} -> {RESOLVED}" in plan.report()
    assert plan.executable_instructions() == RESOLVED  # the check node's "instructions" output


# ---- fuzz: tag syntaxes never crash the parser ---------------------------------------------
TAGGY = st.lists(st.sampled_from(
    ["<ref>", "</ref>", "<box>", "</box>", "<|object_ref_start|>", "<|object_ref_end|>",
     "<|box_start|>", "<|box_end|>", "(", ")", ",", "12", "999", "1000", "-5", "3.5", "1e9",
     "the dog", "sky", " ", "\n", "{", "}", '"bbox_2d"', "[", "]", ":"]), max_size=60).map("".join)


@settings(max_examples=2000, **FUZZ_SETTINGS)
@given(reply=TAGGY, convention=st.sampled_from([ABSOLUTE, RELATIVE_1000]))
def test_fuzz_tag_syntax(reply, convention):
    check_never_crashes(reply, ["remove the dog", "make the sky blue"], convention, SIZE)
