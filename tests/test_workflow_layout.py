"""The workflows' layout specs (workflows/layout/<name>.json) and the tools that apply them
(tools/workflow_layout.py, tools/workflow_note.py, tools/api_to_ui.py), without a ComfyUI: every API
node placed exactly once, one note, groups that do not overlap, the note's model list from the
catalogue / properties.models / the widget value, properties kept across a regeneration, the
frontend's "control after generate" rule, and the Templates browser order naming every workflow.

The live-server checks (the UI files are what the generator makes from the live /object_info; the
frontend draws no overlap) are tests/host/test_workflow_files.py and test_browser_workflows.py.
"""

import importlib
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
API_FILES = sorted((REPO / "workflows" / "api").glob("*.json"))


@pytest.fixture(scope="module")
def tools():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return SimpleNamespace(layout=importlib.import_module("workflow_layout"),
                               note=importlib.import_module("workflow_note"),
                               api_to_ui=importlib.import_module("api_to_ui"))
    finally:
        sys.path.remove(str(REPO / "tools"))


def spec_of(path):
    return json.loads((REPO / "workflows" / "layout" / path.name).read_text())


@pytest.mark.parametrize("path", API_FILES, ids=[p.stem for p in API_FILES])
def test_every_workflow_has_a_spec_placing_each_node_once(tools, path):
    api = json.loads(path.read_text())
    spec = spec_of(path)
    tools.layout.check_spec(spec, api)  # raises LayoutError naming what is wrong
    assert spec["note"]["title"] and spec["note"]["text"] and spec["card"]["text"]
    assert spec["view"], "the opening view frames no node"


