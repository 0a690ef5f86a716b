"""Data pipeline stages caption / ground / mask on tiny models (scripted VLM replies)."""

import numpy as np
import pytest
from contextedit.nodes.datagen import annotate
from contextedit.nodes.datagen.pipeline import Pipeline
from contextedit.nodes.datagen.runner import read_failures, read_json
from contextedit.nodes.datagen.schemas import VALIDATORS, SchemaError
from contextedit.nodes.masks import rle
from contextedit.nodes.masks.sam import load_sam
from datagen_common import (
    SIZES,
    ScriptedVLM,
    red_box,
    tiny_sam_path,
    tiny_vlm,
    write_images,
)
from regions_common import one_thread  # noqa: F401


@pytest.fixture(scope="module")
def vlm(generated_dir):
    return tiny_vlm(generated_dir)


@pytest.fixture(scope="module")
def sam(generated_dir):
    return load_sam(tiny_sam_path(generated_dir))


def test_caption_ground_mask_records_validate(tmp_path, vlm, sam):
    images = write_images(tmp_path / "images")
    scripted = ScriptedVLM(vlm)
    pipe = Pipeline(tmp_path / "run", images, vlm=scripted, sam=sam, progress=False, log=None)
    for stage in ("caption", "ground", "mask"):
        report = pipe.run(stage)
        assert report.done == sorted(SIZES) and not report.failed, read_failures(pipe.out, stage)
        for item in SIZES:
            VALIDATORS[stage](read_json(pipe.output(stage, item)))
    caption = read_json(pipe.output("caption", "b"))
    assert caption["width"] == 80 and caption["height"] == 64
    assert [o["obj_simple_caption"] for o in caption["object_list"]] == ["red box", "blue disc"]
    assert caption["object_list"][0]["replace_with"] == "green box"
    # grounding: the Qwen2.5-VL reply is in model-input pixels; the record holds source pixels
    for item, (w, h) in SIZES.items():
        ground = read_json(pipe.output("ground", item))
        assert [a["class_name"] for a in ground["annotations"]] == ["red box"]
        # the reply rounds the rescaled box to 0.01 model-input px; back in source px that is
        # at most 0.005 * (source/input scale <= 1.3) off
        assert np.allclose(ground["annotations"][0]["bbox"], red_box(w, h), atol=0.01)
        mask = read_json(pipe.output("mask", item))
        ann = mask["annotations"][0]
        decoded = rle.decode(ann["segmentation"])
        assert decoded.shape == (h, w) and decoded.sum() == ann["area"] > 0
    # one VLM call per image and stage, each with one image
    assert sorted(scripted.calls) == sorted([("caption", s, 1) for s in SIZES.values()]
                                            + [("ground", s, 1) for s in SIZES.values()])


def test_mask_stage_uses_sams_mask_and_falls_back_to_the_box(tmp_path, sam):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (120, 120, 120))
    anns = [{"class_name": "thing", "bbox": [8.0, 8.0, 40.0, 30.0]}]
    kept, notes = annotate.mask_annotations(sam, image, anns)
    expected = sam.masks_from_boxes(np.asarray(image), [anns[0]["bbox"]])[0].numpy() > 0.5
    if expected.any():
        assert np.array_equal(rle.decode(kept[0]["segmentation"]), expected) and not notes
    else:  # empty SAM mask: the box's pixels (rows 8..29, columns 8..39)
        box = np.zeros((64, 64), bool)
        box[8:30, 8:40] = True
        assert np.array_equal(rle.decode(kept[0]["segmentation"]), box) and "box is its mask" in notes[0]
    assert anns[0] == {"class_name": "thing", "bbox": [8.0, 8.0, 40.0, 30.0]}  # input untouched


