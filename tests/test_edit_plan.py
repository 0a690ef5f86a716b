"""EditPlan data: JSON round trip, validation naming the bad field, report, batches, instruction
splitting and the prompt."""

import copy
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextedit.nodes.errors import ContextEditError, InputError, PlanParseError
from contextedit.nodes.executability.box_coords import ABSOLUTE, RELATIVE_1000, SOURCE_PIXELS
from contextedit.nodes.executability.instructions import split_instructions
from contextedit.nodes.executability.plan import (
    EDIT_TYPES, SCHEMA_VERSION, EditItem, EditPlan, as_plan_list, plans_from_json, plans_to_json,
)
from contextedit.nodes.executability.prompt import build_prompt

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)


# ---- strategies --------------------------------------------------------------------------------
@st.composite
def boxes_in(draw, width, height):
    coords = st.floats(0, 1, allow_nan=False)
    boxes = []
    for _ in range(draw(st.integers(0, 3))):
        a, b, c, d = (draw(coords) for _ in range(4))
        x1, x2 = sorted((a * width, b * width))
        y1, y2 = sorted((c * height, d * height))
        if x1 < x2 and y1 < y2:
            boxes.append((x1, y1, x2, y2))
    return tuple(boxes)


@st.composite
def plans(draw):
    sized = draw(st.booleans())
    width, height = draw(st.integers(1, 4096)), draw(st.integers(1, 4096))
    items = []
    for _ in range(draw(st.integers(0, 5))):
        items.append(EditItem(
            instruction=draw(st.text(max_size=30)),
            executable=draw(st.booleans()),
            reason=draw(st.text(max_size=30)),
            target=draw(st.text(max_size=15)),
            boxes=draw(boxes_in(width, height)),
            edit_type=draw(st.sampled_from(EDIT_TYPES)),
        ))
    return EditPlan(
        items=tuple(items),
        source_caption=draw(st.text(max_size=30)),
        target_caption=draw(st.text(max_size=30)),
        image_size=(width, height) if sized else None,
        raw_reply=draw(st.none() | st.text(max_size=60)),
        notes=tuple(draw(st.lists(st.text(max_size=20), max_size=3))),
    )


# ---- round trip --------------------------------------------------------------------------------
@FUZZ
@given(plan=plans())
def test_json_round_trip(plan):
    text = plan.to_json()
    again = EditPlan.from_json(text)
    assert again == plan
    assert json.loads(text)["version"] == SCHEMA_VERSION
    assert EditPlan.from_json(plan.to_json(indent=None)) == plan


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(batch=st.lists(plans(), max_size=4))
def test_batch_round_trip(batch):
    assert plans_from_json(plans_to_json(batch)) == batch


def test_single_plan_json_reads_as_a_batch_of_one():
    plan = EditPlan(items=(EditItem("a", True),), image_size=(4, 4))
    assert plans_from_json(plan.to_json()) == [plan]


# ---- validation names the bad field ---------------------------------------------------------
def good_dict():
    return EditPlan(
        items=(EditItem("make the sky blue", True, "sky", "sky", ((0, 0, 64, 20),), "attribute"),
               EditItem("remove the pancakes", False, "none here", "pancakes", (), "remove")),
        source_caption="a plate", target_caption="a plate, blue sky", image_size=(64, 48),
    ).to_dict()


