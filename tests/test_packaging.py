"""What the registry, Manager and the frontend need from the repository: the pyproject icon exists,
`comfy node validate` is clean, the publish workflow is there, the README's install commands are
real, and every node has its help page (the live-server check is tests/host/test_help_pages.py)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def repository():
    url = PYPROJECT["project"]["urls"]["Repository"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url)
    assert match, f"[project.urls] Repository is not a GitHub repository URL: {url}"
    return url, match.group(1), match.group(2)


def test_icon_url_points_at_a_square_png_in_this_repository():
    _, owner, name = repository()
    icon = PYPROJECT["tool"]["comfy"]["Icon"]
    match = re.fullmatch(rf"https://raw\.githubusercontent\.com/{owner}/{name}/main/(.+)", icon)
    assert match, f"Icon {icon} is not a raw URL of {owner}/{name} on main"
    path = REPO / match.group(1)
    assert path.is_file(), f"Icon points at {match.group(1)}, which is not in the repository"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == image.size[1] >= 200, (image.format, image.size)


def test_comfy_node_validate_prints_no_warning():
    run = subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", "--no-enable-telemetry", "node",
                          "validate"], cwd=REPO, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "All validation checks passed" in out and "warning" not in out.lower(), out


def test_publish_workflow_publishes_with_the_registry_action_on_version_changes():
    text = (REPO / ".github" / "workflows" / "publish.yml").read_text()
    trigger = text.split("\non:\n", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"push:\n\s+branches:\n\s+- main\n\s+paths:\n\s+- \"pyproject.toml\"", trigger), trigger
    uses = re.findall(r"uses: (Comfy-Org/publish-node-action@\S+)", text)
    assert len(uses) == 1, uses
    assert "personal_access_token: ${{ secrets.REGISTRY_ACCESS_TOKEN }}" in text
    assert '["project"]["version"]' in text  # publishes only when the version changed


def test_readme_install_commands_have_no_placeholder_and_name_the_real_ids():
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
                for line in block.splitlines() if line.strip()]
    assert not [c for c in commands if re.search(r"<[^>]*>", c)], commands
    url, _, _ = repository()
    assert f"comfy node install {PYPROJECT['project']['name']}" in commands
    assert any(c.startswith(f"git clone {url} ") or c == f"git clone {url}" for c in commands), commands


def _declared_node_ids():
    ids = set()
    for path in (REPO / "nodes").rglob("*.py"):
        ids.update(re.findall(r'node_id="(ContextEdit\w+)"', path.read_text()))
    return ids


def test_every_node_has_a_help_page_in_the_web_directory():
    init = (REPO / "__init__.py").read_text()
    match = re.search(r'^WEB_DIRECTORY = "([^"]+)"', init, re.M)
    assert match, "__init__.py declares no WEB_DIRECTORY"
    docs = (REPO / match.group(1)).resolve() / "docs"
    ids = _declared_node_ids()
    assert len(ids) >= 13, ids
    for node_id in sorted(ids):
        page = docs / f"{node_id}.md"
        assert page.is_file(), f"no help page for {node_id}: run tools/make_help_pages.py"
        text = page.read_text()
        for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            assert (docs / image).is_file(), f"{page.name} shows {image}, which does not exist"
        for workflow in re.findall(r"`(workflows/[\w.-]+\.json)`", text):
            assert (REPO / workflow).is_file(), f"{page.name} names {workflow}, which does not exist"
    assert {p.stem for p in docs.glob("*.md")} == ids, "help pages for nodes that do not exist"
