"""Lay a UI workflow out for people from a declarative spec: titled groups, columns, one note.

tools/api_to_ui.py builds the graph (nodes, links, widget values) from the API file; this module
places it. A spec (workflows/layout/<name>.json) says, left to right, which stages the graph has,
which titled group each node sits in and in which column, and which nodes the opening view frames:

    {
      "note": {"title": "Context-aware edit", "text": "markdown: what it does, how to use it"},
      "stages": [                                   # left to right
        [{"columns": [["note"]]}],                  # a block without a title is not a group
        [{"title": "1. Image and models", "columns": [["2"], ["1", "3", "5"]]}],
        [{"title": "2. Plan", "columns": [["4", "17"]]},   # blocks of a stage stack top to bottom
         {"title": "3. Masks", "columns": [["6", "18"]]}]
      ],
      "sizes": {"4": [420, 300]},                   # optional: at least this size for a node
      "view": ["2", "4", "6"]                       # the main path: what the opening view frames
    }

Every API node id appears exactly once, and "note" (the Markdown note: the spec's text, then the
models the workflow loads with their folders and sources, see workflow_note.py) exactly once.
Node sizes are estimated the way the pinned frontend's LiteGraph computes them (slots, widgets,
image previews) with room to spare; the frontend keeps the larger of the saved and its computed
size, and the browser suite (tests/host/test_browser_workflows.py) checks that no two nodes overlap
at the sizes it draws and that every group holds exactly the nodes it names.

The opening view (``extra.ds``) frames the main path (the groups of the spec's "view" nodes) in a
reference canvas of 1600 x 850 CSS px (the frontend's canvas in a 1600 x 1000 window) less the
margins its sidebar, tabs and toolbars take, anchored at the top left, at a zoom of at least
MIN_SCALE: the frontend stops drawing text below MinFontSizeForLOD / (14 px * sqrt(DPR)), that is
8 / 14 = 0.571 at a device pixel ratio of 1 (LGraphCanvas.updateLowQualityThreshold, setting
LiteGraph.Canvas.MinFontSizeForLOD, default 8).
"""

import json
from pathlib import Path

NOTE = "note"

# LiteGraph's metrics in the pinned frontend (LiteGraphGlobal.ts, LGraphNode.computeSize)
TITLE_H = 30          # NODE_TITLE_HEIGHT: the title bar, above a node's pos
SLOT_H = 20           # NODE_SLOT_HEIGHT: one input/output row
WIDGET_H = 20 + 4     # NODE_WIDGET_HEIGHT + the gap computeSize adds per widget
MULTILINE_H = 80 + 4  # a multiline text box (the DOM widget's minimum is 50; more room to read)
IMAGE_H = 220 + 4     # the image preview widget's minimum height (useImagePreviewWidget)
OUTPUT_IMAGE_H = 260  # room for the images an output node shows after a run
GROUP_TITLE_H = 34    # LGraphGroup.titleHeight = font_size 24 * 1.4
CHAR_W = 7.4          # the title font (14 px sans-serif), wider than its average glyph

# the frontend's own widgets on a core node that /object_info does not declare
FRONTEND_WIDGET_H = {"PreviewAny": MULTILINE_H + WIDGET_H + 120}  # its text box and Markdown toggle
# the pack's own canvas widgets (web/js): Decode Masks' mask view appears after a run (its DOM
# widget's minimum height, 240, plus room for the frame); Review Plan's editor is there from the start
FRONTEND_WIDGET_H.update({"ContextEditDecodeMasks": 240 + 40})
MIN_SIZE = {"ContextEditReviewPlan": (440, 520)}  # what web/js/review_plan.js sizes a new node to

MIN_NODE_W = 300
NOTE_W = 440
PAD = 20              # inside a group, around its nodes
NODE_GAP = 30         # between nodes in a column (below the title bar of the next)
COL_GAP = 40
BLOCK_GAP = 50
STAGE_GAP = 70

VIEW_W, VIEW_H = 1600, 850
VIEW_MARGIN = (80, 100, 60, 60)  # left (the sidebar), top (tabs, workflow name), right, bottom
MIN_SCALE, MAX_SCALE = 0.7, 1.0

GROUP_COLOR = "#3f789e"  # the frontend's default group colour
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}  # what the frontend gives a new note (yellow)


class LayoutError(ValueError):
    """The spec does not match the workflow."""


def spec_path(workflows_dir, name):
    return Path(workflows_dir) / "layout" / f"{Path(name).stem}.json"


def load_spec(path):
    return json.loads(Path(path).read_text())


