"""Every import the pack and its tests make comes from a declared dependency.

A green run on a developer's machine can hide a missing install step: a package that some other
project happened to install (ComfyUI's requirements put ``sentencepiece`` there) satisfies an
import nobody declared. Two checks, both naming the culprit:

1. Static: every absolute import in the repository (module level or lazy, in the pack, its tests,
   benchmarks and tools) is the standard library, one of the repository's own modules, the
   user-provided torch family, a ComfyUI module, or a module of a distribution declared in
   pyproject.toml (``dependencies`` or the ``test`` extra). Host tests may also use what ComfyUI's
   own requirements.txt installs (it is installed exactly when they run).
2. Dynamic: a fresh interpreter of this environment imports every module of the pack and every
   test helper (ComfyUI-facing modules only when a ComfyUI tree is at hand), so an import that
   fails at import time fails here with its module name.
"""

import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".ci", "__pycache__", ".venv", "build", ".pytest_cache", ".hypothesis"}
# users bring their own build: never a declared dependency, always present
USER_PROVIDED = {"torch", "torchvision", "torchaudio"}
# ComfyUI's own top-level modules, imported only inside a running ComfyUI (or host tests)
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config",
                 "folder_paths", "node_helpers", "latent_preview", "execution", "server",
                 "comfyui_version", "app", "nodes"}


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec):
    return _norm(re.split(r"[\s<>=!~;\[(]", spec.strip(), maxsplit=1)[0])


def declared_distributions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project.get("dependencies", [])) + list(project.get("optional-dependencies", {}).get("test", []))
    return {_requirement_name(s) for s in specs}


def comfyui_requirement_distributions():
    root = os.environ.get("COMFYUI_PATH")
    if not root or not os.path.isfile(os.path.join(root, "requirements.txt")):
        return set()
    lines = Path(root, "requirements.txt").read_text().splitlines()
    return {_requirement_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}


def python_files():
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if not SKIP_DIRS.intersection(rel.parts):
            yield path


def local_module_names(path):
    """Names a script or test in path's folder can import as siblings (its folder, tests/, benchmarks/)."""
    names = set()
    for folder in {path.parent, REPO / "tests", REPO / "benchmarks"}:
        for entry in folder.iterdir():
            if entry.suffix == ".py":
                names.add(entry.stem)
            elif entry.is_dir() and (entry / "__init__.py").exists() or entry.name == "host":
                names.add(entry.name)
    return names | {"contextedit"}


def absolute_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_every_import_comes_from_a_declared_dependency():
    declared = declared_distributions()
    comfy_reqs = comfyui_requirement_distributions()
    provides = md.packages_distributions()  # top-level module -> distributions installed here
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for path in python_files():
        rel = path.relative_to(REPO)
        is_host = rel.parts[:2] == ("tests", "host")
        local = local_module_names(path)
        for lineno, module in absolute_imports(path):
            if module in stdlib or module in local or module in USER_PROVIDED or module in COMFY_MODULES:
                continue
            dists = {_norm(d) for d in provides.get(module, [])}
            if not dists:
                problems.append(f"{rel}:{lineno}: imports '{module}', which no installed distribution "
                                f"provides: declare the package that provides it in pyproject.toml")
            elif not dists & declared and not (is_host and dists & comfy_reqs):
                problems.append(f"{rel}:{lineno}: imports '{module}' (from {', '.join(sorted(dists))}), "
                                f"which is not declared in pyproject.toml dependencies or the test extra")
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_requirements_txt_matches_pyproject_dependencies():
    """pip install -r requirements.txt (ComfyUI-Manager's way) gets what pip install . gets."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [line for line in (REPO / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(_requirement_name(s) for s in lines) == sorted(_requirement_name(s) for s in project["dependencies"])
    assert not {_requirement_name(s) for s in lines} & USER_PROVIDED, "torch is the user's: never a requirement"


def _modules_under(folder, package_prefix):
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder)
        if SKIP_DIRS.intersection(rel.parts) or rel.parts[0] in {"tests", "benchmarks", "tools", "workflows"}:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join([package_prefix, *parts]) if parts else package_prefix


def _imports_comfy_at_module_level(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        if set(names) & COMFY_MODULES:
            return True
    return False


def _needs_comfy(path):
    """A module that imports ComfyUI at module level, or imports a sibling module that does."""
    if _imports_comfy_at_module_level(path):
        return True
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = base.joinpath(*(node.module or "").split("."))
            for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                if candidate.exists() and candidate != path and _needs_comfy(candidate):
                    return True
            for alias in node.names:
                sub = target / f"{alias.name}.py"
                if sub.exists() and sub != path and _needs_comfy(sub):
                    return True
    return False


def test_every_module_imports_in_a_fresh_interpreter(tmp_path):
    comfy_root = os.environ.get("COMFYUI_PATH")
    have_comfy = bool(comfy_root) and os.path.isfile(os.path.join(comfy_root, "main.py"))
    pack = [(p, name) for p, name in _modules_under(REPO, "contextedit")]
    helpers = [(p, ".".join(p.relative_to(REPO / "tests").with_suffix("").parts).removesuffix(".__init__"))
               for p in sorted((REPO / "tests").rglob("*.py"))
               if "__pycache__" not in p.parts and not p.name.startswith("test_") and p.name != "conftest.py"]
    plain = [name for p, name in pack + helpers if not _needs_comfy(p)]
    hosted = [name for p, name in pack + helpers if _needs_comfy(p)]
    assert "contextedit.nodes.attention.node" in hosted and "contextedit.attention_patches.controller" in plain
    script = tmp_path / "import_all.py"
    script.write_text(textwrap.dedent(f"""
        import importlib, importlib.util, sys, traceback
        sys.path.insert(0, {str(REPO / 'tests')!r})
        spec = importlib.util.spec_from_file_location(
            "contextedit", {str(REPO / '__init__.py')!r}, submodule_search_locations=[{str(REPO)!r}])
        module = importlib.util.module_from_spec(spec); sys.modules["contextedit"] = module
        spec.loader.exec_module(module)
        names = {plain!r}
        if {have_comfy!r}:
            from host.inprocess import import_comfy
            import_comfy({comfy_root!r})
            names += {hosted!r}
        failed = []
        for name in names:
            try:
                importlib.import_module(name)
            except BaseException as exc:
                failed.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
        print("\\n".join(failed) if failed else f"imported {{len(names)}} modules")
        sys.exit(1 if failed else 0)
    """))
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, f"modules that fail to import:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert f"imported {len(plain) + (len(hosted) if have_comfy else 0)} modules" in result.stdout
