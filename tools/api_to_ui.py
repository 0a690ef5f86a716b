"""Write the UI-format (LiteGraph) twin of an API-format workflow, laid out for people.

    python tools/api_to_ui.py --all --server http://127.0.0.1:8188      # every workflows/api/*.json
    python tools/api_to_ui.py workflows/api/X.json workflows/X.json --server http://127.0.0.1:8188
    python tools/api_to_ui.py workflows/api/X.json workflows/X.json --object-info object_info.json

The API file is the source of truth we test headless; the UI file is what users open. Widget
values are laid out in the order ComfyUI's /object_info declares (``input_order``), with the
frontend-only extras it expects (the "control after generate" value after seeds, the upload
button value of LoadImage), and the loader nodes' model links for the frontend's missing-models
dialog (tools/workflow_models.py). A host test converts the UI file back with comfy-cli and checks
it equals the API file; the browser suite (tests/host/test_browser_workflows.py) checks the
frontend builds the same prompt.

The layout comes from workflows/layout/X.json (tools/workflow_layout.py: titled groups, columns,
the note with the models, the opening view); without one the nodes go on a plain grid. The
``properties`` of the nodes in the UI file being replaced (same id, same type) are kept, except
the two this writes ("Node name for S&R", and ``models``, from the model catalogue), so a
property another tool or a person added survives. After adding a node: edit the API file and the
layout spec, and run this again.
"""

import argparse
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the tools folder is not a package: its modules import each other from it
from workflow_layout import (
    NOTE,
    NOTE_COLORS,
    arrange,
    check_spec,
    estimate_size,
    has_control_widget,
    is_widget,
    load_spec,
    note_size,
    spec_path,
    view_for,
)
from workflow_models import apply as add_model_links
from workflow_note import load_catalog, note_text

REPO = Path(__file__).resolve().parents[1]
OWN_PROPERTIES = ("Node name for S&R", "models")


def _is_widget(spec):
    return is_widget(spec)


def _is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _ordered_inputs(schema):
    order = schema.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        names = order.get(section) or list((schema.get("input") or {}).get(section, {}))
        for name in names:
            out.append((name, schema["input"][section][name]))
    return out


def _frontend_default(spec, options):
    """The value the frontend gives a widget the file leaves unset (its widget composables):
    the declared default, else "" / 0 / false, a combo's first option."""
    if options.get("default") is not None:
        return options["default"]
    kind = spec[0]
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options") or []
        return choices[0] if choices else None
    return {"STRING": "", "INT": 0, "FLOAT": 0, "BOOLEAN": False}.get(kind)


def _depths(api):
    memo = {}

    def depth(nid):
        if nid not in memo:
            memo[nid] = 0
            srcs = [v[0] for v in api[nid]["inputs"].values() if _is_link(v)]
            memo[nid] = 1 + max((depth(s) for s in srcs), default=-1)
        return memo[nid]

    return {nid: depth(nid) for nid in api}


