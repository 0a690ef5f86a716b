"""Every UI workflow is what tools/api_to_ui.py makes of its API twin and layout spec against the
live server's /object_info: the files are regenerated, never edited by hand, so a node added to an
API file and its spec comes out laid out the same way (and the browser suite checks the result)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
API_FILES = sorted((REPO / "workflows" / "api").glob("*.json"))


@pytest.fixture(scope="module")
def build_ui():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return importlib.import_module("api_to_ui").build_ui
    finally:
        sys.path.remove(str(REPO / "tools"))


@pytest.mark.parametrize("path", API_FILES, ids=[p.stem for p in API_FILES])
def test_ui_file_is_generated_from_its_api_twin_and_layout(comfy_server, build_ui, path):
    ui = json.loads((REPO / "workflows" / path.name).read_text())
    assert build_ui(path, comfy_server.initial_object_info) == ui, (
        f"workflows/{path.name} is not what the generator makes: run "
        "python tools/api_to_ui.py --all --server <a ComfyUI with the pack>")
