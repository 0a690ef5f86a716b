"""The VLM runtime and the executability checker on real (tiny, random-weight) Qwen-VL folders.

The tiny models write gibberish, which is exactly what the checker must survive: a valid plan
with one non-executable item per instruction and the raw reply kept. Canned replies (a VLM whose
``generate`` is replaced) check the wiring from the reply to source-pixel boxes.
"""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from contextedit.nodes.errors import ContextEditError, InputError
from contextedit.nodes.executability.box_coords import ABSOLUTE, RELATIVE_1000
from contextedit.nodes.executability.checker import check_batch, check_instructions
from contextedit.nodes.executability.plan import EditPlan
from contextedit.nodes.executability.reply_parser import UNREADABLE_REASON
from contextedit.nodes.executability.vlm_runtime import (
    GenerationResult,
    default_dtype,
    load_vlm,
)
from fixtures import tiny_models as tm
from PIL import Image

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
THREE = "Replace the cat with a dog. Make the sky blue; add a hat to the person"


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, generated_dir):
    return load_vlm(tm.make_tiny_qwen2_vl(generated_dir, request.param), device="cpu")


@pytest.fixture(scope="module")
def qwen25(generated_dir):
    return load_vlm(tm.make_tiny_qwen2_vl(generated_dir, "qwen2_5_vl"), device="cpu")


@pytest.fixture(scope="module")
def image(generated_dir):
    path = tm.write_test_image(generated_dir / "vlm_test_96x64.png", 96, 64)
    return np.array(Image.open(path).convert("RGB"))


def _counter():
    calls = []
    return calls, lambda n, total: calls.append((n, total))


# ---- loading -------------------------------------------------------------------------------
def test_loads_both_families_fp32_on_cpu(vlm):
    assert vlm.model_type in FAMILIES
    assert vlm.box_convention == (ABSOLUTE if vlm.model_type == "qwen2_5_vl" else RELATIVE_1000)
    assert vlm.family.known
    assert isinstance(vlm.model, torch.nn.Module) and not vlm.model.training
    assert vlm.device == torch.device("cpu")
    assert {p.dtype for p in vlm.model.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in vlm.model.parameters())
    assert default_dtype("cpu") == torch.float32


def test_hub_layout_loads(generated_dir):
    vlm = load_vlm(tm.make_tiny_qwen2_vl(generated_dir, "qwen2_vl", layout="hub"), device="cpu")
    result = vlm.generate(Image.new("RGB", (40, 30), (10, 200, 30)), "Describe it.", max_new_tokens=3)
    assert isinstance(result.text, str) and result.num_new_tokens <= 3


def test_missing_folder_is_typed_error(tmp_path):
    with pytest.raises(InputError) as info:
        load_vlm(tmp_path / "nope")
    assert info.value.input_name == "model_name"
    assert "Hugging Face" in str(info.value)


def _copy_without(generated_dir, tmp_path, *names):
    source = tm.make_tiny_qwen2_vl(generated_dir, "qwen2_vl")
    target = tmp_path / "broken"
    shutil.copytree(source, target)
    for name in names:
        (target / name).unlink()
    return target


def test_missing_config_is_typed_error(generated_dir, tmp_path):
    with pytest.raises(InputError) as info:
        load_vlm(_copy_without(generated_dir, tmp_path, "config.json"))
    assert info.value.input_name == "model_name" and "config.json" in str(info.value)


def test_missing_processor_files_is_typed_error(generated_dir, tmp_path):
    with pytest.raises(InputError) as info:
        load_vlm(_copy_without(generated_dir, tmp_path, "processor_config.json"))
    assert info.value.input_name == "model_name"
    assert "preprocessor_config.json" in str(info.value)


def test_truncated_weights_are_typed_error(generated_dir, tmp_path):
    target = _copy_without(generated_dir, tmp_path)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    with pytest.raises(InputError) as info:
        load_vlm(target)
    assert info.value.input_name == "model_name" and "safetensors" in str(info.value)


