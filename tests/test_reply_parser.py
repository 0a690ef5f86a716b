"""Reading VLM replies into EditPlans: hand-written cases plus a hypothesis fuzz.

Fuzz budget (all derandomized, no example database): arbitrary text 2,500 + JSON-alphabet noise
2,500 + valid replies in many shapes 2,500 + truncated replies 2,000 + randomly edited replies
1,500 = 11,000 generated replies.
"""

import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contextedit.nodes.errors import ContextEditError, InputError, PlanParseError
from contextedit.nodes.executability.box_coords import ABSOLUTE, RELATIVE_1000, SOURCE_PIXELS
from contextedit.nodes.executability.plan import EDIT_TYPES, EditItem, EditPlan
from contextedit.nodes.executability.reply_parser import (
    CUT_OFF_REASON, GARBLED_REASON, NOT_LOCATED_REASON, OMITTED_REASON, UNREADABLE_REASON,
    parse_reply, plan_from_reply,
)

INSTRUCTIONS = ["make the sky blue", "remove the pancakes", "add a bird on the fence"]
SIZE = (640, 480)


def parse(reply, instructions=INSTRUCTIONS, convention=RELATIVE_1000, size=SIZE, input_size=None):
    return parse_reply(reply, instructions, convention, size, input_size)


def approx_boxes(boxes):
    # replies are parsed into float64 and rescaled by a few multiplications/divisions (~1e-16
    # relative each); 1e-9 leaves room for decimal text like "0.1" and still fails on any wrong
    # convention or rounding to integers (errors >= 0.5 px at these sizes)
    return [pytest.approx(list(b), rel=1e-9, abs=1e-9) for b in boxes]


def entries(**overrides):
    base = [
        {"index": 1, "executable": True, "reason": "the sky is visible", "target": "sky",
         "box": [0, 0, 1000, 400], "edit_type": "attribute"},
        {"index": 2, "executable": False, "reason": "there are no pancakes",
         "target": "pancakes", "box": None, "edit_type": "remove"},
        {"index": 3, "executable": True, "reason": "the fence is empty", "target": "bird",
         "box": [500, 500, 750, 1000], "edit_type": "add"},
    ]
    for key, value in overrides.items():
        i, field = key.split("_", 1)
        base[int(i[1:])][field] = value
    return base


REPLY = {"source_caption": "a plate on a table by a fence", "edits": entries(),
         "target_caption": "a blue sky and a bird on the fence"}


def check_reference_plan(plan):
    assert [i.instruction for i in plan.items] == INSTRUCTIONS
    assert [i.executable for i in plan.items] == [True, False, True]
    assert [i.reason for i in plan.items] == ["the sky is visible", "there are no pancakes",
                                              "the fence is empty"]
    assert [i.target for i in plan.items] == ["sky", "pancakes", "bird"]
    assert [i.edit_type for i in plan.items] == ["attribute", "remove", "add"]
    assert approx_boxes(plan.items[0].boxes) == [[0, 0, 640, 192]]
    assert plan.items[1].boxes == ()
    assert approx_boxes(plan.items[2].boxes) == [[320, 240, 480, 480]]


# ---- hand-written replies --------------------------------------------------------------------
def test_strict_json():
    plan = parse(json.dumps(REPLY))
    check_reference_plan(plan)
    assert plan.source_caption == "a plate on a table by a fence"
    assert plan.target_caption == "a blue sky and a bird on the fence"
    assert plan.image_size == SIZE and plan.raw_reply == json.dumps(REPLY)


def test_code_fence_and_prose():
    reply = ("Sure! I looked at the image [MASK] carefully.\n```json\n"
             + json.dumps(REPLY, indent=2) + "\n```\nLet me know if you need {anything} else.")
    plan = parse(reply)
    check_reference_plan(plan)
    assert plan.source_caption == REPLY["source_caption"]


