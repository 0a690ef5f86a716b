"""SAM loading (safe formats, architecture read from the state dict) and box -> mask decoding.

Runs the tiny random-weight SAM (tests/fixtures/tiny_models.py) through the real loading and
SamPredictor code. Random weights give arbitrary masks, so the tests compare against
segment-anything's own predictor and against box_masks, never against "a good segmentation".
"""

import pickle

import numpy as np
import pytest
import torch
from contextedit.nodes.errors import InputError
from contextedit.nodes.executability.plan import EditItem, EditPlan
from contextedit.nodes.masks.box_masks import boxes_to_mask, dilate_mask, plan_masks
from contextedit.nodes.masks.sam import (
    STANDARD_ARCHS,
    SamArch,
    SamDecoder,
    load_sam,
    masks_for_plan,
    read_state_dict,
    sam_arch_from_state_dict,
)
from fixtures import tiny_models as tm
from PIL import Image

W, H = 96, 64  # non-square on purpose: SAM pads to a square internally
BOX_A = [10.0, 8.0, 40.0, 32.0]
BOX_B = [50.0, 20.0, 90.0, 60.0]
BOX_C = [60.0, 2.0, 70.0, 12.0]


@pytest.fixture(scope="module")
def checkpoint(generated_dir):
    return tm.make_tiny_sam_checkpoint(generated_dir)


@pytest.fixture(scope="module")
def sam(checkpoint):
    return load_sam(checkpoint)


@pytest.fixture(scope="module")
def image(generated_dir):
    path = tm.write_test_image(generated_dir / "sam_test_96x64.png", W, H)
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def box_masks(sam, image):
    """SAM's masks for BOX_A, BOX_B, BOX_C (one encoder pass)."""
    return sam.masks_from_boxes(image, [BOX_A, BOX_B, BOX_C])


def _plan(*items, size=(W, H)):
    return EditPlan(items=tuple(items), image_size=size)


def _item(executable, *boxes, text="edit"):
    return EditItem(instruction=text, executable=executable, boxes=tuple(tuple(b) for b in boxes))


class _EncoderCounter:
    def __init__(self, decoder):
        self.calls = 0
        self.handle = decoder.model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def close(self):
        self.handle.remove()


# ---- loading -------------------------------------------------------------------------------
def test_tiny_checkpoint_loads_with_architecture_from_state_dict(sam, checkpoint):
    arch = tm.tiny_sam_arch()
    assert sam.arch == SamArch("custom", arch["encoder_embed_dim"], arch["encoder_depth"],
                               arch["encoder_num_heads"], tuple(arch["encoder_global_attn_indexes"]))
    expected = tm.build_tiny_sam().state_dict()
    state = sam.model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert torch.equal(sam.model.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    assert torch.equal(sam.model.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))
    assert not sam.model.training and sam.device == torch.device("cpu")
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in sam.model.parameters())
    assert not any(t.is_meta for t in list(sam.model.parameters()) + list(sam.model.buffers()))


def test_safetensors_copy_loads_too(sam, checkpoint, tmp_path):
    from safetensors.torch import save_file

    target = tmp_path / "sam_tiny.safetensors"
    save_file(torch.load(checkpoint, weights_only=True), target)
    other = load_sam(target)
    assert other.arch == sam.arch
    reference = sam.model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in other.model.state_dict().items())


def test_nested_state_dict_is_unwrapped(checkpoint, tmp_path):
    target = tmp_path / "wrapped.pth"
    torch.save({"model": torch.load(checkpoint, weights_only=True)}, target)
    assert load_sam(target).arch.encoder_embed_dim == 64


@pytest.mark.parametrize("arch_name", ["vit_b", "vit_l", "vit_h"])
def test_published_architectures_are_recognised(arch_name):
    # segment-anything's own builders on the meta device: real key names and shapes, no memory
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        state_dict = sam_model_registry[arch_name]().state_dict()
    assert sam_arch_from_state_dict(state_dict) == STANDARD_ARCHS[arch_name]


def test_unusual_global_blocks_are_read_not_assumed():
    # a vit_b-sized encoder whose global blocks differ from vit_b's is a custom architecture
    from segment_anything.build_sam import _build_sam

    with torch.device("meta"):
        state_dict = _build_sam(768, 12, 12, [3, 7, 11]).state_dict()
    arch = sam_arch_from_state_dict(state_dict)
    assert arch == SamArch("custom", 768, 12, 12, (3, 7, 11))