@pytest.mark.parametrize("path", API_FILES, ids=[p.stem for p in API_FILES])
def test_groups_and_nodes_do_not_overlap_in_the_arrangement(tools, path):
    spec = spec_of(path)
    ids = [n for stage in spec["stages"] for block in stage for col in block["columns"] for n in col]
    sizes = {n: [300 + 10 * (i % 4), 100 + 37 * (i % 5)] for i, n in enumerate(ids)}
    pos, final, groups = tools.layout.arrange(spec, sizes)
    boxes = {n: (pos[n][0], pos[n][1] - tools.layout.TITLE_H, pos[n][0] + final[n][0], pos[n][1] + final[n][1])
             for n in ids}

    def apart(a, b):
        return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]

    names = sorted(boxes)
    assert all(apart(boxes[a], boxes[b]) for i, a in enumerate(names) for b in names[i + 1:])
    rects = [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
              g["bounding"][1] + g["bounding"][3]) for g in groups]
    assert all(apart(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
    for group, rect in zip(groups, rects):
        for n in group["nodes"]:  # inside its group, title bar and all, below the group's title
            box = boxes[n]
            assert rect[0] < box[0] and box[2] < rect[2] and rect[1] + tools.layout.GROUP_TITLE_H < box[1] < box[3] < rect[3]
    xs = [min(boxes[n][0] for n in block_ids) for block_ids in
          ([n for col in stage[0]["columns"] for n in col] for stage in spec["stages"])]
    assert xs == sorted(xs), "stages do not read left to right"


def test_a_spec_that_forgets_a_node_or_places_one_twice_is_refused(tools):
    api = {"1": {"class_type": "A", "inputs": {}}, "2": {"class_type": "B", "inputs": {}}}
    spec = {"note": {"title": "t", "text": "x"}, "stages": [[{"columns": [["note", "1"]]}]]}
    with pytest.raises(tools.layout.LayoutError, match=r"does not place: \['2'\] \(B\)"):
        tools.layout.check_spec(spec, api)
    spec["stages"][0][0]["columns"].append(["2", "1"])
    with pytest.raises(tools.layout.LayoutError, match="more than once"):
        tools.layout.check_spec(spec, api)
    spec["stages"][0][0]["columns"] = [["1", "2"]]
    with pytest.raises(tools.layout.LayoutError, match="note"):
        tools.layout.check_spec(spec, api)


def test_control_after_generate_follows_the_frontend(tools):
    has = tools.layout.has_control_widget
    assert has("seed", ["INT", {}]) and has("noise_seed", ["INT", {"min": 0}])  # the frontend's name rule
    assert not has("seed", ["INT", {"control_after_generate": False}])  # MAG Edit, Predict Edit Region
    assert has("value", ["INT", {"control_after_generate": True}])
    assert not has("steps", ["INT", {}]) and not has("seed", ["STRING", {}])


def test_the_view_opens_where_the_frontend_draws_text(tools):
    # LGraphCanvas draws no text below MinFontSizeForLOD (8 px) / (14 px * sqrt(devicePixelRatio))
    assert tools.layout.MIN_SCALE > 8 / 14
    spec = {"view": ["1"]}
    view = tools.layout.view_for(spec, {"1": [0, 30]}, {"1": [9000, 100]})
    assert view["scale"] == tools.layout.MIN_SCALE  # a long main path: the start of it, readable
    view = tools.layout.view_for(spec, {"1": [0, 30]}, {"1": [100, 100]})
    assert view["scale"] == tools.layout.MAX_SCALE


API = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
       "2": {"class_type": "ContextEditLoadVLM", "inputs": {"model_name": "Some-VLM", "dtype": "auto"}},
       "3": {"class_type": "ContextEditLoadRegionPredictor",
             "inputs": {"region_predictor": "none (test-time mode)", "clip_vision": "a.safetensors"}},
       "4": {"class_type": "KSampler", "inputs": {"seed": 1}}}


def test_the_note_lists_models_from_properties_then_widget_values(tools):
    properties = {"1": {"models": [{"name": "a.safetensors", "url": "https://example.org/a", "directory": "checkpoints"}]}}
    rows = tools.note.model_rows(API, properties, catalog=None)
    assert rows == [
        {"name": "a.safetensors", "directory": "checkpoints", "folder": False, "source": None, "url": "https://example.org/a"},
        {"name": "Some-VLM", "directory": "LLM", "folder": False, "source": None, "url": None},
        {"name": "a.safetensors", "directory": "clip_vision", "folder": False, "source": None, "url": None},
    ]  # "none (test-time mode)" is no model; KSampler loads none
    text = tools.note.note_text({"title": "T", "text": "Do this."}, API, properties, catalog=None)
    assert text.startswith("## T\n\nDo this.\n\n### Models\n")
    assert "- `models/checkpoints/a.safetensors` ([download](https://example.org/a))" in text
    assert "- `models/LLM/Some-VLM` (source: see the README's model table)" in text


def test_the_note_prefers_the_catalogue(tools):
    entry = SimpleNamespace(name="Some-VLM", directory="LLM", layout="folder", source="https://example.org/vlm",
                            url=None, how="download the whole repository")
    catalog = SimpleNamespace(LOADER_INPUTS={"ContextEditLoadVLM": {"model_name": ("LLM",)}}, OFF_VALUES=(),
                              lookup=lambda name, folders: entry if name == "Some-VLM" else None)
    text = tools.note.note_text({"title": "T", "text": "x"}, API, {}, catalog)
    assert ("- the whole Hugging Face folder `models/LLM/Some-VLM/` ([source](https://example.org/vlm)): "
            "download the whole repository") in text
    assert "a.safetensors" not in text  # the catalogue's loader table names only the VLM here


def test_regenerating_keeps_properties_it_does_not_own(tools):
    info = {"KSampler": {"input": {"required": {"seed": ["INT", {"default": 0, "control_after_generate": True}]}},
                         "input_order": {"required": ["seed"]}, "output": ["LATENT"], "output_name": ["LATENT"],
                         "display_name": "KSampler"}}
    api = {"4": API["4"]}
    previous = {"nodes": [{"id": 4, "type": "KSampler",
                           "properties": {"Node name for S&R": "old", "models": ["stale"], "mine": {"x": 1}}}]}
    ui = tools.api_to_ui.api_to_ui(api, info, previous=previous)
    (node,) = ui["nodes"]
    assert node["properties"] == {"Node name for S&R": "KSampler", "mine": {"x": 1}}
    assert node["widgets_values"] == [1, "fixed"]
    other = {"nodes": [{"id": 4, "type": "VAEDecode", "properties": {"mine": 2}}]}  # another node now
    assert "mine" not in tools.api_to_ui.api_to_ui(api, info, previous=other)["nodes"][0]["properties"]


def test_the_templates_browser_order_names_every_workflow_once_main_first():
    text = (REPO / "web" / "js" / "template_order.js").read_text()
    order = re.findall(r'"([^"]+)"', re.search(r"TEMPLATE_ORDER = \[(.*?)\];", text, re.DOTALL).group(1))
    assert order[0] == "context_aware_edit"
    assert sorted(order) == sorted(p.stem for p in API_FILES) and len(set(order)) == len(order)


def test_ui_files_are_laid_out_with_groups_a_note_and_a_readable_view():
    for path in API_FILES:
        ui = json.loads((REPO / "workflows" / path.name).read_text())
        notes = [n for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        assert len(notes) == 1, f"{path.name}: {len(notes)} notes"
        assert "### Models" in notes[0]["widgets_values"][0]
        assert ui["groups"] and all(g["title"] for g in ui["groups"])
        assert ui["extra"]["ds"]["scale"] >= 0.7, path.name
        api = json.loads(path.read_text())
        assert str(notes[0]["id"]) not in api  # UI-only: not in the API twin
