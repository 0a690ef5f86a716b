"""Every shipped UI workflow in the real web frontend (headless Chromium on the pinned
comfyui_frontend_package, one browser and one server for the session): one test per workflow.

Each test opens the file as the frontend's Open does and checks, in order:

- loads: the frontend knows every node type; no widget errors (``widget_errors``: every widget input
  the server declares is a widget of that name on the node, holding the API twin's value; the
  frontend reads every saved widget value back unchanged (a value count that does not match its
  widgets shifts them); combos hold one of their listed values, except model files / folders not
  installed on the test server, listed on the test's line); no console error;
- opens at a zoom where the frontend draws text (its own low-quality flag is off);
- no two nodes overlap at the sizes the frontend gives them (their bounding boxes, title bars
  included);
- every group of the layout spec (workflows/layout/<name>.json) is on the canvas and holds exactly
  the nodes the spec names;
- the prompt the frontend builds (its own graph-to-prompt conversion) equals the API twin, input by
  input, node titles included; the only inputs it may add are the frontend's own display widgets
  that the server does not declare (FRONTEND_ONLY_INPUTS, which never reach a node);
- the workflows that run headless on stand-ins (tests/host/test_workflows.py) are queued through
  the frontend (app.queuePrompt, as the Run button) after an artist's changes made in its widgets
  (the test server's model names, the uploaded image, fewer steps, FluxKontextImageScale bypassed:
  the frontend's prompt then equals test_workflows.adapt_for_tiny_models of the API twin) and must
  finish with images; the layout is checked again once the previews show the results;
- a screenshot of the opening view is saved under the test's temp dir.

The Templates browser test opens the frontend's template dialog on the pack's page (Extensions,
ContextEdit) and reads its cards.

CONTEXTEDIT_WRITE_IMAGES=1 also writes, from the frontend's canvas as each workflow opens (focus
mode: no menus), the Templates browser's card images (workflows/<name>.jpg, tools/make_thumbnails.py)
and the README's screenshot of the main workflow (docs/screenshots/context_aware_edit.jpg).
"""

import importlib
import itertools
import json
import os
import re
import sys
from pathlib import Path

import pytest
from host.test_workflows import (  # noqa: F401 - fixtures are found by name
    HEADLESS_ELSEWHERE,
    adapt_for_tiny_models,
    shipped_names,
    tiny_flux_models,
    tiny_foreign_models,
    tiny_region_models,
    tiny_stream_models,
)
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
UI_FILES = sorted((REPO / "workflows").glob("*.json"))
README_SHOT = REPO / "docs" / "screenshots" / "context_aware_edit.jpg"

# inputs the frontend adds to a core node's prompt that /object_info does not declare (its own
# display widgets: PreviewAny's text box and Markdown toggle); the server never passes them on
FRONTEND_ONLY_INPUTS = {"PreviewAny": {"preview", "previewMode"}}

# model inputs: a value may be a file or folder the test server does not have (the artist's own)
MODEL_INPUTS = {
    "CheckpointLoaderSimple": {"ckpt_name"}, "UNETLoader": {"unet_name"}, "CLIPLoader": {"clip_name"},
    "DualCLIPLoader": {"clip_name1", "clip_name2"}, "VAELoader": {"vae_name"}, "CLIPVisionLoader": {"clip_name"},
    "ContextEditLoadVLM": {"model_name"}, "ContextEditLoadSAM": {"sam_name"},
    "ContextEditLoadRegionPredictor": {"region_predictor", "clip_vision", "text_encoder", "clip_text"},
    "ContextEditImageStream": {"ipadapter"},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOADED = "wf_browser.png"


def is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def widget_inputs(schema):
    order = schema.get("input_order") or {}
    for section in ("required", "optional"):
        for name in order.get(section) or []:
            spec = schema["input"][section][name]
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                yield name, spec


def overlaps(boxes):
    """Pairs of nodes whose boxes share an area (touching edges do not count)."""
    found = []
    for a, b in itertools.combinations(boxes, 2):
        if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]:
            found.append(f"#{a['id']} {a['title']!r} and #{b['id']} {b['title']!r}")
    return found