def test_unsupported_architecture_names_model_type(generated_dir, tmp_path):
    import json

    target = _copy_without(generated_dir, tmp_path)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(dict(config, model_type="my_secret_vlm")))
    with pytest.raises(InputError) as info:
        load_vlm(target)
    assert info.value.input_name == "model_name" and "my_secret_vlm" in str(info.value)


# ---- generation ----------------------------------------------------------------------------
def test_generate_returns_text_and_model_input_size(vlm, image):
    calls, on_token = _counter()
    result = vlm.generate(image, "Is the edit executable? Answer yes or no.", max_new_tokens=6,
                          on_token=on_token)
    assert isinstance(result, GenerationResult) and isinstance(result.text, str)
    # 96x64 under the tiny processor's 56*56..112*112 pixel budget, sides multiples of 28
    assert result.model_input_size == (84, 56)
    assert 1 <= result.num_new_tokens <= 6
    assert [n for n, _ in calls] == list(range(1, result.num_new_tokens + 1))
    assert {total for _, total in calls} == {6}
    assert vlm.model_input_size(image) == (84, 56)
    # greedy: the same question gives the same answer, and a float image is the same image
    again = vlm.generate(torch.from_numpy(image).float() / 255, "Is the edit executable? Answer yes or no.",
                         max_new_tokens=6)
    assert again.text == result.text


def test_should_stop_raising_stops_generation_early(vlm, image):
    class Interrupted(Exception):
        pass

    unstopped = vlm.generate(image, "Remove the green ball.", max_new_tokens=12)
    assert unstopped.num_new_tokens == 12  # the tiny model never emits <|im_end|> here

    calls, on_token = _counter()
    checks = []

    def should_stop():
        checks.append(1)
        if len(checks) > 3:  # one check before encoding, then one per token
            raise Interrupted()
        return False

    with pytest.raises(Interrupted):
        vlm.generate(image, "Remove the green ball.", max_new_tokens=12, should_stop=should_stop,
                     on_token=on_token)
    assert [n for n, _ in calls] == [1, 2, 3]


def test_should_stop_returning_true_ends_with_partial_text(vlm, image):
    result = vlm.generate(image, "Remove the green ball.", max_new_tokens=12,
                          should_stop=iter([False, False, True] + [False] * 20).__next__)
    assert result.num_new_tokens == 2


def test_generate_rejects_bad_arguments(qwen25, image):
    with pytest.raises(InputError) as info:
        qwen25.generate(image, "hi", max_new_tokens=0)
    assert info.value.input_name == "max_new_tokens"
    with pytest.raises(InputError) as info:
        qwen25.generate(np.zeros((4, 4), np.uint8), "hi")
    assert info.value.input_name == "image"


def test_to_moves_weights(qwen25):
    assert qwen25.to("cpu") is qwen25 and qwen25.device.type == "cpu"


# ---- the checker ---------------------------------------------------------------------------
def test_check_instructions_survives_gibberish(vlm, image):
    before = image.copy()
    plan, raw = check_instructions(vlm, image, THREE, max_new_tokens=24)
    assert isinstance(plan, EditPlan)
    assert [item.instruction for item in plan.items] == [
        "Replace the cat with a dog.", "Make the sky blue", "add a hat to the person"]
    assert all(not item.executable and item.reason == UNREADABLE_REASON for item in plan.items)
    assert plan.raw_reply == raw and isinstance(raw, str)
    assert plan.image_size == (96, 64)
    assert EditPlan.from_json(plan.to_json()) == plan
    assert np.array_equal(image, before)


@pytest.mark.parametrize("text", ["", "   \n ; ", ["", "  "]])
def test_empty_instructions_are_typed_error(qwen25, image, text):
    with pytest.raises(InputError) as info:
        check_instructions(qwen25, image, text)
    assert info.value.input_name == "instructions"