def test_trailing_commas_single_quotes_python_literals_comments():
    reply = """{'source_caption': 'a plate',
      'edits': [
        {'index': 1, 'executable': True, 'reason': 'the sky is visible', 'target': 'sky',
         'box': [0, 0, 1000, 400,], 'edit_type': 'attribute',},  // first
        {'index': 2, 'executable': False, 'reason': 'there are no pancakes',
         'target': 'pancakes', 'box': None, 'edit_type': 'remove'},
        {index: 3, executable: true, reason: "the fence is empty", target: 'bird',
         box: [500, 500, 750, 1000], edit_type: "add"} /* last */,
      ],
      'target_caption': "it's done",}"""
    plan = parse(reply)
    check_reference_plan(plan)
    assert plan.source_caption == "a plate" and plan.target_caption == "it's done"


def test_bare_list_and_instructions_key():
    check_reference_plan(parse(json.dumps(entries())))
    plan = parse(json.dumps({"instructions": entries(), "source_caption": "s"}))
    check_reference_plan(plan)
    assert plan.source_caption == "s" and plan.target_caption == ""


def test_one_object_per_line():
    lines = [json.dumps(e) for e in entries()] + [json.dumps(
        {"source_caption": "a", "target_caption": "b"})]
    plan = parse("\n".join(lines))
    check_reference_plan(plan)
    assert (plan.source_caption, plan.target_caption) == ("a", "b")


def test_out_of_order_matched_by_index():
    reply = entries()[::-1]
    check_reference_plan(parse(json.dumps(reply)))


def test_zero_based_and_string_indices():
    reply = entries()
    for i, e in enumerate(reply):
        e["index"] = i
    check_reference_plan(parse(json.dumps(reply[::-1])))
    reply = entries()
    for e in reply:
        e["index"] = f"{e['index']}."
    check_reference_plan(parse(json.dumps(reply)))


def test_matched_by_instruction_text_when_no_index():
    reply = entries()
    for e, text in zip(reply, INSTRUCTIONS):
        del e["index"]
        e["instruction"] = text.upper() + "!"
    check_reference_plan(parse(json.dumps([reply[2], reply[0], reply[1]])))


def test_fuzzy_instruction_text():
    reply = entries()
    for e in reply:
        del e["index"]
    reply[2]["instruction"] = "add a bird on the fence please"
    reply[0]["instruction"] = "make sky blue"
    reply[1]["instruction"] = "remove pancakes"
    check_reference_plan(parse(json.dumps([reply[1], reply[2], reply[0]])))


def test_echoed_text_beats_a_wrong_index():
    reply = entries()
    reply[0]["index"], reply[2]["index"] = 3, 1
    reply[0]["instruction"], reply[2]["instruction"] = INSTRUCTIONS[0], INSTRUCTIONS[2]
    check_reference_plan(parse(json.dumps(reply)))


def test_positional_when_entries_name_nothing():
    reply = entries()
    for e in reply:
        del e["index"]
    check_reference_plan(parse(json.dumps(reply)))


def test_missing_item_becomes_non_executable():
    reply = entries()
    del reply[1]
    plan = parse(json.dumps({"edits": reply}))
    assert [i.executable for i in plan.items] == [True, False, True]
    assert plan.items[1].reason == OMITTED_REASON
    assert plan.items[1].boxes == () and plan.items[1].target == ""


def test_truncated_reply_keeps_complete_entries():
    text = json.dumps(REPLY)
    cut = text[:text.index('"edit_type": "add"') + 5]
    plan = parse(cut)
    assert [i.executable for i in plan.items] == [True, False, False]
    assert plan.items[2].reason == CUT_OFF_REASON
    assert plan.source_caption == REPLY["source_caption"] and plan.target_caption == ""
    assert approx_boxes(plan.items[0].boxes) == [[0, 0, 640, 192]]
    assert any("incomplete" in n for n in plan.notes)


def test_garbage_after_entries_keeps_complete_entries():
    text = json.dumps(entries())
    broken = text[:text.index('{"index": 3')] + "<|im_end|> oops"
    plan = parse(broken)
    assert [i.executable for i in plan.items] == [True, False, False]
    assert plan.items[2].reason == GARBLED_REASON