def mutate(path, value=None, delete=False):
    data = good_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize("data, field", [
    (mutate(["items", 0, "executable"], "yes"), "items[0].executable"),
    (mutate(["items", 1, "executable"], delete=True), "items[1].executable"),
    (mutate(["items", 0, "instruction"], 5), "items[0].instruction"),
    (mutate(["items", 1, "instruction"], delete=True), "items[1].instruction"),
    (mutate(["items", 0, "reason"], None), "items[0].reason"),
    (mutate(["items", 0, "target"], ["sky"]), "items[0].target"),
    (mutate(["items", 0, "edit_type"], "paint"), "items[0].edit_type"),
    (mutate(["items", 0, "boxes"], [0, 0, 5, 5]), "items[0].boxes[0]"),
    (mutate(["items", 0, "boxes"], "[0, 0, 5, 5]"), "items[0].boxes"),
    (mutate(["items", 0, "boxes", 0], [0, 0, 5]), "items[0].boxes[0]"),
    (mutate(["items", 0, "boxes", 0], [5, 0, 1, 5]), "items[0].boxes[0]"),
    (mutate(["items", 0, "boxes", 0], [0, 0, "5", 5]), "items[0].boxes[0]"),
    (mutate(["items", 0, "boxes", 0], [-1, 0, 5, 5]), "items[0].boxes[0]"),
    (mutate(["items", 0, "boxes", 0], [0, 0, 65, 5]), "items[0].boxes[0]"),
    (mutate(["items", 0, "boxes", 0], [0, 0, True, 5]), "items[0].boxes[0]"),
    (mutate(["items", 1, "execuable"], True), "items[1].execuable"),
    (mutate(["items", 1], "remove the pancakes"), "items[1]"),
    (mutate(["items"], {"0": {}}), "items"),
    (mutate(["items"], delete=True), "items"),
    (mutate(["version"], delete=True), "version"),
    (mutate(["version"], 99), "version"),
    (mutate(["version"], "1"), "version"),
    (mutate(["schema"], "something.else"), "schema"),
    (mutate(["image_size"], [0, 48]), "image_size"),
    (mutate(["image_size"], [64]), "image_size"),
    (mutate(["image_size"], "64x48"), "image_size"),
    (mutate(["source_caption"], 3), "source_caption"),
    (mutate(["target_caption"], None), "target_caption"),
    (mutate(["raw_reply"], 12), "raw_reply"),
    (mutate(["notes"], "note"), "notes"),
    (mutate(["notes"], ["fine", 3]), "notes[1]"),
    (mutate(["extra"], 1), "extra"),
])
def test_bad_fields_raise_typed_error_naming_the_field(data, field):
    with pytest.raises(PlanParseError) as info:
        EditPlan.from_json(json.dumps(data))
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ContextEditError)


def test_the_unmutated_dict_is_valid():
    assert EditPlan.from_dict(good_dict()).to_dict() == good_dict()


@pytest.mark.parametrize("text, field", [
    ("not json", "(json)"),
    ("[1, 2]", "(top level)"),
    ('{"version": 1, "items": [}', "(json)"),
    (b"\xff\xfe", "(json)"),
    (None, "(json)"),
])
def test_unreadable_text_raises(text, field):
    with pytest.raises(PlanParseError) as info:
        EditPlan.from_json(text)
    assert info.value.field == field


def test_batch_errors_name_the_plan():
    good = good_dict()
    bad = copy.deepcopy(good)
    bad["items"][0]["executable"] = "no"
    with pytest.raises(PlanParseError) as info:
        plans_from_json(json.dumps([good, bad]))
    assert info.value.field == "[1].items[0].executable"


def test_constructor_validates_too():
    with pytest.raises(PlanParseError):
        EditItem("a", executable=1)
    with pytest.raises(PlanParseError):
        EditItem("a", True, boxes=((0, 0, float("nan"), 1),))
    with pytest.raises(PlanParseError) as info:
        EditPlan(items=(EditItem("a", True, boxes=((0, 0, 9, 9),)),), image_size=(8, 8))
    assert info.value.field == "items[0].boxes[0]"


def test_plan_is_immutable_and_boxes_are_float_tuples():
    item = EditItem("a", True, boxes=[[1, 2, 3, 4]])
    assert item.boxes == ((1.0, 2.0, 3.0, 4.0),)
    with pytest.raises(Exception):
        item.executable = False