def _ordered_inputs(schema):
    order = schema.get("input_order") or {}
    for section in ("required", "optional"):
        for name in order.get(section) or list((schema.get("input") or {}).get(section, {})):
            yield name, schema["input"][section][name]


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec):
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def has_control_widget(name, spec):
    """Whether the frontend adds a "control after generate" widget after this input: when the input
    asks for one, or, when it says nothing, for INT inputs named seed / noise_seed
    (useIntWidget.ts)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    flag = options.get("control_after_generate")
    if flag is not None:
        return bool(flag)
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def estimate_size(class_type, schema, title):
    """(width, height) of a node body, at least what the pinned frontend computes for it."""
    rows_in, widgets_h, n_widgets = 0, 0, 0
    for name, spec in _ordered_inputs(schema):
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if not is_widget(spec):
            rows_in += 1
            continue
        n_widgets += 1
        widgets_h += MULTILINE_H if spec[0] == "STRING" and options.get("multiline") else WIDGET_H
        if has_control_widget(name, spec):
            widgets_h += WIDGET_H
        if options.get("image_upload"):
            widgets_h += WIDGET_H + IMAGE_H
    rows = max(rows_in, len(schema.get("output") or []), 1)
    height = rows * SLOT_H + widgets_h + (8 if n_widgets else 0) + 6
    height += FRONTEND_WIDGET_H.get(class_type, 0)
    takes_images = any(not is_widget(spec) and spec[0] == "IMAGE" for _, spec in _ordered_inputs(schema))
    if schema.get("output_node") and takes_images:
        height += OUTPUT_IMAGE_H
    width = max(MIN_NODE_W, 45 + CHAR_W * len(title or ""))
    min_w, min_h = MIN_SIZE.get(class_type, (0, 0))
    return [round(max(width, min_w)), round(max(height, min_h))]


def note_size(text):
    """A Markdown note tall enough for its text: the frontend draws it at about 11 px (14 px a
    line, some 80 characters to a line at this width), headings larger."""
    height = 60
    for line in text.splitlines():
        if line.startswith("#"):
            height += 28
        elif not line.strip():
            height += 6
        else:
            height += 14 * (1 + len(line) // 80)
    return [NOTE_W, max(200, height)]


def check_spec(spec, api):
    """Every API node exactly once, the note exactly once, the view's nodes placed."""
    placed = [nid for stage in spec["stages"] for block in stage for col in block["columns"] for nid in col]
    dupes = sorted({n for n in placed if placed.count(n) > 1})
    if dupes:
        raise LayoutError(f"placed more than once: {dupes}")
    missing = sorted(set(api) - set(placed), key=int)
    if missing:
        raise LayoutError(f"API nodes the layout does not place: {missing} "
                          f"({', '.join(api[n]['class_type'] for n in missing)}): add them to a column")
    unknown = sorted(set(placed) - set(api) - {NOTE})
    if unknown:
        raise LayoutError(f"the layout places nodes the API file does not have: {unknown}")
    if placed.count(NOTE) != 1:
        raise LayoutError('the layout must place the note ("note") exactly once')
    for nid in spec.get("view") or []:
        if nid not in placed:
            raise LayoutError(f"view frames node {nid}, which is not placed")
    for nid in spec.get("sizes") or {}:
        if nid not in placed:
            raise LayoutError(f"sizes names node {nid}, which is not placed")


def arrange(spec, sizes):
    """Positions for every placed id and the groups' boxes.

    ``sizes``: {id: [w, h]} body sizes (without the title bar). Returns ({id: [x, y]} node pos
    (the body's top left, as LiteGraph stores it), {id: [w, h]} final sizes, [group dicts])."""
    pos, final, groups = {}, {}, []
    x = 0
    for stage in spec["stages"]:
        y = 0
        stage_w = 0
        laid = []
        for block in stage:
            inner_x = PAD if block.get("title") else 0
            inner_y = (GROUP_TITLE_H + PAD) if block.get("title") else 0
            cx, block_h = inner_x, 0
            for column in block["columns"]:
                col_w = max(sizes[nid][0] for nid in column)
                cy = inner_y
                for nid in column:
                    w, h = col_w, sizes[nid][1]
                    pos[nid] = [x + cx, y + cy + TITLE_H]
                    final[nid] = [w, h]
                    cy += TITLE_H + h + NODE_GAP
                cx += col_w + COL_GAP
                block_h = max(block_h, cy - NODE_GAP)
            block_w = cx - COL_GAP + (PAD if block.get("title") else 0)
            block_h += PAD if block.get("title") else 0
            laid.append((block, y, block_w, block_h))
            stage_w = max(stage_w, block_w)
            y += block_h + BLOCK_GAP
        for block, by, bw, bh in laid:
            if block.get("title"):
                ids = [nid for col in block["columns"] for nid in col]
                groups.append({"title": block["title"], "bounding": [x, by, stage_w, bh],
                               "color": block.get("color", GROUP_COLOR), "font_size": 24, "flags": {},
                               "nodes": ids})
        x += stage_w + STAGE_GAP
    return pos, final, groups


def view_for(spec, pos, final, groups=()):
    """extra.ds: the main path's box (the groups holding the spec's view nodes, or the nodes
    themselves) anchored at the top left of the reference canvas, zoomed to fit within
    [MIN_SCALE, MAX_SCALE]."""
    boxes = []
    for nid in spec.get("view") or list(pos):
        group = next((g for g in groups if nid in g["nodes"]), None)
        if group is not None:
            x, y, w, h = group["bounding"]
            boxes.append((x, y, x + w, y + h))
        else:
            boxes.append((pos[nid][0], pos[nid][1] - TITLE_H, pos[nid][0] + final[nid][0], pos[nid][1] + final[nid][1]))
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    left, top, right, bottom = VIEW_MARGIN
    fit = min((VIEW_W - left - right) / (x1 - x0), (VIEW_H - top - bottom) / (y1 - y0))
    scale = round(min(MAX_SCALE, max(MIN_SCALE, fit)), 3)
    offset = [round(left / scale - x0, 1), round(top / scale - y0, 1)]
    return {"scale": scale, "offset": offset}