@pytest.mark.parametrize("box, expected", [
    ([100, 200, 300, 400], [[64, 96, 192, 192]]),
    ({"x1": 100, "y1": 200, "x2": 300, "y2": 400}, [[64, 96, 192, 192]]),
    ({"xmin": 100, "ymin": 200, "xmax": 300, "ymax": 400}, [[64, 96, 192, 192]]),
    ({"left": 100, "top": 200, "right": 300, "bottom": 400}, [[64, 96, 192, 192]]),
    ({"x": 100, "y": 200, "w": 200, "h": 200}, [[64, 96, 192, 192]]),
    ({"bbox_2d": [100, 200, 300, 400], "label": "sky"}, [[64, 96, 192, 192]]),
    ([{"bbox_2d": [100, 200, 300, 400]}, {"bbox_2d": [0, 0, 10, 10]}],
     [[64, 96, 192, 192], [0, 0, 6.4, 4.8]]),
    ([[100, 200, 300, 400], [0, 0, 10, 10]], [[64, 96, 192, 192], [0, 0, 6.4, 4.8]]),
    ([[100, 200], [300, 400]], [[64, 96, 192, 192]]),
    ("[100, 200, 300, 400]", [[64, 96, 192, 192]]),
    (["100", "200", "300", "400"], [[64, 96, 192, 192]]),
    ([300, 400, 100, 200], [[64, 96, 192, 192]]),
    ([100, 200, 300, 400, 500], []),
    ("somewhere", []),
    ([100, 100, 100, 300], []),
])
def test_box_forms(box, expected):
    reply = entries(e0_box=box)
    plan = parse(json.dumps(reply))
    assert approx_boxes(plan.items[0].boxes) == expected
    assert plan.items[0].executable is True
    if not expected:
        assert any("instruction 1" in n for n in plan.notes)


def test_bbox_2d_key_in_item_and_absolute_convention():
    reply = entries()
    reply[0]["bbox_2d"] = reply[0].pop("box")
    reply[0]["bbox_2d"] = [0, 0, 644, 238]
    reply[2]["box"] = [322, 238, 644, 476]
    plan = parse(json.dumps(reply), convention=ABSOLUTE, input_size=(644, 476))
    assert approx_boxes(plan.items[0].boxes) == [[0, 0, 640, 240]]
    assert approx_boxes(plan.items[2].boxes) == [[320, 240, 640, 480]]
    # without the input size, Qwen's smart resize of 640x480 (644x476) is assumed
    assert parse(json.dumps(reply), convention=ABSOLUTE).items[2].boxes == \
        plan.items[2].boxes


def test_qwen_grounding_list():
    reply = ('```json\n[\n  {"bbox_2d": [100, 200, 300, 400], "label": "birds"},\n'
             '  {"bbox_2d": [0, 0, 1000, 300], "label": "the sky"},\n'
             '  {"bbox_2d": [5, 5, 9, 9], "label": "car"}\n]\n```')
    plan = parse(reply)
    assert [i.executable for i in plan.items] == [True, False, True]
    assert approx_boxes(plan.items[0].boxes) == [[0, 0, 640, 144]]
    assert approx_boxes(plan.items[2].boxes) == [[64, 96, 192, 192]]
    assert plan.items[2].target == "birds"
    assert plan.items[1].reason == NOT_LOCATED_REASON
    assert any("'car'" in n for n in plan.notes)
    single = parse('[{"bbox_2d": [0, 0, 500, 500], "label": "x"}, '
                   '{"bbox_2d": [500, 500, 1000, 1000], "label": "y"}]',
                   instructions=["recolour it"])
    assert approx_boxes(single.items[0].boxes) == [[0, 0, 320, 240], [320, 240, 640, 480]]


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("yes", True), ("No", False), ("true", True),
    ("[MASK]", True), ("[NEG]", False), ("not executable", False), (1, True), (0, False),
])
def test_executable_spellings(value, expected):
    reply = entries(e0_executable=value)
    assert parse(json.dumps(reply)).items[0].executable is expected


def test_token_key_instead_of_executable():
    reply = entries()
    reply[0]["token"] = "[MASK]"
    reply[1]["token"] = "[NEG]"
    del reply[0]["executable"], reply[1]["executable"]
    plan = parse(json.dumps(reply))
    assert [i.executable for i in plan.items] == [True, False, True]