# ---- helpers and report ----------------------------------------------------------------------
def report_plan():
    return EditPlan(
        items=(
            EditItem("make the sky blue", True, "the sky is visible", "sky",
                     ((0, 0, 640, 201.68),), "attribute"),
            EditItem("remove the pancakes", False, "there are no pancakes", "pancakes", (),
                     "remove"),
            EditItem("make it a watercolour", True, "", "", (), "style"),
        ),
        source_caption="a plate on a table", target_caption="a watercolour plate, blue sky",
        image_size=(640, 480), raw_reply='{"edits": []}', notes=("instruction 3: no box",),
    )


def test_executable_helpers():
    plan = report_plan()
    assert [i.instruction for i in plan.executable_items()] == [
        "make the sky blue", "make it a watercolour"]
    assert plan.executable_instructions() == "make the sky blue\nmake it a watercolour"
    assert plan.executable_instructions("; ") == "make the sky blue; make it a watercolour"
    assert [i.token for i in plan.items] == ["[MASK]", "[NEG]", "[MASK]"]


def test_report_text():
    lines = report_plan().report().splitlines()
    assert lines[0] == "Edit plan: 2 of 3 instruction(s) executable (image 640x480)"
    assert "Source caption: a plate on a table" in lines
    assert "Target caption: a watercolour plate, blue sky" in lines
    assert "1. [MASK] make the sky blue" in lines
    assert "   reason: the sky is visible" in lines
    assert "   boxes: [0, 0, 640, 201.7]" in lines
    assert "2. [NEG] remove the pancakes" in lines
    assert "   reason: there are no pancakes" in lines
    assert "   type: remove; target: pancakes" in lines
    assert lines[lines.index("2. [NEG] remove the pancakes") + 3] == "   boxes: none"
    assert "3. [MASK] make it a watercolour" in lines
    assert "   reason: (no reason given)" in lines
    assert "   boxes: none (the whole image is the region)" in lines
    assert " - instruction 3: no box" in lines
    assert lines[-2:] == ["Model reply:", '   {"edits": []}']


def test_report_truncates_a_long_reply():
    plan = EditPlan(raw_reply="x" * 5000)
    lines = plan.report(max_reply_chars=100).splitlines()
    assert lines[-2:] == ["   " + "x" * 100, "   ... cut: 4900 of 5000 characters (1 of 1 lines) not shown"]


def test_report_caps_a_degenerate_reply_by_lines_and_says_what_was_cut():
    # a degenerate VLM reply: a few words, then hundreds of blank lines, then more text
    reply = "I think\n" + "\n" * 600 + "the sky\n" + "\n".join(f"line {i}" for i in range(100))
    plan = EditPlan(raw_reply=reply)
    lines = plan.report().splitlines()
    shown = lines[lines.index("Model reply:") + 1:]
    assert len(shown) <= 41, len(shown)  # at most 40 reply lines + the note of what was cut
    blank_runs = [len(list(group)) for blank, group in itertools.groupby(shown, key=lambda s: not s.strip()) if blank]
    assert max(blank_runs, default=0) <= 1  # runs of blank lines fold into one line that counts them
    assert any("600 blank lines" in line for line in shown), shown
    assert shown[0] == "   I think"
    assert "   the sky" in shown
    cut = shown[-1]
    assert cut.startswith("   ... cut: ") and f"of {len(reply)} characters" in cut and "lines" in cut, cut


def test_report_keeps_a_short_reply_whole():
    plan = EditPlan(raw_reply="line 1\n\nline 3")
    lines = plan.report().splitlines()
    assert lines[-4:] == ["Model reply:", "   line 1", "   ", "   line 3"]


def test_as_plan_list():
    plan = report_plan()
    assert as_plan_list(plan) == [plan]
    assert as_plan_list((plan, plan)) == [plan, plan]
    with pytest.raises(InputError) as info:
        as_plan_list({"items": []}, "plan_input")
    assert info.value.input_name == "plan_input"
    with pytest.raises(InputError):
        as_plan_list([plan, "x"])


