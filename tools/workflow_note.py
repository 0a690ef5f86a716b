"""The text of a workflow's note: what it does (from its layout spec), then the models it loads,
with the folder each goes in and where to get it.

The model list comes, in order of preference, from
1. the pack's model catalogue (nodes/model_catalog.py: ``LOADER_INPUTS``, ``lookup``): name,
   folder, file or whole Hugging Face folder, official source;
2. the loader node's ``properties.models`` (name, url, directory: ComfyUI's model metadata, written
   on the UI file by tools/workflow_models.py);
3. the loader's widget value and the first folder the loader reads (the catalogue's LOADER_INPUTS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow_models import load_catalog  # noqa: E402  (nodes/model_catalog.py by path)


def model_rows(api, properties=None, catalog=None):
    """[{name, directory, folder (bool), source, url}] for every model the API graph's loaders
    name, in node order, each (name, directory) once. ``properties``: {node id: UI properties}."""
    properties = properties or {}
    pack = load_catalog()  # the loader table and "off" values; ``catalog`` (when given) for the lookups
    loader_inputs = getattr(catalog, "LOADER_INPUTS", None) or pack.LOADER_INPUTS
    off = tuple(getattr(catalog, "OFF_VALUES", ())) + pack.OFF_VALUES
    rows, seen = [], set()
    for nid in sorted(api, key=int):
        node = api[nid]
        for input_name, folders in (loader_inputs.get(node["class_type"]) or {}).items():
            value = node["inputs"].get(input_name)
            if not isinstance(value, str) or not value or value in off:
                continue
            row = None
            entry = catalog.lookup(value, folders) if catalog is not None else None
            if entry is not None:
                row = {"name": entry.name, "directory": entry.directory,
                       "folder": getattr(entry, "layout", "file") == "folder",
                       "source": entry.source, "url": getattr(entry, "url", None), "how": getattr(entry, "how", "")}
            else:
                for item in (properties.get(nid) or {}).get("models") or []:
                    if item.get("name") == value:
                        row = {"name": value, "directory": item.get("directory") or folders[0], "folder": False,
                               "source": None, "url": item.get("url")}
                        break
            if row is None:
                row = {"name": value, "directory": folders[0], "folder": False, "source": None, "url": None}
            key = (row["name"], row["directory"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def model_line(row):
    place = f"`models/{row['directory']}/{row['name']}{'/' if row['folder'] else ''}`"
    what = "the whole Hugging Face folder " if row["folder"] else ""
    links = []
    if row.get("url"):
        links.append(f"[download]({row['url']})")
    if row.get("source") and row.get("source") != row.get("url"):
        links.append(f"[source]({row['source']})")
    line = f"- {what}{place}"
    if links:
        line += f" ({' · '.join(links)})"
    elif not row.get("how"):
        line += " (source: see the README's model table)"
    if row.get("how") and (row["folder"] or not row.get("source")):
        line += f": {row['how']}"  # a folder, or a model without a download: how to get it in place
    return line


def note_text(spec_note, api, properties=None, catalog=None):
    """Markdown: the spec's title and text, then the models."""
    lines = [f"## {spec_note['title']}", "", spec_note["text"].strip(), ""]
    rows = model_rows(api, properties, catalog)
    if rows:
        lines += ["### Models", ""] + [model_line(r) for r in rows]
    extra = spec_note.get("after_models")
    if extra:
        lines += ["", extra.strip()]
    return "\n".join(lines).rstrip() + "\n"