def test_unknown_executable_follows_the_box():
    reply = entries(e0_executable="maybe", e2_executable=None, e2_box=None)
    plan = parse(json.dumps(reply))
    assert plan.items[0].executable is True and plan.items[2].executable is False
    assert sum("did not say" in n for n in plan.notes) == 2


def test_executable_without_box_is_the_whole_image():
    plan = parse(json.dumps(entries(e0_box=None)))
    assert plan.items[0].executable is True and plan.items[0].boxes == ()
    assert any("whole image" in n for n in plan.notes)
    assert "whole image is the region" in plan.report()


@pytest.mark.parametrize("value, expected", [
    ("Addition", "add"), ("delete", "remove"), ("swap", "replace"), ("color change", "attribute"),
    ("style transfer", "style"), ("teleport", "other"), (None, "other"), (3, "other"),
])
def test_edit_type_normalisation(value, expected):
    assert parse(json.dumps(entries(e0_edit_type=value))).items[0].edit_type == expected


def test_thinking_preamble_is_skipped():
    draft = json.dumps([{"index": 1, "executable": False, "reason": "draft", "box": None}])
    reply = f"<think>first idea: {draft} hmm no</think>\n{json.dumps(REPLY)}"
    check_reference_plan(parse(reply))


def test_duplicate_and_extra_entries_are_noted():
    reply = entries() + [dict(entries()[0], reason="again"), dict(entries()[0], index=9)]
    plan = parse(json.dumps(reply))
    check_reference_plan(plan)
    assert sum("matched no instruction" in n for n in plan.notes) == 2


def test_unescaped_quotes_inside_strings():
    reply = json.dumps(entries()).replace("the sky is visible", 'the "sky" is visible')
    reply = reply.replace('\\"sky\\"', '"sky"')
    assert parse(reply).items[0].reason == 'the "sky" is visible'


def test_dict_of_entries_keyed_by_number():
    reply = {"edits": {str(i + 1): {k: v for k, v in e.items() if k != "index"}
                       for i, e in enumerate(entries())}}
    check_reference_plan(parse(json.dumps(reply)))


@pytest.mark.parametrize("reply", ["", "I cannot help with that.", "[MASK] [NEG]", "{}", "[]",
                                   "[1, 2, 3]", '{"foo": "bar"}', "```json\n```", "null"])
def test_unreadable_replies(reply):
    with pytest.raises(PlanParseError):
        parse(reply)
    plan = plan_from_reply(reply, INSTRUCTIONS, RELATIVE_1000, SIZE)
    assert [i.executable for i in plan.items] == [False] * 3
    assert all(i.reason == UNREADABLE_REASON for i in plan.items)
    assert plan.raw_reply == reply
    assert plan.notes and plan.notes[0].startswith(UNREADABLE_REASON)
    assert "Model reply:" in plan.report()


def test_plan_from_reply_of_non_text():
    plan = plan_from_reply(None, INSTRUCTIONS, RELATIVE_1000, SIZE)
    assert all(i.reason == UNREADABLE_REASON for i in plan.items)
    with pytest.raises(PlanParseError):
        parse(None)


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError):
        parse("[]", instructions="make it red")
    with pytest.raises(InputError):
        plan_from_reply("[]", INSTRUCTIONS, "percent", SIZE)
    with pytest.raises(InputError):
        plan_from_reply("[]", INSTRUCTIONS, RELATIVE_1000, (0, 10))


def test_parsed_plan_round_trips_through_json():
    plan = parse(json.dumps(REPLY))
    assert EditPlan.from_json(plan.to_json()) == plan


# ---- fuzz: strategies -----------------------------------------------------------------------
WORDS = ["make", "the", "sky", "blue", "remove", "cat", "add", "a", "hat", "to", "dog", "red",
         "replace", "car", "with", "bike", "turn", "into", "painting", "tree", "snow", "lamp",
         "on", "table", "green", "window", "big", "small", "two", "birds"]
