"""Write the UI-format (LiteGraph) twin of an API-format workflow.

    python tools/api_to_ui.py workflows/api/X.json workflows/X.json --object-info object_info.json
    python tools/api_to_ui.py workflows/api/X.json workflows/X.json --server http://127.0.0.1:8188

The API file is the source of truth we test headless; the UI file is what users open. Widget
values are laid out in the order ComfyUI's /object_info declares (``input_order``), with the
frontend-only extras it expects (the "control after generate" value after seeds, the upload
button value of LoadImage), and the loader nodes' model links for the frontend's missing-models
dialog (tools/workflow_models.py). A host test converts the UI file back with comfy-cli and checks
it equals the API file.
"""

import argparse
import json
import urllib.request
from collections import defaultdict

from workflow_models import apply as add_model_links

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec):
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


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


def _depths(api):
    memo = {}

    def depth(nid):
        if nid not in memo:
            memo[nid] = 0
            srcs = [v[0] for v in api[nid]["inputs"].values() if _is_link(v)]
            memo[nid] = 1 + max((depth(s) for s in srcs), default=-1)
        return memo[nid]

    return {nid: depth(nid) for nid in api}


def api_to_ui(api: dict, object_info: dict) -> dict:
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
                    value = options.get("default")
                if value is None:
                    value = options.get("default")
                widgets.append(value)
                if options.get("control_after_generate"):
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
    ui_doc = {"last_node_id": max(int(n) for n in api), "last_link_id": link_id, "nodes": nodes, "links": links,
              "groups": [], "config": {}, "extra": {}, "version": 0.4}
    add_model_links(ui_doc)  # the loaders' properties.models (tools/workflow_models.py)
    return ui_doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("api")
    ap.add_argument("ui")
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
    with open(args.api) as f:
        api = json.load(f)
    with open(args.ui, "w") as f:
        json.dump(api_to_ui(api, info), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
