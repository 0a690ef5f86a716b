"""Inpaint stage: InsightEdit's mask growth, a 9-channel inpainting model from a single file or a
folder, remove / add / replace pairs."""

import numpy as np
import pytest
import torch
from contextedit.nodes.datagen import inpaint
from contextedit.nodes.datagen.pipeline import STAGES, Pipeline
from contextedit.nodes.datagen.runner import read_failures, read_json
from contextedit.nodes.datagen.schemas import validate_inpaint
from contextedit.nodes.errors import InputError
from contextedit.nodes.masks.sam import load_sam
from datagen_common import SIZES, ScriptedVLM, tiny_sam_path, tiny_vlm, write_images
from fixtures.tiny_inpaint import (
    make_tiny_inpaint_folder,
    make_tiny_inpaint_single_file,
)
from fixtures.tiny_models import make_tiny_diffusers_sd
from regions_common import one_thread  # noqa: F401


def binary_step(mask, grow: bool):
    """One scipy.ndimage binary_dilation / binary_erosion step with a 5x5 square and the outside
    of the image counted as background, written out as 25 shifted copies."""
    h, w = mask.shape
    padded = np.zeros((h + 4, w + 4), dtype=bool)
    padded[2:-2, 2:-2] = mask
    shifted = [padded[dy:dy + h, dx:dx + w] for dy in range(5) for dx in range(5)]
    return np.logical_or.reduce(shifted) if grow else np.logical_and.reduce(shifted)


def test_mask_growth_is_insightedits_40_dilations_then_15_erosions():
    mask = np.zeros((200, 240), dtype=bool)
    mask[90:110, 100:130] = True   # an object in the middle
    mask[0:6, 200:215] = True      # one touching the top border
    expected = mask.copy()
    for _ in range(40):
        expected = binary_step(expected, grow=True)
    for _ in range(15):
        expected = binary_step(expected, grow=False)
    got = inpaint.dilate_erode(mask)  # shipped defaults
    assert got.dtype == np.uint8 and np.array_equal(got.astype(bool), expected)
    assert got[0].sum() == 0  # the erosion eats in from the border, as in the repo


def test_working_size_short_side_640_multiple_of_8():
    assert inpaint.working_size(1000, 750) == (853 - 853 % 8, 640)
    assert inpaint.working_size(64, 72) == (640, 720)
    assert inpaint.working_size(640, 640, 64) == (64, 64)


@pytest.fixture(scope="module")
def models(generated_dir):
    return {"folder": make_tiny_inpaint_folder(generated_dir), "file": make_tiny_inpaint_single_file(generated_dir),
            "vlm": tiny_vlm(generated_dir), "sam": load_sam(tiny_sam_path(generated_dir)),
            "four_channel": make_tiny_diffusers_sd(generated_dir)}


def test_single_file_loads_the_folders_weights(models):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors.torch import load_file

    from_file = inpaint.Inpainter(models["file"], config=models["folder"], device="cpu")
    from_folder = inpaint.Inpainter(models["folder"], device="cpu")
    assert from_file.unet_in_channels == 9 and not from_file.sdxl
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(from_file.pipe, name).state_dict(), getattr(from_folder.pipe, name).state_dict()
        # the same stored float32 tensors, renamed: bit-identical by construction
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # diffusers' own converter maps the fixture's LDM names back onto every UNet key
    converted = convert_ldm_unet_checkpoint(load_file(str(models["file"])), from_folder.pipe.unet.config)
    assert converted.keys() == from_folder.pipe.unet.state_dict().keys()


def test_a_non_inpainting_model_and_a_missing_config_are_refused(models):
    with pytest.raises(InputError, match="9"):
        inpaint.Inpainter(models["four_channel"], device="cpu")
    with pytest.raises(InputError, match="inpaint-config"):
        inpaint.Inpainter(models["file"], device="cpu")


def test_inpaint_stage_writes_remove_add_replace_pairs(tmp_path, models):
    images = write_images(tmp_path / "images")
    inpainter = inpaint.Inpainter(models["file"], config=models["folder"], device="cpu", steps=2, resolution=64)
    pipe = Pipeline(tmp_path / "run", images, vlm=ScriptedVLM(models["vlm"]), sam=models["sam"],
                    inpainter=inpainter, progress=False, log=None)
    for stage in STAGES[:STAGES.index("inpaint") + 1]:
        assert not pipe.run(stage).failed, read_failures(pipe.out, stage)
    from PIL import Image

    for item, (w, h) in SIZES.items():
        record = read_json(pipe.output("inpaint", item))
        validate_inpaint(record)
        kinds = [(p["task_type"], p["instruction"][0]) for p in record["pairs"]]
        assert kinds == [("remove", "remove the red box"), ("add", "add the red box"),
                         ("replace", "change the red box to green box"),
                         ("replace", "change the green box to red box")]
        remove, add, replace, back = record["pairs"]
        assert remove["origin_img"] == add["target_img"] == record["image"]
        assert remove["target_img"] == add["origin_img"] and replace["target_img"] == back["origin_img"]
        assert replace["inpaint_prompt"] == "green box"  # the short replacement class, as the repo's replace script
        assert replace["detailed_caption_target"] == "a green box on the left"
        for pair in (remove, replace):
            with Image.open(pipe.resolve(pair["target_img"])) as result:
                assert result.size == (w, h)
    # same seed, same result: redo one item from scratch
    first = np.asarray(Image.open(pipe.resolve(read_json(pipe.output("inpaint", "a"))["pairs"][0]["target_img"])))
    again = Pipeline(tmp_path / "again", images, vlm=ScriptedVLM(models["vlm"]), sam=models["sam"],
                     inpainter=inpainter, progress=False, log=None, limit=1)
    for stage in STAGES[:STAGES.index("inpaint") + 1]:
        again.run(stage)
    second = np.asarray(Image.open(again.resolve(read_json(again.output("inpaint", "a"))["pairs"][0]["target_img"])))
    assert np.array_equal(first, second)  # CPU, same seed and inputs: bit-identical by construction


def test_sdxl_inpainting_folder_is_recognised_and_inpaints(generated_dir):
    from fixtures.tiny_inpaint import make_tiny_sdxl_inpaint_folder
    from PIL import Image

    inpainter = inpaint.Inpainter(make_tiny_sdxl_inpaint_folder(generated_dir), device="cpu", steps=2, resolution=64)
    assert inpainter.sdxl and inpainter.unet_in_channels == 9
    assert type(inpainter.pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    image = Image.new("RGB", (80, 64), (120, 60, 30))
    mask = np.zeros((64, 80), np.uint8)
    mask[10:40, 20:60] = 1
    result = inpainter.inpaint(image, mask, "empty scene blur", "box", seed=1)
    assert result.size == (80, 64)
    again = inpainter.inpaint(image, mask, "empty scene blur", "box", seed=1)
    assert np.array_equal(np.asarray(result), np.asarray(again))  # CPU, same seed: bit-identical by construction