PROSE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ.,!?:\n", max_size=40)
# Free text inside the JSON: hand-picked hard cases plus short random text (drawing long random
# strings character by character is what makes a fuzz run slow).
TRICKY = ["", "the sky is visible", 'the "red" car', "it's there", "back\\slash \\n",
          "line\nbreak", "tab\there", "emoji \U0001f600 ok", "\u00fc\u00f1 \u4e2d\u6587",
          '{"index": 2, "executable": true}',
          "[1, 2, 3, 4]", "', '", "\\u0041", "True", "null", "   padded  ", "\u2028\u2029",
          "\x00\x1f\x7f", "a'b\"c", "```", "// not a comment", "/* nor this */", "#1", "[NEG]"]
FREE_TEXT = st.one_of(st.sampled_from(TRICKY), st.text(max_size=10))
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much,
                                            HealthCheck.large_base_example])


def canon(text):
    return " ".join(re.findall(r"\w+", text.casefold()))


@st.composite
def instruction_lists(draw):
    phrases = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
    texts = draw(st.lists(phrases, min_size=1, max_size=5, unique_by=canon))
    # some verbatim decoration that must survive untouched
    return [draw(st.sampled_from(["", " ", "1. ", "Please "])) + t
            + draw(st.sampled_from(["", ".", "!", "  "])) for t in texts]


@st.composite
def scenes(draw):
    """Instructions, image size, convention, and the model's true answer per instruction."""
    instructions = draw(instruction_lists())
    width, height = draw(st.integers(16, 3000)), draw(st.integers(16, 3000))
    convention = draw(st.sampled_from([ABSOLUTE, RELATIVE_1000, SOURCE_PIXELS]))
    if convention == ABSOLUTE:
        space = (draw(st.integers(28, 2000)), draw(st.integers(28, 2000)))
    elif convention == RELATIVE_1000:
        space = (1000, 1000)
    else:
        space = (width, height)
    truths = []
    for _ in instructions:
        boxes = []
        for _ in range(draw(st.integers(0, 2))):
            x1 = draw(st.integers(0, space[0] - 1))
            y1 = draw(st.integers(0, space[1] - 1))
            x2 = draw(st.integers(x1 + 1, space[0]))
            y2 = draw(st.integers(y1 + 1, space[1]))
            if [x1, y1, x2, y2] not in boxes:
                boxes.append([x1, y1, x2, y2])
        truths.append({
            "executable": draw(st.booleans()),
            "reason": draw(FREE_TEXT),
            "target": draw(FREE_TEXT),
            "boxes": boxes,
            "edit_type": draw(st.sampled_from(EDIT_TYPES)),
        })
    captions = (draw(FREE_TEXT), draw(FREE_TEXT))
    return instructions, (width, height), convention, space, truths, captions


def to_source(box, convention, size, space):
    w, h = size
    if convention == SOURCE_PIXELS:
        return [float(v) for v in box]
    sw, sh = space
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 * w / sw, y1 * h / sh, x2 * w / sw, y2 * h / sh]


def dump(value, style, trailing):
    """JSON (style "json") or Python-literal (style "py") text, optionally with trailing commas."""
    if isinstance(value, dict):
        parts = [f"{dump(k, style, trailing)}: {dump(v, style, trailing)}"
                 for k, v in value.items()]
        return "{" + ", ".join(parts) + (", " if trailing and parts else "") + "}"
    if isinstance(value, list):
        parts = [dump(v, style, trailing) for v in value]
        return "[" + ", ".join(parts) + (", " if trailing and parts else "") + "]"
    return repr(value) if style == "py" else json.dumps(value)


def encode_box(boxes, how):
    if not boxes:
        return {"none": None, "missing": None, "empty": [], "word": "none"}[how[1]]
    form = how[0]
    if form == "list":
        return boxes[0] if len(boxes) == 1 else boxes
    if form == "dict":
        dicts = [dict(zip(("x1", "y1", "x2", "y2"), b)) for b in boxes]
        return dicts[0] if len(dicts) == 1 else dicts
    if form == "xywh":
        dicts = [{"x": b[0], "y": b[1], "w": b[2] - b[0], "h": b[3] - b[1]} for b in boxes]
        return dicts[0] if len(dicts) == 1 else dicts
    if form == "bbox_2d":
        return [{"bbox_2d": b, "label": "x"} for b in boxes]
    return ", ".join(str(b) for b in boxes)  # "string"


