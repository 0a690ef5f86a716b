"""The model catalogue (nodes/model_catalog.py) and what it feeds: the resolver's errors, the
``properties.models`` metadata of the shipped UI workflows (tools/workflow_models.py) and the
README's model tables. Pure Python, no ComfyUI."""

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from contextedit.nodes import model_catalog as catalog
from contextedit.nodes.errors import ModelNotFoundError
from contextedit.nodes.model_folders import (
    WEIGHT_EXTENSIONS,
    check_model,
    combo_options,
    none_installed,
    register_model_folders,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))


def _tool():
    spec = importlib.util.spec_from_file_location("contextedit_tool_workflow_models", REPO / "tools" / "workflow_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the table itself


def test_every_entry_is_complete_and_consistent():
    seen = set()
    for e in catalog.CATALOG:
        key = (e.name, e.directory)
        assert key not in seen, f"duplicate entry {key}"
        seen.add(key)
        assert e.layout in (catalog.FILE, catalog.FOLDER) and e.what and e.how, e
        if e.layout == catalog.FOLDER:
            assert e.url is None and e.sha256 is None, f"{e.name}: a folder has no single download or hash"
            assert e.source and e.source.startswith("https://huggingface.co/"), e
        if e.url is not None:
            assert e.url.startswith("https://") and e.name.endswith(WEIGHT_EXTENSIONS), e
        if e.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", e.sha256), e
            assert e.hash_source and e.url, f"{e.name}: a hash needs its provenance and the file it is of"
        if e.source is None:
            assert "train" in e.how, f"{e.name}: no download, so it must say how to make it"


def test_every_model_a_shipped_workflow_names_is_catalogued():
    """API twins name their loader inputs, so each model value is checked against its own folders."""
    missing = []
    for path in API_WORKFLOWS:
        for node_id, node in json.loads(path.read_text()).items():
            for input_name, folders in catalog.LOADER_INPUTS.get(node["class_type"], {}).items():
                value = node["inputs"].get(input_name)
                if isinstance(value, str) and value not in catalog.OFF_VALUES and catalog.lookup(value, folders) is None:
                    missing.append(f"{path.name} node {node_id} {input_name}={value!r}")
    assert not missing, "models without a catalogue entry:\n" + "\n".join(missing)
    names = {e.name for p in UI_WORKFLOWS for _, _, e in catalog.entries_for_workflow(json.loads(p.read_text()))}
    assert {"Qwen2.5-VL-3B-Instruct", "sam_vit_b_01ec64.pth", "ip-adapter_sd15.safetensors",
            "region_predictor.safetensors"} <= names


def test_lookup_respects_the_folder():
    assert catalog.lookup("clip-vit-large-patch14", "metrics").directory == "metrics"
    assert catalog.lookup("clip-vit-large-patch14", ("text_encoders",)).directory == "clip_vision"  # also searched there
    assert catalog.lookup("sam_vit_b_01ec64.pth", "checkpoints") is None
    assert catalog.lookup("not-a-model.safetensors") is None


def test_properties_models_match_what_the_frontend_reads():
    sam = catalog.properties_models(catalog.lookup("sam_vit_b_01ec64.pth", "sams"))
    assert sam == {"name": "sam_vit_b_01ec64.pth", "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
                   "directory": "sams", "hash": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                   "hash_type": "SHA256"}
    qwen_edit = catalog.properties_models(catalog.lookup("qwen_image_edit_2509_fp8_e4m3fn.safetensors"))
    assert set(qwen_edit) == {"name", "url", "directory"}  # no verified hash: none written
    assert catalog.properties_models(catalog.lookup("Qwen2.5-VL-3B-Instruct", "LLM")) is None  # a folder
    assert catalog.properties_models(catalog.lookup("region_predictor.safetensors")) is None  # no download


# ----------------------------------------------------------------------------- the resolver's errors


@pytest.fixture
def fake_folder_paths(tmp_path):
    fp = SimpleNamespace(models_dir=str(tmp_path / "models"), folder_names_and_paths={},
                         get_filename_list=lambda kind: [])
    register_model_folders(fp)
    return fp


def test_a_missing_catalogued_model_names_its_source(fake_folder_paths, tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("sams", "sam_vit_h_4b8939.pth", fake_folder_paths)
    text = str(caught.value)
    assert "sam_vit_h_4b8939.pth" in text and str(tmp_path / "models" / "sams") in text
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in text
    assert caught.value.source == catalog.lookup("sam_vit_h_4b8939.pth").hint()


def test_an_unknown_name_gets_the_folder_hint_and_the_placeholder_says_nothing_is_installed(fake_folder_paths):
    text = check_model("LLM", "my-finetuned-vlm", fake_folder_paths)
    assert "'my-finetuned-vlm' was not found" in text and "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct" in text
    placeholder = combo_options("LLM", [])[0]
    assert placeholder == none_installed("LLM") and "models/LLM" in placeholder
    text = check_model("LLM", placeholder, fake_folder_paths)
    assert text.startswith("No LLM model is installed.") and "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct" in text
    assert combo_options("LLM", ["a", "b"]) == ["a", "b"]


def test_a_present_model_resolves_and_validates(fake_folder_paths, tmp_path):
    folder = tmp_path / "models" / "LLM" / "Qwen2.5-VL-3B-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert resolve_model("LLM", "Qwen2.5-VL-3B-Instruct", fake_folder_paths) == str(folder)
    assert check_model("LLM", "Qwen2.5-VL-3B-Instruct", fake_folder_paths) is True
    assert check_model("LLM", None, fake_folder_paths) is True  # a linked input: checked when the node runs


# ----------------------------------------------------------------------------- workflow metadata


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_every_loader_node_carries_the_catalogue_metadata(path):
    workflow = json.loads(path.read_text())
    loaders = [n for n in workflow["nodes"] if n["type"] in catalog.LOADER_DIRECTORIES]
    assert loaders, f"{path.name} has no loader node"
    for node in loaders:
        strings = [v for v in node.get("widgets_values") or [] if isinstance(v, str)]
        entries = [e for v in strings if (e := catalog.lookup(v, catalog.LOADER_DIRECTORIES[node["type"]]))]
        assert entries or set(strings) & set(catalog.OFF_VALUES), f"{path.name} node {node['id']}: no catalogued model"
        expected = []
        for e in entries:
            if e.layout == catalog.FILE and e.url:
                item = {"name": e.name, "url": e.url, "directory": e.directory}
                if e.sha256:
                    item.update(hash=e.sha256, hash_type="SHA256")
                assert e.name in strings  # the frontend keeps only items whose name is a widget value
                expected.append(item)
        assert node["properties"].get("models") == (expected or None), (
            f"{path.name} node {node['id']} ({node['type']}): properties.models is out of date; "
            f"run python tools/workflow_models.py")


def test_the_tool_is_idempotent_and_changes_nothing_else(tmp_path):
    tool = _tool()
    for path in UI_WORKFLOWS:
        assert not tool.update_file(path, check=True), f"{path.name}: run python tools/workflow_models.py"
    source = json.loads((REPO / "workflows" / "insight_edit.json").read_text())
    stripped = json.loads(json.dumps(source))
    for node in stripped["nodes"]:
        node.get("properties", {}).pop("models", None)
    copy = tmp_path / "w.json"
    copy.write_text(json.dumps(stripped, indent=1) + "\n")
    assert tool.update_file(copy) and not tool.update_file(copy)
    assert json.loads(copy.read_text()) == source  # only properties.models came back, nothing else moved


# ----------------------------------------------------------------------------- README


def _section(text, heading, until):
    start = text.index(heading)
    return text[start:text.index(until, start + len(heading))]


def test_readme_model_tables_give_each_catalogued_source():
    readme = (REPO / "README.md").read_text()
    tables = (_section(readme, "## Where the models go", "\n## ")
              + _section(readme, "| Network | Place | Download |", "\n### "))
    for e in catalog.CATALOG:
        assert (e.source or "nodes/regions/train.py") in tables, f"README model tables lack the source of {e.name}"
    known = {u for e in catalog.CATALOG for u in (e.source, e.url) if u}
    for url in re.findall(r"\((https://[^)\s]+)\)|<(https://[^>\s]+)>", tables):
        url = url[0] or url[1]
        assert url in known, f"README links {url}, which the catalogue does not know"


def test_the_catalogue_has_no_comfy_import():
    source = (REPO / "nodes" / "model_catalog.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(comfy|folder_paths)", source, re.M)
    assert os.path.basename(catalog.__file__) == "model_catalog.py"
