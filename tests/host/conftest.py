"""Host tests: a real ComfyUI (COMFYUI_PATH) with this pack in custom_nodes.

Every test here is marked ``host`` and skipped, with one summary line, when COMFYUI_PATH does
not point at a ComfyUI checkout. Expensive things are session-scoped: the tiny checkpoints are
generated once into the ``generated_dir`` cache, and one server (with the pack) serves the run.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from host.browser import CHROMEDRIVER, CHROMIUM, Browser, chromium_available
from host.server import PACK_LINK_NAME, REPO_ROOT, ComfyServer
from host.tiny_checkpoints import IP2P_NAME, SD15_NAME, ensure_tiny_checkpoints

SKIP_REASON = "host tests skipped: set COMFYUI_PATH to a ComfyUI 0.8.0 checkout to run them"
HOST_DIR = Path(__file__).resolve().parent


def comfyui_path():
    """tests/conftest.py's comfyui_path(); pytest (importlib mode) registers it as tests.conftest."""
    for name in ("tests.conftest", "conftest"):
        module = sys.modules.get(name)
        if module is not None and Path(module.__file__).resolve() == HOST_DIR.parent / "conftest.py":
            return module.comfyui_path()
    raise RuntimeError("tests/conftest.py was not loaded before tests/host/conftest.py")


def _is_host_item(item):
    return HOST_DIR in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_host_item(item):
            item.add_marker(pytest.mark.host)


def pytest_runtest_setup(item):
    # Skipping here (not in a fixture, not with a marker) gives every host test the same skip
    # location, so `-ra` folds them into a single summary line.
    if _is_host_item(item) and comfyui_path() is None:
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def comfyui_root():
    root = comfyui_path()
    if root is None:
        pytest.skip(SKIP_REASON)
    return Path(root)


@dataclass(frozen=True)
class TinyCheckpoints:
    folder: Path
    sd15: Path   # detected as SD15
    ip2p: Path   # detected as SD15_instructpix2pix (8 input channels)

    @property
    def sd15_name(self):
        return self.sd15.name

    @property
    def ip2p_name(self):
        return self.ip2p.name


@pytest.fixture(scope="session")
def tiny_checkpoints(comfyui_root, generated_dir):
    paths = ensure_tiny_checkpoints(Path(generated_dir) / "checkpoints", comfyui_root)
    return TinyCheckpoints(folder=Path(generated_dir) / "checkpoints",
                           sd15=paths[SD15_NAME], ip2p=paths[IP2P_NAME])


@pytest.fixture(scope="session")
def comfy_server(comfyui_root, tiny_checkpoints, tmp_path_factory):
    """One ComfyUI with the pack linked into custom_nodes, for the whole session. The test-only
    plugin standin_text_encoders.py is linked in too: it lets DualCLIPLoader load the small FLUX.1
    text-encoder stand-ins (files marked as such in their metadata) and touches no other file."""
    plugins = {PACK_LINK_NAME: REPO_ROOT, "contextedit_test_standin_text_encoders.py": HOST_DIR / "standin_text_encoders.py"}
    server = ComfyServer(comfyui_root, tmp_path_factory.mktemp("comfy_server"), custom_nodes=plugins,
                         checkpoints_dir=tiny_checkpoints.folder, name="comfy_with_pack")
    server.start()
    # a snapshot taken before any test uploads or saves files (node lists can depend on them)
    server.initial_object_info = server.object_info()
    try:
        yield server
    finally:
        server.stop()


def _running_in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def browser_available():
    """Skip (one line) without Chromium + chromedriver + selenium; under CI a missing browser is a
    failure, since .ci/run installs it."""
    if chromium_available():
        return True
    message = (f"browser tests need Debian's chromium + chromium-driver ({CHROMIUM}, {CHROMEDRIVER}) and "
               "selenium: apt-get install chromium chromium-driver")
    if _running_in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser_session(browser_available, comfy_server, tmp_path_factory):
    """One headless Chromium on the session server's real frontend, for the whole run."""
    from host.server import frontend_package_available

    if not frontend_package_available():
        pytest.fail("comfyui_frontend_package is not installed: install ComfyUI's requirements.txt")
    browser = Browser(tmp_path_factory.mktemp("browser"))
    browser.start()
    try:
        browser.open(comfy_server)
        yield browser
    finally:
        browser.stop()


@pytest.fixture
def browser(browser_session):
    """The session browser, with the console read (and dropped) before the test starts."""
    browser_session.console_errors()
    return browser_session


@pytest.fixture
def progress_hook(comfyui_root):
    """Installs a ComfyUI progress-bar hook (as the server does) for an in-process test:
    ``install(fn)`` calls ``fn(value, total)`` on every update and returns the list of updates;
    the old hook and the interrupt flag are restored afterwards."""
    from host.inprocess import import_comfy

    import_comfy(comfyui_root)
    import comfy.model_management as mm
    import comfy.utils

    old = comfy.utils.PROGRESS_BAR_HOOK
    calls = []

    def install(fn):
        def hook(value, total, preview, node_id=None):
            calls.append((value, total))
            fn(value, total)
        comfy.utils.set_progress_bar_global_hook(hook)
        return calls

    try:
        yield install
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        mm.interrupt_current_processing(False)