@st.composite
def valid_replies(draw, zero_based=True):
    """(reply text, instructions, size, convention, model input size, expected plan).

    ``zero_based=False`` leaves out 0-based indices: once the entry with index 0 is lost (a
    cut-off reply), 0-based numbering cannot be told from 1-based.
    """
    instructions, size, convention, space, truths, captions = draw(scenes())
    n = len(instructions)
    namings = ["index1", "index_str", "text", "position"] + (["index0"] if zero_based else [])
    naming = draw(st.sampled_from(namings))
    shape = draw(st.sampled_from(["edits", "instructions", "bare", "bare+captions", "lines"]))
    exec_style = draw(st.sampled_from(["bool", "words", "token"]))
    box_how = (draw(st.sampled_from(["list", "dict", "xywh", "bbox_2d", "string"])),
               draw(st.sampled_from(["none", "missing", "empty", "word"])))
    box_key = draw(st.sampled_from(["box", "bbox_2d", "boxes"]))
    order = list(range(n))
    present = list(range(n))
    if naming != "position":
        # a bare list needs one entry at least: a lone "[]" is no answer at all
        chosen = draw(st.sets(st.integers(0, n - 1), min_size=1 if shape == "bare" else 0))
        present = sorted(chosen | ({0} if naming == "index0" else set()))
        order = draw(st.permutations(present))
    items = []
    for i in order:
        t = truths[i]
        item = {}
        if naming == "index1":
            item["index"] = i + 1
        elif naming == "index0":
            item["index"] = i
        elif naming == "index_str":
            item["index"] = str(i + 1)
        elif naming == "text":
            item["instruction"] = instructions[i]
        if exec_style == "bool":
            item["executable"] = t["executable"]
        elif exec_style == "words":
            item["executable"] = "yes" if t["executable"] else "no"
        else:
            item["token"] = "[MASK]" if t["executable"] else "[NEG]"
        item["reason"] = t["reason"]
        item["target"] = t["target"]
        box_value = encode_box(t["boxes"], box_how)
        if t["boxes"] or box_how[1] != "missing":
            item[box_key] = box_value
        item["edit_type"] = t["edit_type"]
        items.append(item)

    style = draw(st.sampled_from(["json", "py"]))
    trailing = draw(st.booleans())
    indent = draw(st.sampled_from([None, 2]))

    def text_of(value):
        if style == "json" and not trailing:
            return json.dumps(value, indent=indent, ensure_ascii=draw(st.booleans()))
        return dump(value, style, trailing)

    src, tgt = captions
    if shape in ("edits", "instructions"):
        body = text_of({"source_caption": src, shape: items, "target_caption": tgt})
    elif shape == "bare":
        body, src, tgt = text_of(items), "", ""
    elif shape == "bare+captions":
        body = text_of(items) + "\n" + text_of({"source_caption": src, "target_caption": tgt})
    else:
        body = "\n".join([text_of(item) for item in items]
                         + [text_of({"source_caption": src, "target_caption": tgt})])
    if draw(st.booleans()):
        body = "```json\n" + body + "\n```"
    reply = draw(PROSE) + ("\n" if draw(st.booleans()) else "") + body + draw(PROSE)

    expected = []
    for i, instruction in enumerate(instructions):
        t = truths[i]
        if i in present:
            expected.append(EditItem(
                instruction=instruction, executable=t["executable"], reason=t["reason"],
                target=t["target"], boxes=tuple(tuple(to_source(b, convention, size, space))
                                                for b in t["boxes"]),
                edit_type=t["edit_type"]))
        else:
            expected.append(EditItem(instruction=instruction, executable=False,
                                     reason=OMITTED_REASON))
    model_input = space if convention == ABSOLUTE else None
    return reply, instructions, size, convention, model_input, (expected, src, tgt)


