"""The CI script and the README tell a newcomer the same thing."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_test_commands():
    """Shell lines of the README's '## Tests' section code blocks."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Tests", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def ci_commands():
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    pytest_lines = [line for line in ci_commands() if "pytest" in line and not line.startswith("echo")]
    assert pytest_lines == ["python -m pytest tests"], pytest_lines
    assert "python -m pytest tests" in readme_test_commands()


def test_readme_gives_the_same_install_steps_as_ci():
    readme = readme_test_commands()
    ci = ci_commands()
    assert "python -m pip install torch torchvision" in readme
    assert any(line.startswith("python -m pip install -q torch torchvision") for line in ci)
    assert 'python -m pip install ".[test]"' in readme
    assert any(line.startswith('python -m pip install -q "$repo[test]"') for line in ci)
    assert "`bash .ci/run`" in (REPO / "README.md").read_text().split("\n## Tests", 1)[1]
    # the environment is the script's own: a venv without system site-packages
    assert any(re.match(r'"\$PYTHON" -m venv "\$venv"$', line) for line in ci)