def prompt_differences(frontend, api):
    """Input-by-input differences between the frontend's prompt and the API twin."""
    diffs = []
    for nid in sorted(set(frontend) | set(api), key=int):
        if nid not in frontend:
            diffs.append(f"node {nid} ({api[nid]['class_type']}): not in the frontend's prompt")
            continue
        if nid not in api:
            diffs.append(f"node {nid} ({frontend[nid]['class_type']}): only in the frontend's prompt")
            continue
        mine, theirs = frontend[nid], api[nid]
        cls = theirs["class_type"]
        if mine["class_type"] != cls:
            diffs.append(f"node {nid}: class {mine['class_type']} in the frontend, {cls} in the API file")
            continue
        title = (theirs.get("_meta") or {}).get("title")
        if title is not None and (mine.get("_meta") or {}).get("title") != title:
            diffs.append(f"node {nid} ({cls}): title {(mine.get('_meta') or {}).get('title')!r} != {title!r}")
        extras = FRONTEND_ONLY_INPUTS.get(cls, set())
        for name in sorted(set(mine["inputs"]) | set(theirs["inputs"])):
            if name not in theirs["inputs"] and name in extras:
                continue
            a, b = mine["inputs"].get(name, "<absent>"), theirs["inputs"].get(name, "<absent>")
            if a != b:
                diffs.append(f"node {nid} ({cls}).{name}: frontend sends {a!r}, API file has {b!r}")
    return diffs


def frontend_widgets(browser):
    """{node id: {"type", "mode", "widgets": [{name, type, value, options}], "saved": serialized widgets_values}}."""
    return browser.js("""
        const out = {};
        for (const n of window.app.graph.nodes) {
          const saved = n.serialize().widgets_values;
          out[String(n.id)] = {type: n.type, saved: saved === undefined ? null : saved,
            widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type,
              value: w.value === undefined ? '<undefined>' : w.value,
              options: Array.isArray(w.options && w.options.values) ? w.options.values : null}))};
        }
        return JSON.parse(JSON.stringify(out));
    """)


def widget_errors(ui, api, info, built):
    """What the frontend got wrong about the file's widgets (see the module docstring), and the
    model values it lists that the test server does not have."""
    errors, absent = [], []
    for node in ui["nodes"]:
        nid = str(node["id"])
        got = built.get(nid)
        if got is None:
            errors.append(f"node {nid} ({node['type']}): not built")
            continue
        if got["type"] != node["type"]:
            errors.append(f"node {nid}: built as {got['type']}, saved as {node['type']}")
            continue
        saved = node.get("widgets_values") or []
        read_back = got["saved"] or []
        if read_back[:len(saved)] != saved or (len(read_back) != len(saved) and node["type"] not in FRONTEND_ONLY_INPUTS):
            errors.append(f"node {nid} ({node['type']}): saved widget values {saved} read back as {read_back}")
        if nid not in api:
            continue  # UI-only (the note)
        widgets = {w["name"]: w for w in got["widgets"]}
        for name, spec in widget_inputs(info[node["type"]]):
            value = api[nid]["inputs"].get(name)
            widget = widgets.get(name)
            if widget is None:
                errors.append(f"node {nid} ({node['type']}): no widget {name!r}")
                continue
            if value is None or is_link(value):
                continue
            if widget["value"] != value:
                errors.append(f"node {nid} ({node['type']}).{name}: widget holds {widget['value']!r}, "
                              f"the API file {value!r}")
            if widget["options"] is not None and widget["value"] not in widget["options"]:
                if name in MODEL_INPUTS.get(node["type"], ()):
                    absent.append(f"{node['type']}.{name}={widget['value']}")
                else:
                    errors.append(f"node {nid} ({node['type']}).{name}: {widget['value']!r} is not one of "
                                  f"its options {widget['options'][:10]}")
    return errors, absent