def assert_same_items(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (g.instruction, g.executable, g.reason, g.target, g.edit_type) == \
            (e.instruction, e.executable, e.reason, e.target, e.edit_type)
        assert approx_boxes(g.boxes) == [list(b) for b in e.boxes]


def check_general(plan, reply, instructions, size):
    """What holds for every plan, whatever the reply."""
    assert isinstance(plan, EditPlan)
    assert [i.instruction for i in plan.items] == list(instructions)
    assert plan.image_size == tuple(size)
    assert plan.raw_reply == reply
    for item in plan.items:
        for x1, y1, x2, y2 in item.boxes:
            assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
    EditPlan.from_json(plan.to_json())  # always serialisable


def check_never_crashes(reply, instructions, convention, size, input_size=None):
    try:
        plan = parse_reply(reply, instructions, convention, size, input_size)
    except ContextEditError:
        plan = None
    if plan is not None:
        check_general(plan, reply, instructions, size)
    fallback = plan_from_reply(reply, instructions, convention, size, input_size)
    check_general(fallback, reply, instructions, size)
    if plan is None:
        assert all(not i.executable and i.reason == UNREADABLE_REASON for i in fallback.items)
    else:
        assert fallback == plan
    return plan


# ---- fuzz: tests ---------------------------------------------------------------------------
@settings(max_examples=2500, **FUZZ_SETTINGS)
@given(reply=st.text(max_size=300))
def test_fuzz_arbitrary_text(reply):
    check_never_crashes(reply, INSTRUCTIONS, RELATIVE_1000, SIZE)


JSONISH = st.lists(st.sampled_from(
    list('{}[]"\':,.-+0123456789eE \n\\/*#xuU')
    + ["true", "false", "null", "True", "None", "NaN", '"index"', '"executable"', '"box"',
       '"edits"', '"bbox_2d"', '"source_caption"', "```json", "</think>", "[MASK]", '"yes"',
       "1e999", "\\u12"]), max_size=80).map("".join)


@settings(max_examples=2500, **FUZZ_SETTINGS)
@given(reply=JSONISH, convention=st.sampled_from([ABSOLUTE, RELATIVE_1000, SOURCE_PIXELS]))
def test_fuzz_json_alphabet_noise(reply, convention):
    check_never_crashes(reply, INSTRUCTIONS, convention, SIZE)


@settings(max_examples=2500, **FUZZ_SETTINGS)
@given(case=valid_replies())
def test_fuzz_valid_replies_parse_exactly(case):
    reply, instructions, size, convention, model_input, (expected, src, tgt) = case
    plan = check_never_crashes(reply, instructions, convention, size, model_input)
    assert plan is not None, reply
    assert_same_items(plan.items, expected)
    assert (plan.source_caption, plan.target_caption) == (src, tgt)


@settings(max_examples=2000, **FUZZ_SETTINGS)
@given(case=valid_replies(zero_based=False), cut=st.floats(0, 1))
def test_fuzz_truncated_replies_never_invent(case, cut):
    reply, instructions, size, convention, model_input, (expected, src, tgt) = case
    reply = reply[:int(len(reply) * cut)]
    plan = check_never_crashes(reply, instructions, convention, size, model_input)
    if plan is None:
        return
    lost = {CUT_OFF_REASON, OMITTED_REASON, GARBLED_REASON}
    for got, want in zip(plan.items, expected):
        if got.reason in lost and want.reason != got.reason:
            assert not got.executable and got.boxes == ()
        else:
            assert_same_items([got], [want])
    assert plan.source_caption in ("", src) and plan.target_caption in ("", tgt)


@settings(max_examples=1500, **FUZZ_SETTINGS)
@given(case=valid_replies(), seed=st.integers(0, 2 ** 32 - 1), edits=st.integers(1, 8))
def test_fuzz_randomly_edited_replies(case, seed, edits):
    reply, instructions, size, convention, model_input, _ = case
    rng = random.Random(seed)
    chars = list(reply)
    for _ in range(edits):
        pos = rng.randrange(len(chars) + 1)
        op = rng.choice(["delete", "insert", "replace"])
        junk = rng.choice(list('{}[]"\',:\\ \nxT0') + ["True", "null", "```", "/*"])
        if op == "delete" and pos < len(chars):
            del chars[pos]
        elif op == "insert":
            chars.insert(pos, junk)
        elif pos < len(chars):
            chars[pos] = junk
    check_never_crashes("".join(chars), instructions, convention, size, model_input)