def api_to_ui(api: dict, object_info: dict, layout: dict | None = None, previous: dict | None = None,
              catalog=None) -> dict:
    """The UI twin of ``api``. ``layout``: a layout spec (else a plain grid); ``previous``: the UI
    file this replaces, whose nodes' properties are kept; ``catalog``: the model catalogue module
    for the note (workflow_note.load_catalog())."""
    links, nodes = [], []
    outgoing = defaultdict(list)  # (src, slot) -> link ids
    link_id = 0
    incoming = {}
    for nid, node in api.items():
        schema = object_info[node["class_type"]]
        for name, spec in _ordered_inputs(schema):
            value = node["inputs"].get(name)
            if _is_link(value):
                link_id += 1
                src, slot = value
                out_type = object_info[api[src]["class_type"]]["output"][slot]
                out_type = "*" if isinstance(out_type, list) else out_type
                links.append([link_id, int(src), slot, int(nid), None, out_type])
                outgoing[(src, slot)].append(link_id)
                incoming[(nid, name)] = link_id
    link_by_id = {link[0]: link for link in links}
    depths = _depths(api)
    rows = defaultdict(int)
    for order, nid in enumerate(sorted(api, key=lambda n: (depths[n], int(n)))):
        node = api[nid]
        schema = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in _ordered_inputs(schema):
            value = node["inputs"].get(name)
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if _is_widget(spec):
                if (nid, name) in incoming:
                    entry = {"name": name, "type": "COMBO" if isinstance(spec[0], list) else spec[0],
                             "widget": {"name": name}, "link": incoming[(nid, name)]}
                    inputs.append(entry)
                    value = None
                if value is None:
                    value = _frontend_default(spec, options)
                widgets.append(value)
                if has_control_widget(name, spec):
                    widgets.append("fixed")
                if options.get("image_upload"):
                    widgets.append("image")
            else:
                entry = {"name": name, "type": spec[0], "link": incoming.get((nid, name))}
                inputs.append(entry)
        for slot, entry in enumerate(inputs):
            if entry["link"] is not None:
                link_by_id[entry["link"]][4] = slot
        outputs = []
        for slot, (otype, oname) in enumerate(zip(schema["output"], schema.get("output_name", schema["output"]))):
            outputs.append({"name": oname, "type": "*" if isinstance(otype, list) else otype,
                            "links": outgoing.get((nid, slot), []), "slot_index": slot})
        col = depths[nid]
        pos = [40 + 360 * col, 40 + 220 * rows[col]]
        rows[col] += 1
        ui = {"id": int(nid), "type": node["class_type"], "pos": pos, "size": [320, 180], "flags": {},
              "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
              "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        title = (node.get("_meta") or {}).get("title")
        if title:
            ui["title"] = title
        nodes.append(ui)
    workflow = {"last_node_id": max(int(n) for n in api), "last_link_id": link_id, "nodes": nodes, "links": links,
                "groups": [], "config": {}, "extra": {}, "version": 0.4}
    if previous is not None:
        _keep_properties(workflow, previous)
    add_model_links(workflow)  # the loaders' properties.models (tools/workflow_models.py)
    if layout is not None:
        _lay_out(workflow, api, object_info, layout, catalog)
    return workflow


def _keep_properties(workflow, previous):
    before = {n["id"]: n for n in previous.get("nodes") or []}
    for node in workflow["nodes"]:
        old = before.get(node["id"])
        if old is None or old.get("type") != node["type"]:
            continue
        kept = {k: v for k, v in (old.get("properties") or {}).items() if k not in OWN_PROPERTIES}
        node["properties"] = {**node["properties"], **kept}


def _lay_out(workflow, api, object_info, spec, catalog):
    check_spec(spec, api)
    by_id = {str(n["id"]): n for n in workflow["nodes"]}
    sizes = {}
    for nid, node in by_id.items():
        schema = object_info[node["type"]]
        title = node.get("title") or schema.get("display_name") or node["type"]
        sizes[nid] = estimate_size(node["type"], schema, title)
    text = note_text(spec["note"], api, {nid: n["properties"] for nid, n in by_id.items()}, catalog)
    sizes[NOTE] = note_size(text)
    for nid, (w, h) in (spec.get("sizes") or {}).items():
        sizes[nid] = [max(sizes[nid][0], w), max(sizes[nid][1], h)]
    pos, final, groups = arrange(spec, sizes)
    for nid, node in by_id.items():
        node["pos"], node["size"] = pos[nid], final[nid]
    note_id = workflow["last_node_id"] + 1
    workflow["nodes"].append({"id": note_id, "type": "MarkdownNote", "pos": pos[NOTE], "size": final[NOTE],
                              "flags": {}, "order": len(workflow["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                              "title": spec["note"].get("node_title", "Read me: models and how to use"),
                              "properties": {}, "widgets_values": [text], **NOTE_COLORS})
    workflow["last_node_id"] = note_id
    workflow["groups"] = [{"id": i, **{k: v for k, v in g.items() if k != "nodes"}}
                          for i, g in enumerate(groups, start=1)]
    workflow["extra"] = {"ds": view_for(spec, pos, final, groups)}


def build_ui(api_path, object_info, layout_path=None, previous_path=None, catalog=None):
    """The UI twin of an API file with its layout spec (workflows/layout/<name>.json by default),
    the properties of ``previous_path`` (the UI file by default) kept and the note's models from
    ``catalog`` (default: the pack's model catalogue)."""
    api_path = Path(api_path)
    workflows = api_path.parent.parent
    layout_path = Path(layout_path) if layout_path else spec_path(workflows, api_path.name)
    previous_path = Path(previous_path) if previous_path else workflows / api_path.name
    api = json.loads(api_path.read_text())
    layout = load_spec(layout_path) if layout_path.is_file() else None
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
    return api_to_ui(api, object_info, layout, previous, load_catalog() if catalog is None else catalog)


def write_ui(workflow, path):
    with open(path, "w") as f:
        json.dump(workflow, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("api", nargs="?")
    ap.add_argument("ui", nargs="?")
    ap.add_argument("--all", action="store_true", help="every workflows/api/*.json into workflows/")
    ap.add_argument("--layout", help="layout spec (default: workflows/layout/<name>.json when it exists)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--object-info")
    src.add_argument("--server")
    args = ap.parse_args()
    if args.object_info:
        with open(args.object_info) as f:
            info = json.load(f)
    else:
        with urllib.request.urlopen(args.server.rstrip("/") + "/object_info") as r:
            info = json.load(r)
    catalog = load_catalog()
    if args.all:
        for api_path in sorted((REPO / "workflows" / "api").glob("*.json")):
            ui_path = REPO / "workflows" / api_path.name
            write_ui(build_ui(api_path, info, catalog=catalog), ui_path)
            print(ui_path.relative_to(REPO))
        return
    if not (args.api and args.ui):
        ap.error("give API and UI paths, or --all")
    layout = args.layout or spec_path(Path(args.api).resolve().parent.parent, Path(args.api).name)
    write_ui(build_ui(args.api, info, layout, args.ui, catalog=catalog), args.ui)


if __name__ == "__main__":
    main()
