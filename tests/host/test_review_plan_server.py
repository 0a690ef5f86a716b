"""ContextEdit Review Plan through POST /prompt on the live server (no browser): a prompt without
corrections gives the masks it gave before the node existed, malformed corrections are refused
before anything runs with an error naming the input, a box outside the image fails the run with
the same clear error, and a Review Plan whose outputs go nowhere still runs (an output node: the
canvas is its purpose)."""

import json

import numpy as np
import pytest
from host.graphs import ApiGraph
from host.server import PromptFailed, PromptRejected
from PIL import Image

INSTRUCTIONS = "recolour the left half\nremove the right half"
BOXES = json.dumps([[0, 0, 48, 64], [48, 0, 96, 64]])


@pytest.fixture(scope="module")
def image_name(comfy_server):
    pixels = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    return comfy_server.upload_image(Image.fromarray(pixels), name="contextedit_review_server.png")


def graph(image_name, review_inputs=None, prefix="review_server"):
    """LoadImage -> Manual Plan -> [Review Plan] -> Decode Masks -> MaskToImage -> SaveImage."""
    g = ApiGraph()
    image = g.add("LoadImage", name="image", image=image_name)
    plan = g.add("ContextEditManualPlan", name="plan", image=image[0], instructions=INSTRUCTIONS, boxes=BOXES,
                 non_executable="")
    source = plan
    if review_inputs is not None:
        source = g.add("ContextEditReviewPlan", name="review", image=image[0], plan=plan[0], **review_inputs)
    decode = g.add("ContextEditDecodeMasks", name="decode", image=image[0], plan=source[0], dilate=0, feather=0)
    to_image = g.add("MaskToImage", mask=decode[0])
    g.add("SaveImage", name="save", images=to_image[0], filename_prefix=prefix)
    return g


def masks(server, entry, node_id):
    return [server.get_image(**ref, as_array=True) for ref in server.output_images(entry, node_id)]


def test_prompt_without_corrections_behaves_as_without_the_node(comfy_server, image_name):
    plain = graph(image_name, prefix="review_server_plain")
    reviewed = graph(image_name, review_inputs={}, prefix="review_server_reviewed")   # no 'corrections' key at all
    a = masks(comfy_server, comfy_server.run(plain), plain.refs["save"])
    entry = comfy_server.run(reviewed)
    b = masks(comfy_server, entry, reviewed.refs["save"])
    assert len(a) == len(b) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b))
    message = entry["outputs"][reviewed.refs["review"]]["contextedit_review"][0]
    assert message["plan"] == message["model_plan"] and message["applied"] == message["dropped"] == []
    assert message["fingerprint"].startswith("96x64:")


@pytest.mark.parametrize("corrections, words", [
    ("{not json", "not valid JSON"),
    (json.dumps({"items": [{"number": 1, "instruction": "recolour the left half", "boxes": [[40, 0, 10, 64]]}]}),
     "x1 < x2"),
])
def test_malformed_corrections_are_refused_before_anything_runs(comfy_server, image_name, corrections, words):
    g = graph(image_name, review_inputs={"corrections": corrections})
    with pytest.raises(PromptRejected) as e:
        comfy_server.queue_prompt(g)
    errors = e.value.node_errors[g.refs["review"]]["errors"]
    text = json.dumps(errors)
    assert "Input 'corrections'" in text and words in text, text


def test_box_outside_the_image_fails_with_the_input_named(comfy_server, image_name):
    corrections = json.dumps({"items": [{"number": 2, "instruction": "remove the right half", "boxes": [[48, 0, 200, 64]]}]})
    with pytest.raises(PromptFailed) as e:
        comfy_server.run(graph(image_name, review_inputs={"corrections": corrections}))
    assert "Input 'corrections'" in str(e.value) and "outside the 96x64 image" in str(e.value)


def test_review_runs_as_an_output_node(comfy_server, image_name):
    g = ApiGraph()
    image = g.add("LoadImage", image=image_name)
    plan = g.add("ContextEditManualPlan", image=image[0], instructions=INSTRUCTIONS, boxes=BOXES, non_executable="2")
    review = g.add("ContextEditReviewPlan", image=image[0], plan=plan[0],
                   corrections=json.dumps({"items": [{"number": 2, "instruction": "remove the right half",
                                                      "executable": True}]}))
    entry = comfy_server.run(g)
    message = entry["outputs"][review]["contextedit_review"][0]
    assert [i["executable"] for i in message["plan"]["items"]] == [True, True]
    assert [i["executable"] for i in message["model_plan"]["items"]] == [True, False]
    assert comfy_server.get_image(**message["image"], as_array=True).shape == (64, 96, 3)
