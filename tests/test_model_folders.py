"""Model-folder registration and the one resolver, on a fake ``folder_paths``."""

import os
from types import SimpleNamespace

import pytest

from contextedit.nodes.errors import ModelNotFoundError
from contextedit.nodes.model_folders import list_models, register_model_folders, resolve_model


def fake_folder_paths(tmp_path, preset=None):
    models = tmp_path / "models"
    table = {"clip_vision": ([str(models / "clip_vision")], {".safetensors"}),
             "text_encoders": ([str(models / "text_encoders")], {".safetensors"})}
    table.update(preset or {})

    def get_filename_list(kind):
        out = []
        for root in table[kind][0]:
            if os.path.isdir(root):
                out += sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f)))
        return out

    return SimpleNamespace(models_dir=str(models), folder_names_and_paths=table, get_filename_list=get_filename_list)


def test_registration_adds_to_paths_from_extra_model_paths(tmp_path):
    fp = fake_folder_paths(tmp_path, {"sams": ([str(tmp_path / "elsewhere")], set())})
    register_model_folders(fp)
    register_model_folders(fp)  # idempotent
    assert fp.folder_names_and_paths["sams"][0] == [str(tmp_path / "elsewhere"), str(tmp_path / "models" / "sams")]
    assert fp.folder_names_and_paths["LLM"][0] == [str(tmp_path / "models" / "LLM")]
    assert ".safetensors" in fp.folder_names_and_paths["contextedit"][1]


def test_resolve_files_and_hf_folders(tmp_path):
    fp = fake_folder_paths(tmp_path)
    register_model_folders(fp)
    (tmp_path / "models" / "sams").mkdir(parents=True)
    (tmp_path / "models" / "sams" / "sam_vit_b.pth").write_bytes(b"x")
    vlm = tmp_path / "models" / "LLM" / "Qwen" / "Qwen2.5-VL-3B"
    vlm.mkdir(parents=True)
    (vlm / "config.json").write_text("{}")
    (tmp_path / "models" / "LLM" / "not-a-model").mkdir()
    assert resolve_model("sams", "sam_vit_b.pth", fp) == str(tmp_path / "models" / "sams" / "sam_vit_b.pth")
    assert list_models("LLM", fp) == ["Qwen/Qwen2.5-VL-3B"]
    assert resolve_model("LLM", "Qwen/Qwen2.5-VL-3B", fp) == str(vlm)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("LLM", "not-a-model", fp)
    assert str(tmp_path / "models" / "LLM") in str(e.value) and "config.json" in str(e.value)
    with pytest.raises(ModelNotFoundError):
        resolve_model("sams", "../sams/sam_vit_b.pth", fp)


def test_resolve_across_several_kinds_lists_every_folder(tmp_path):
    fp = fake_folder_paths(tmp_path)
    register_model_folders(fp)
    t5 = tmp_path / "models" / "LLM" / "flan-t5-base"
    t5.mkdir(parents=True)
    (t5 / "config.json").write_text("{}")
    assert resolve_model(("text_encoders", "LLM"), "flan-t5-base", fp) == str(t5)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(("text_encoders", "LLM"), "flan-t5-large", fp, expected="a FLAN-T5 folder")
    message = str(e.value)
    assert str(tmp_path / "models" / "text_encoders") in message and str(tmp_path / "models" / "LLM") in message
    assert "a FLAN-T5 folder" in message and e.value.kind == "text_encoders or LLM"
