"""Write ComfyUI's model metadata (``properties.models``) on the loader nodes of UI workflows.

    python tools/workflow_models.py                 # every workflows/*.json, in place
    python tools/workflow_models.py FILE [FILE...]  # only these
    python tools/workflow_models.py --check         # exit 1 (and list them) if a file is out of date

For each loader node (nodes/model_catalog.py, ``LOADER_DIRECTORIES``) the models its widgets name
are looked up in the pack's model catalogue, and ``properties.models`` is set to the items the
frontend's missing-models dialog reads (name, url, directory; hash + hash_type where known), as
ComfyUI's own templates carry them. Models the frontend cannot describe (Hugging Face folders, the
region-predictor head, which has no download) get none; a stale ``models`` key is removed. Nothing
else changes: every other key, the layout and the file's JSON formatting stay as they are, so
this can be re-run after the workflows are edited by hand or laid out anew (tools/api_to_ui.py
calls :func:`apply` itself).
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_catalog():
    """nodes/model_catalog.py by path (plain Python; the pack folder itself is not importable)."""
    name = "contextedit_model_catalog"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "nodes" / "model_catalog.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


def _all_nodes(workflow):
    nodes = list(workflow.get("nodes") or [])
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        nodes.extend(sub.get("nodes") or [])
    return nodes


def models_for_node(node, catalog=None):
    """The ``properties.models`` list for one UI node, or None when it names no describable model."""
    catalog = catalog or load_catalog()
    directories = catalog.LOADER_DIRECTORIES.get(node.get("type"))
    if not directories:
        return None
    values = node.get("widgets_values") or []
    values = values.values() if isinstance(values, dict) else values
    items = []
    for value in values:
        entry = catalog.lookup(value, directories) if isinstance(value, str) else None
        item = catalog.properties_models(entry) if entry is not None else None
        if item is not None and item not in items:
            items.append(item)
    return items or None


def apply(workflow, catalog=None):
    """Set (or drop) ``properties.models`` on every loader node of a UI workflow, in place;
    returns the number of nodes changed."""
    catalog = catalog or load_catalog()
    changed = 0
    for node in _all_nodes(workflow):
        if node.get("type") not in catalog.LOADER_DIRECTORIES:
            continue
        models = models_for_node(node, catalog)
        properties = node.setdefault("properties", {})
        if models is None:
            if "models" in properties:
                del properties["models"]
                changed += 1
        elif properties.get("models") != models:
            properties["models"] = models
            changed += 1
    return changed


def _indent_of(text):
    """The indent the file was written with (json.dump's ``indent``), None for one line."""
    lines = text.splitlines()
    if len(lines) < 2:
        return None
    second = lines[1]
    return len(second) - len(second.lstrip(" ")) or None


def render(workflow, like_text):
    """``workflow`` as JSON formatted like ``like_text`` (indent, non-ASCII, final newline)."""
    out = json.dumps(workflow, indent=_indent_of(like_text), ensure_ascii=like_text.isascii())
    return out + ("\n" if like_text.endswith("\n") else "")


def update_file(path, check=False):
    """Apply to one file; returns True when it was (check: would be) changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    workflow = json.loads(text)
    if not isinstance(workflow.get("nodes"), list):
        return False  # an API-format file: the frontend reads no metadata there
    apply(workflow)
    new = render(workflow, text)
    if new == text:
        return False
    if not check:
        path.write_text(new, encoding="utf-8")
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="UI workflow files (default: workflows/*.json)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    files = args.files or sorted(str(p) for p in (REPO / "workflows").glob("*.json"))
    changed = [f for f in files if update_file(f, check=args.check)]
    for f in changed:
        print(("out of date: " if args.check else "updated: ") + f)
    if not changed:
        print(f"{len(files)} file(s) up to date")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