# ---- instruction splitting ---------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("make the sky blue", ["make the sky blue"]),
    ("make the sky blue\nadd a bird\n\n", ["make the sky blue", "add a bird"]),
    ("make the sky blue;add a bird; ;", ["make the sky blue", "add a bird"]),
    ("Make the sky blue. Add a bird.", ["Make the sky blue.", "Add a bird."]),
    ("Make the sky blue! Then add a bird? Sure", ["Make the sky blue!", "Then add a bird?",
                                                   "Sure"]),
    ("make it red, and then add a hat", ["make it red", "add a hat"]),
    ("make it red and then add a hat", ["make it red", "add a hat"]),
    ("make it red AND THEN add a hat", ["make it red", "add a hat"]),
    ("1. make it red\n2) add a hat\n(3) remove the dog", ["make it red", "add a hat",
                                                          "remove the dog"]),
    ("1. make it red 2. add a hat 3) remove the dog", ["make it red", "add a hat",
                                                       "remove the dog"]),
    ("- make it red\n* add a hat\n\u2022 blur it", ["make it red", "add a hat", "blur it"]),
    # never inside quotes
    ('Add a sign saying "Open. Come in; and then leave"',
     ['Add a sign saying "Open. Come in; and then leave"']),
    ("Write \u201cHi. Bye\u201d on the wall. Add a cat", ["Write \u201cHi. Bye\u201d on the wall.",
                                                          "Add a cat"]),
    ("Add 'hello. World' text", ["Add 'hello. World' text"]),
    # apostrophes are not quotes
    ("Don't touch the dog's bowl. Make it red", ["Don't touch the dog's bowl.", "Make it red"]),
    # abbreviations, initials, numbers
    ("Replace the cat with a dog, e.g. A husky", ["Replace the cat with a dog, e.g. A husky"]),
    ("Make it 1.5 times bigger. Add Mr. Smith", ["Make it 1.5 times bigger.", "Add Mr. Smith"]),
    ("St. Paul should be red. J. R. R. Tolkien appears",
     ["St. Paul should be red.", "J. R. R. Tolkien appears"]),
    ("Set the version 2. Then stop", ["Set the version 2. Then stop"]),
    # lower case after a full stop is not a new sentence
    ("make it red. add a hat", ["make it red. add a hat"]),
    # a numbered list must count from 1
    ("put 3. apples here 4. times", ["put 3. apples here 4. times"]),
    # verbatim otherwise: inner spacing and case kept
    ("  make   the SKY blue  ", ["make   the SKY blue"]),
    ("\r\n;;\n  \n-\n", []),
    ("", []),
])
def test_split_instructions(text, expected):
    assert split_instructions(text) == expected


def test_split_instructions_rejects_non_text():
    with pytest.raises(InputError):
        split_instructions(["a", "b"])


# ---- prompt --------------------------------------------------------------------------------
def test_prompt_lists_instructions_fields_and_convention():
    instructions = ["make the sky blue", "remove the pancakes"]
    prompt = build_prompt(instructions, RELATIVE_1000)
    assert "1. make the sky blue\n2. remove the pancakes" in prompt
    for key in ('"source_caption"', '"edits"', '"index"', '"executable"', '"reason"',
                '"target"', '"box"', '"edit_type"', '"target_caption"'):
        assert key in prompt
    for edit_type in EDIT_TYPES:
        assert f'"{edit_type}"' in prompt
    assert "0-1000" in prompt
    absolute = build_prompt(instructions, ABSOLUTE, (644, 476))
    assert "644 pixels wide and 476 pixels high" in absolute and "0-1000" not in absolute
    assert "as you see it" in absolute
    assert "absolute pixel" in build_prompt(instructions, SOURCE_PIXELS)
    with pytest.raises(InputError):
        build_prompt([], RELATIVE_1000)
    with pytest.raises(InputError):
        build_prompt("make it red", RELATIVE_1000)
    with pytest.raises(InputError):
        build_prompt(instructions, "percent")