def test_caption_reply_parsing_is_forgiving_but_not_blind():
    reply = ("Sure! ```json\n{'object_list': [{'category': 'Animal', 'name': 'cat', 'description': 'a cat',},"
             " {'obj_simple_caption': 'Cat'}], 'img_caption': 'A cat.'}```")
    data = annotate.parse_caption_reply(reply)
    assert data["img_caption"] == "A cat." and [o["obj_simple_caption"] for o in data["object_list"]] == ["cat"]
    with pytest.raises(annotate.UnreadableReply, match="any named object"):
        annotate.parse_caption_reply('{"img_caption": "a cat", "object_list": []}')
    with pytest.raises(annotate.UnreadableReply, match="image caption"):
        annotate.parse_caption_reply("I cannot see anything.")


def test_label_matching_as_insightedit():
    objects = [{"obj_simple_caption": "Acoustic Guitar"}, {"obj_simple_caption": "red bandana"}]
    assert annotate.match_label("acoustic guitar", objects) is objects[0]
    assert annotate.match_label("bandana", objects) is objects[1]
    assert annotate.match_label("tree", objects) is None


def test_schema_names_the_bad_field():
    record = {"id": "a", "image": "a.png", "width": 10, "height": 10, "grounder": "vlm", "box_format": "xyxy",
              "img_caption": "x", "annotations": [{"class_name": "cat", "bbox": [0, 0, 20, 5], "score": None, "category": "",
                                              "detailed_caption": "", "replace_with": "", "replace_with_caption": ""}]}
    with pytest.raises(SchemaError, match=r"annotations\[0\]\.bbox"):
        VALIDATORS["ground"](record)


def test_grounding_dino_path_matches_transformers_with_the_repos_thresholds(tmp_path, vlm, generated_dir):
    import re

    import torch
    from contextedit.nodes.datagen.annotate import GroundingDino
    from fixtures.tiny_grounding import make_tiny_grounding_dino
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    folder = make_tiny_grounding_dino(generated_dir)
    images = write_images(tmp_path / "images")
    pipe = Pipeline(tmp_path / "run", images, vlm=ScriptedVLM(vlm), grounding_dino=str(folder), device="cpu",
                    progress=False, log=None)
    assert not pipe.run("caption").failed and not pipe.run("ground").failed
    assert isinstance(pipe.grounding_dino, GroundingDino)
    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(str(folder), local_files_only=True).eval()
    total = 0
    for item, (w, h) in SIZES.items():
        record = read_json(pipe.output("ground", item))
        VALIDATORS["ground"](record)
        assert record["grounder"] == "grounding_dino" and record["prompt"] == "red box.blue disc."
        image = annotate.load_image(images / f"{item}.png")
        inputs = processor(images=image, text="red box.blue disc.", return_tensors="pt")
        with torch.inference_mode():
            result = processor.post_process_grounded_object_detection(
                model(**inputs), inputs["input_ids"], threshold=0.4, text_threshold=0.3, target_sizes=[(h, w)])[0]
        expected = []
        for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), result["text_labels"]):
            key = re.sub(r"[^A-Za-z0-9]", "", label).lower()  # InsightEdit's find_matching_key_value
            name = next((n for n in ("red box", "blue disc") if n.replace(" ", "") in key or key in n.replace(" ", "")), None)
            clamped = [max(0, min(box[0], box[2])), max(0, min(box[1], box[3])),
                       min(w, max(box[0], box[2])), min(h, max(box[1], box[3]))]
            if name and key and clamped[2] > clamped[0] and clamped[3] > clamped[1]:
                expected.append((name, clamped, score))
        got = [(a["class_name"], a["bbox"], a["score"]) for a in record["annotations"]]
        assert [g[0] for g in got] == [e[0] for e in expected]
        for (_, box, score), (_, ref_box, ref_score) in zip(got, expected):
            # same model, same float32 inputs, same post-processing: only the run-to-run float
            # noise of a ~0.4M-parameter forward (well under 1e-4 px on a <100 px image)
            assert np.allclose(box, ref_box, atol=1e-4) and abs(score - ref_score) < 1e-5
        total += len(expected)
    assert total > 0, "the tiny detector found nothing above the thresholds: the comparison would be empty"