def group_errors(spec, groups):
    if spec is None:
        return ["no layout spec (workflows/layout/<name>.json): no groups"]
    errors = []
    wanted = {b["title"]: sorted(int(n) for c in b["columns"] for n in c if n != "note")
              for stage in spec["stages"] for b in stage if b.get("title")}
    on_canvas = {g["title"]: sorted(g["nodes"]) for g in groups}
    for title, ids in wanted.items():
        if title not in on_canvas:
            errors.append(f"group {title!r} is not on the canvas")
        elif on_canvas[title] != ids:
            errors.append(f"group {title!r} holds {on_canvas[title]}, the spec names {ids}")
    errors += [f"group {t!r} is not in the spec" for t in on_canvas if t not in wanted]
    return errors


def adapt_in_the_frontend(browser, api, adapted):
    """Make the artist's changes in the frontend's widgets: every literal input that differs between
    the API twin and the adapted graph; a node the adapted graph drops is bypassed (mode 4)."""
    changes = {nid: {k: v for k, v in node["inputs"].items() if not is_link(v) and api[nid]["inputs"].get(k) != v}
               for nid, node in adapted.items()}
    bypass = [nid for nid in api if nid not in adapted]
    browser.js("""
        const [changes, bypass] = arguments;
        for (const [nid, inputs] of Object.entries(changes)) {
          const node = window.app.graph.getNodeById(Number(nid));
          for (const [name, value] of Object.entries(inputs)) {
            const w = node.widgets.find(w => w.name === name);
            if (!w) throw new Error(`node ${nid} has no widget ${name}`);
            w.value = value;
            if (w.callback) w.callback(value);
          }
        }
        for (const nid of bypass) window.app.graph.getNodeById(Number(nid)).mode = 4;
        window.app.graph.setDirtyCanvas(true, true);
    """, changes, bypass)


@pytest.fixture(scope="module")
def uploaded(comfy_server):
    """The picture an artist would pick (LoadImage lists the input folder when the page loads, so
    it is uploaded before the frontend's node definitions are refreshed)."""
    name = comfy_server.upload_image(Image.new("RGB", (128, 96), (120, 160, 200)), name=UPLOADED)
    return name


