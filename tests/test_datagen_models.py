"""Model names of the data-pipeline CLI resolve in a ComfyUI models folder as the loader nodes resolve them."""

import json

import pytest
from contextedit.nodes.datagen.models import find_model
from contextedit.nodes.errors import ModelNotFoundError


def test_names_resolve_in_the_models_folder_and_paths_pass_through(tmp_path):
    models = tmp_path / "models"
    (models / "LLM" / "Qwen2.5-VL-7B-Instruct").mkdir(parents=True)
    (models / "LLM" / "Qwen2.5-VL-7B-Instruct" / "config.json").write_text("{}")
    (models / "sams").mkdir()
    (models / "sams" / "sam_vit_h_4b8939.pth").write_bytes(b"x")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "sd-v1-5-inpainting.safetensors").write_bytes(b"x")
    (models / "diffusers" / "sdxl-inpaint").mkdir(parents=True)
    (models / "diffusers" / "sdxl-inpaint" / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    (models / "grounding-dino" / "grounding-dino-tiny").mkdir(parents=True)
    (models / "grounding-dino" / "grounding-dino-tiny" / "config.json").write_text("{}")
    assert find_model("Qwen2.5-VL-7B-Instruct", "LLM", models) == str(models / "LLM" / "Qwen2.5-VL-7B-Instruct")
    assert find_model("sam_vit_h_4b8939.pth", "sams", models) == str(models / "sams" / "sam_vit_h_4b8939.pth")
    kinds = ("checkpoints", "diffusers")
    assert find_model("sd-v1-5-inpainting.safetensors", kinds, models).endswith("sd-v1-5-inpainting.safetensors")
    assert find_model("sdxl-inpaint", kinds, models) == str(models / "diffusers" / "sdxl-inpaint")
    assert find_model("grounding-dino-tiny", "grounding-dino", models).endswith("grounding-dino-tiny")
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(b"x")
    assert find_model(str(other), "sams", models) == str(other)
    with pytest.raises(ModelNotFoundError) as info:
        find_model("sam_vit_b.pth", "sams", models)
    assert str(models / "sams") in str(info.value) and "sam_vit_b.pth" in str(info.value)
    with pytest.raises(ModelNotFoundError, match="checkpoints or diffusers"):
        find_model("missing", kinds, models)
