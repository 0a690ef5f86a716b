"""Test bootstrap: import the checkout as the package ``contextedit``.

The repository root is the custom-node folder ComfyUI loads (its name is whatever the user cloned
it as), so tests load it under a fixed name with importlib instead of relying on sys.path.
"""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_NAME = "contextedit"


def _load_pack():
    if PACKAGE_NAME in sys.modules:
        return sys.modules[PACKAGE_NAME]
    spec = importlib.util.spec_from_file_location(
        PACKAGE_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE_NAME] = module
    spec.loader.exec_module(module)
    return module


_load_pack()
# make tests/fixtures importable as "fixtures" from any test file
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _keep_bytecode_out_of_comfyui():
    """Never write into the ComfyUI tree: Python drops __pycache__ next to every module it imports
    (as root, whatever the folder's permissions), so bytecode goes to a temp prefix instead, for
    this process and the ComfyUI servers and tools the host tests start."""
    if os.environ.get("COMFYUI_PATH") and not sys.pycache_prefix:
        prefix = os.environ.get("PYTHONPYCACHEPREFIX") or tempfile.mkdtemp(prefix="contextedit-pycache-")
        sys.pycache_prefix = prefix
        os.environ["PYTHONPYCACHEPREFIX"] = prefix


_keep_bytecode_out_of_comfyui()


def comfyui_path():
    path = os.environ.get("COMFYUI_PATH")
    if path and os.path.isfile(os.path.join(path, "main.py")):
        return path
    return None


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory):
    """Cache dir for generated tiny models, shared by the whole run (never committed)."""
    root = os.environ.get("CONTEXTEDIT_TEST_CACHE")
    if root:
        os.makedirs(root, exist_ok=True)
        return Path(root)
    return tmp_path_factory.mktemp("generated")


def pytest_report_header(config):
    root = comfyui_path()
    if root is None:
        return "comfyui: none (COMFYUI_PATH unset or not a checkout): host tests will be skipped"
    return f"comfyui: {os.path.realpath(root)} (host tests run against this tree)"