@pytest.fixture(scope="module")
def workflow_browser(request, browser_session, comfy_server, uploaded):
    """The session browser, its page reloaded once the models and images are in place (the
    frontend reads the model and input lists when the page loads): test_workflows' fixtures put
    the tiny models under the names the workflows use."""
    for name in ("shipped_names", "tiny_foreign_models", "tiny_region_models", "tiny_stream_models",
                 "tiny_flux_models"):
        request.getfixturevalue(name)
    browser_session.reload()
    browser_session.console_errors()
    return browser_session


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_workflow_in_the_frontend(workflow_browser, comfy_server, tiny_checkpoints, uploaded, path, tmp_path):
    """Every check runs and the test fails at the end with all that went wrong; its line says what
    passed."""
    browser, info = workflow_browser, comfy_server.initial_object_info
    ui = json.loads(path.read_text())
    api = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    spec_file = REPO / "workflows" / "layout" / path.name
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else None
    line, problems = [path.stem], []

    def check(name, found, passed):
        if found:
            problems.append(f"{name}:\n  " + "\n  ".join(found))
        else:
            line.append(passed)

    load = browser.load_workflow(ui, path.name)
    errors, absent = widget_errors(ui, api, info, frontend_widgets(browser))
    check("missing node types", load["missing_node_types"], f"loads ({len(ui['nodes'])} nodes)")
    check("widget errors", errors, f"widgets ok (models not on the test server: {len(absent)})")
    view = browser.canvas_view()
    check("zoom", [f"opens at {view['scale']:.2f}, where the frontend draws no text"]
          if browser.js("return window.app.canvas.low_quality") else [], f"zoom {view['scale']:.2f}")
    shot = browser.screenshot(tmp_path / f"{path.stem}.png")
    if os.environ.get("CONTEXTEDIT_WRITE_IMAGES"):
        write_images(path.stem, browser.canvas_screenshot(tmp_path / f"{path.stem}_canvas.png"))
    check("overlapping nodes", overlaps(browser.node_boxes()), "no overlap")
    check("groups", group_errors(spec, browser.groups()), f"{len(browser.groups())} groups hold their nodes")
    check("the frontend's prompt differs from the API twin",
          prompt_differences(browser.graph_to_prompt()["output"], api), "prompt == API twin")
    check("console errors", [e["message"] for e in browser.console_errors()], "no console error")

    if path.name in HEADLESS_ELSEWHERE:
        line.append(f"not queued (no stand-in; {HEADLESS_ELSEWHERE[path.name][0]})")
    else:
        adapted = adapt_for_tiny_models(api, tiny_checkpoints, uploaded)
        adapt_in_the_frontend(browser, api, adapted)
        diffs = prompt_differences(browser.graph_to_prompt()["output"], adapted)
        if diffs:  # what would run is not what test_workflows runs: say so, do not queue
            problems.append("the adapted frontend prompt differs from adapt_for_tiny_models:\n  " + "\n  ".join(diffs))
            pytest.fail(f"{path.stem}:\n" + "\n".join(problems))
        entry = comfy_server.wait(browser.queue(), timeout=600)
        assert comfy_server.output_images(entry), f"{path.name} produced no image"
        browser.js("return new Promise(r => setTimeout(() => requestAnimationFrame(() => r(true)), 500))")
        check("overlapping nodes once the previews show", overlaps(browser.node_boxes()),
              "queued through the frontend, finished")
        browser.screenshot(tmp_path / f"{path.stem}_after_run.png")
        check("console errors after the run", [e["message"] for e in browser.console_errors()], "no console error")
    line.append(f"screenshot {shot.name}")
    print(" | ".join(line))
    assert not problems, f"{path.stem}:\n" + "\n".join(problems)


def write_images(name, canvas_png):
    """The card image of the workflow (and, for the main one, the README's screenshot)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        make_thumbnails = importlib.import_module("make_thumbnails")
    finally:
        sys.path.remove(str(REPO / "tools"))
    make_thumbnails.write_thumbnail(name, canvas_png)
    if name == "context_aware_edit":
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(canvas_png).convert("RGB")
        image.save(README_SHOT, quality=80, optimize=True)


def template_order():
    """TEMPLATE_ORDER of web/js/template_order.js."""
    text = (REPO / "web" / "js" / "template_order.js").read_text()
    block = re.search(r"TEMPLATE_ORDER = \[(.*?)\];", text, re.DOTALL).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_templates_browser_shows_the_main_workflow_first(workflow_browser, tmp_path):
    """The pack's page of the Templates browser (Extensions > ContextEdit, the label its locales give
    the pack's folder): every workflow, the main one first, in the pack's order, each card with its
    thumbnail; titles and descriptions are what the pinned frontend makes of the file name."""
    browser = workflow_browser
    cards = browser.open_templates("ContextEdit")
    browser.screenshot(tmp_path / "templates.png")
    browser.close_dialogs()
    names = [c["name"] for c in cards]
    print("cards: " + "; ".join(f"{c['title']} / {c['description']}" for c in cards))
    assert sorted(names) == sorted(p.stem for p in UI_FILES)
    assert names == template_order() and names[0] == "context_aware_edit"
    assert [c["title"] for c in cards] == names
    assert [c["description"] for c in cards] == [n.replace("_", " ") for n in names]
    assert [c["name"] for c in cards if not c["thumbnail_loaded"]] == []
    assert browser.console_errors() == []