def test_check_instructions_rejects_non_vlm(image):
    with pytest.raises(ContextEditError):
        check_instructions(object(), image, "add a hat")


class _Canned:
    """Wrap a real VLM; its generate returns a fixed reply (and records the prompt)."""

    def __init__(self, vlm, reply):
        self.vlm, self.reply, self.prompts = vlm, reply, []

    def __enter__(self):
        self.original = self.vlm.generate

        def generate(image, prompt, max_new_tokens=512, should_stop=None, on_token=None):
            self.prompts.append(prompt)
            real = self.original(image, prompt, max_new_tokens=1)
            return GenerationResult(self.reply, real.model_input_size, 1)

        self.vlm.generate = generate
        return self

    def __exit__(self, *exc):
        del self.vlm.generate


def test_absolute_boxes_are_rescaled_by_the_model_input_size(qwen25, image):
    # Qwen2.5-VL answers in pixels of the 84x56 image it saw; the plan is in 96x64 source pixels
    reply = ('{"source_caption": "a red box", "edits": ['
             '{"index": 1, "executable": true, "reason": "ok", "target": "box", '
             '"box": [0, 0, 42, 28], "edit_type": "replace"},'
             '{"index": 2, "executable": false, "reason": "no sky", "box": null},'
             '{"index": 3, "executable": true, "reason": "ok", "box": [42, 28, 84, 56], '
             '"edit_type": "add"}], "target_caption": "a dog"}')
    with _Canned(qwen25, reply) as canned:
        plan, raw = check_instructions(qwen25, image, THREE)
    assert raw == reply
    assert "84 pixels wide and 56 pixels high" in canned.prompts[0]
    assert [item.executable for item in plan.items] == [True, False, True]
    assert plan.items[0].boxes == ((0.0, 0.0, 48.0, 32.0),)
    assert plan.items[2].boxes == ((48.0, 32.0, 96.0, 64.0),)
    assert plan.source_caption == "a red box"


def test_relative_boxes_use_the_0_1000_scale(generated_dir, image):
    vlm = load_vlm(tm.make_tiny_qwen2_vl(generated_dir, "qwen2_vl"), device="cpu")
    reply = '[{"index": 1, "executable": true, "box": [500, 0, 1000, 500]}]'
    with _Canned(vlm, reply) as canned:
        plan, _ = check_instructions(vlm, image, ["add a hat"])
    assert "0-1000 scale" in canned.prompts[0]
    assert plan.items[0].boxes == ((48.0, 0.0, 96.0, 32.0),)


def test_unknown_family_adds_a_note(qwen25, image):
    guessed = dataclasses.replace(qwen25, family=dataclasses.replace(
        qwen25.family, known=False, note="guessed the box convention"))
    plan, _ = check_instructions(guessed, image, "add a hat", max_new_tokens=2)
    assert plan.notes[-1] == "guessed the box convention"


def test_check_batch_one_plan_per_image_in_order(qwen25):
    images = torch.rand(2, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    images[1] = images[1, :, :, :] * 0  # make the two images differ visibly
    before = images.clone()
    calls, on_token = _counter()
    plans = check_batch(qwen25, images, "add a hat; remove the ball", max_new_tokens=3,
                        on_token=on_token)
    assert len(plans) == 2 and all(isinstance(p, EditPlan) for p in plans)
    assert all([i.instruction for i in p.items] == ["add a hat", "remove the ball"] for p in plans)
    assert all(p.image_size == (64, 48) for p in plans)
    done = [n for n, _ in calls]
    assert done == sorted(done) and done[-1] == 6 and {t for _, t in calls} == {6}
    assert torch.equal(images, before)


def test_check_batch_rejects_non_batch(qwen25):
    with pytest.raises(InputError) as info:
        check_batch(qwen25, torch.rand(48, 64, 3), "add a hat")
    assert info.value.input_name == "image"