def _input_error(path, match):
    with pytest.raises(InputError) as info:
        load_sam(path)
    assert info.value.input_name == "sam_model"
    assert match in str(info.value)
    return info.value


def test_corrupt_file_is_typed_error(checkpoint, tmp_path):
    truncated = tmp_path / "sam_truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    error = _input_error(truncated, "sam_truncated.pth")
    assert "segment-anything checkpoint" in str(error)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file")
    _input_error(garbage, "garbage.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused(tmp_path):
    target = tmp_path / "evil.pth"
    with open(target, "wb") as handle:
        pickle.dump({"image_encoder.pos_embed": _Payload()}, handle, protocol=2)
    _input_error(target, "evil.pth")


def test_other_models_are_typed_errors(checkpoint, tmp_path):
    state_dict = torch.load(checkpoint, weights_only=True)
    not_sam = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, not_sam)
    _input_error(not_sam, "not a segment-anything")

    sam2 = tmp_path / "sam2.pth"
    torch.save({"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(8, 3, 7, 7)}, sam2)
    _input_error(sam2, "SAM 2")

    hq = tmp_path / "hq.pth"
    torch.save(dict(state_dict, **{"mask_decoder.hf_token.weight": torch.zeros(1, 256)}), hq)
    _input_error(hq, "hf_token")

    with pytest.raises(InputError) as info:
        read_state_dict(tmp_path / "missing.pth", input_name="sam_name")
    assert info.value.input_name == "sam_name"


# ---- masks_from_boxes -------------------------------------------------------------------------
def test_masks_from_boxes_match_sam_predictor_at_input_resolution(sam, image, box_masks):
    from segment_anything import SamPredictor

    assert box_masks.shape == (3, H, W) and box_masks.dtype == torch.float32
    assert set(box_masks.unique().tolist()) <= {0.0, 1.0}
    predictor = SamPredictor(sam.model)
    predictor.set_image(image)
    for index, box in enumerate([BOX_A, BOX_B, BOX_C]):
        expected, _, _ = predictor.predict(box=np.array(box), multimask_output=False)
        assert torch.equal(box_masks[index], torch.from_numpy(expected[0]).float()), index


def test_masks_from_boxes_empty_and_degenerate_prompts(sam, image):
    before = image.copy()
    assert torch.equal(sam.masks_from_boxes(image, None), torch.zeros(1, H, W))
    assert torch.equal(sam.masks_from_boxes(image, []), torch.zeros(1, H, W))
    counter = _EncoderCounter(sam)
    try:
        # no usable prompt at all: zero masks and the encoder never runs
        masks = sam.masks_from_boxes(image, [None, [200, 200, 300, 300], [5, 5, 5, 30]])
    finally:
        counter.close()
    assert counter.calls == 0
    assert torch.equal(masks, torch.zeros(3, H, W))
    assert np.array_equal(image, before)
    with pytest.raises(InputError) as info:
        sam.masks_from_boxes(image, [[1, 2, 3]])
    assert info.value.input_name == "boxes"


def test_points_are_extra_prompts(sam, image):
    masks = sam.masks_from_boxes(image, [None, BOX_A], points=[[[20, 20]], None])
    assert masks.shape == (2, H, W)
    # a point-only slot is decoded (tiny random SAM: just check it ran and is binary)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(InputError) as info:
        sam.masks_from_boxes(image, [BOX_A], points=[[[1, 2]], [[3, 4]]])
    assert info.value.input_name == "points"


def test_float_and_uint8_images_give_the_same_masks(sam, image, box_masks):
    as_float = torch.from_numpy(image).float() / 255.0
    assert torch.equal(sam.masks_from_boxes(as_float, [BOX_A]), box_masks[:1])


# ---- masks_for_plan -----------------------------------------------------------------------------
def test_masks_for_plan_with_sam_follows_plan_order(sam, image, box_masks):
    plan = _plan(
        _item(True, BOX_B, text="first"),           # SAM mask of B
        _item(False, BOX_A, text="neg"),             # [NEG]: zero whatever its box
        _item(True, text="style"),                   # no box: whole image
        _item(True, BOX_A, BOX_C, text="two boxes"),  # union
    )
    counter = _EncoderCounter(sam)
    try:
        masks = masks_for_plan(image, plan, sam=sam)
    finally:
        counter.close()
    assert counter.calls == 1  # one set_image for all boxes of the image
    assert masks.shape == (4, H, W)
    # the tiny SAM's masks are non-empty and are not the boxes: this is the SAM path
    for index, box in enumerate([BOX_A, BOX_B, BOX_C]):
        assert box_masks[index].any() and not torch.equal(box_masks[index], boxes_to_mask([box], H, W))
    assert torch.equal(masks[0], box_masks[1])
    assert torch.count_nonzero(masks[1]) == 0
    assert torch.equal(masks[2], torch.ones(H, W))
    assert torch.equal(masks[3], torch.maximum(box_masks[0], box_masks[2]))
    assert not torch.equal(masks[3], box_masks[0])  # the union adds something


class _EmptySam(SamDecoder):
    """SAM that finds nothing: every box must fall back to the box itself."""

    def masks_from_boxes(self, image, boxes, points=None):
        return torch.zeros(max(len(boxes), 1), *np.asarray(image).shape[:2])


def test_empty_sam_mask_falls_back_to_the_box(sam, image):
    plan = _plan(_item(True, BOX_A), _item(False, BOX_B))
    masks = masks_for_plan(image, plan, sam=_EmptySam(sam.model))
    assert torch.equal(masks[0], boxes_to_mask([BOX_A], H, W))
    assert torch.count_nonzero(masks[1]) == 0


def test_box_masks_without_sam_are_the_box_regions(image):
    plan = _plan(_item(False, BOX_A), _item(True, BOX_A, BOX_B), _item(True))
    masks = masks_for_plan(image, plan)
    assert masks.shape == (3, H, W)
    assert torch.count_nonzero(masks[0]) == 0
    expected = torch.zeros(H, W)
    expected[8:32, 10:40] = 1
    expected[20:60, 50:90] = 1
    assert torch.equal(masks[1], expected)
    assert torch.equal(masks[2], torch.ones(H, W))
    assert torch.equal(masks, plan_masks(plan, H, W))  # box_masks' own reading of the plan


def test_plan_boxes_are_rescaled_to_the_image(sam, image):
    half = _plan(_item(True, [b / 2 for b in BOX_A]), size=(W // 2, H // 2))
    full = _plan(_item(True, BOX_A))
    assert torch.equal(masks_for_plan(image, half), masks_for_plan(image, full))
    assert torch.equal(masks_for_plan(image, half, sam=_EmptySam(sam.model)),
                       masks_for_plan(image, full))


def test_dilate_and_feather(sam, image):
    plan = _plan(_item(True, BOX_A), _item(False, BOX_B), _item(True))
    plain = masks_for_plan(image, plan)
    grown = masks_for_plan(image, plan, dilate_px=3)
    assert torch.equal(grown[0], dilate_mask(plain[0], 3))
    assert grown[0].sum() > plain[0].sum()
    soft = masks_for_plan(image, plan, dilate_px=3, feather_px=4)
    assert ((soft[0] > 0) & (soft[0] < 1)).any()
    for masks in (grown, soft, masks_for_plan(image, plan, sam=_EmptySam(sam.model), dilate_px=3,
                                              feather_px=4)):
        assert torch.count_nonzero(masks[1]) == 0      # [NEG] stays exactly zero
        assert torch.equal(masks[2], torch.ones(H, W))  # whole image stays whole
    with_sam = masks_for_plan(image, plan, sam=_EmptySam(sam.model), dilate_px=3, feather_px=4)
    assert torch.equal(with_sam, soft)  # same box, same post-processing on both paths


def test_empty_plan_and_inputs_untouched(sam, image):
    before = image.copy()
    plan = _plan()
    assert masks_for_plan(image, plan, sam=sam).shape == (0, H, W)
    assert masks_for_plan(image, plan).shape == (0, H, W)
    assert np.array_equal(image, before)
    with pytest.raises(InputError):
        masks_for_plan(image, _plan(_item(True, BOX_A)), sam="not a model")
