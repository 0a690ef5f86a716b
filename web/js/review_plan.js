// ContextEdit Review Plan: the edit plan on the image, editable in the node.
//
// The node's UI output (nodes/review/canvas.py) brings, per image, the preview file, the plan the
// model made ("model_plan"), the plan after the stored corrections ("plan"), the image
// fingerprint and each instruction's colour. The editor draws the image with every
// instruction's boxes ([MASK] solid in its colour, [NEG] dashed grey, numbered labels, the
// reason on hover) and lets the artist move / resize / add / delete boxes, flip [MASK]/[NEG]
// and edit the resolved text. Every edit is written into the node's `corrections` widget as
// plain JSON keyed by image fingerprint + instruction number + instruction text (the format
// nodes/review/corrections.py reads), so it is saved with the workflow, survives a reload and
// goes into the API prompt; the next run re-runs this node and what follows only.
//
// What is shown = the model's plan + the stored corrections that fit (the same keys the node
// uses); the server's answer after a run is authoritative and lists what it dropped.

import { app } from "../../../scripts/app.js";
import {
  MASK_CHIP, NEG_CHIP, NEG_STROKE, canvasToClient, drawChip, drawTooltip, eventToCanvas, fitRect,
  installStyle, markGraphChanged, showViewImage, syncCanvasSize, truncate,
} from "./plan_canvas.js";

const NODE_TYPE = "ContextEditReviewPlan";
const MESSAGE_KEY = "contextedit_review";
const WIDGET = "corrections";
const SCHEMA = "contextedit.plan_corrections";
const HANDLE_PX = 7; // how near (CSS px) a pointer must be to grab a corner
const MIN_BOX_PX = 1; // smallest box side, image pixels

const token = (executable) => (executable ? "[MASK]" : "[NEG]");

function roundBox(box, width, height) {
  let [x1, y1, x2, y2] = box.map((v) => Math.round(v));
  x1 = Math.min(Math.max(x1, 0), width - MIN_BOX_PX);
  y1 = Math.min(Math.max(y1, 0), height - MIN_BOX_PX);
  x2 = Math.max(Math.min(x2, width), x1 + MIN_BOX_PX);
  y2 = Math.max(Math.min(y2, height), y1 + MIN_BOX_PX);
  return [x1, y1, x2, y2];
}

function sameBoxes(a, b) {
  a = a || [];
  b = b || [];
  return a.length === b.length && a.every((box, i) => box.every((v, j) => Math.abs(v - b[i][j]) < 1e-6));
}

/** The corrections widget's JSON as {ok, data: {schema, version, images: [...]}} or {ok: false, error}. */
function parseCorrections(text) {
  if (!text || !String(text).trim()) return { ok: true, data: { schema: SCHEMA, version: 1, images: [] } };
  try {
    const raw = JSON.parse(text);
    if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new Error("it is not a JSON object");
    if ("items" in raw || "image" in raw) return { ok: true, data: { schema: SCHEMA, version: 1, images: [raw] } };
    return { ok: true, data: { schema: SCHEMA, version: 1, images: Array.isArray(raw.images) ? raw.images : [] } };
  } catch (error) {
    return { ok: false, error: String(error.message || error) };
  }
}

/** The entry that applies to an image: its own fingerprint's, else the fingerprint-free one. */
function entryFor(data, fingerprint) {
  return data.images.find((e) => e && e.image === fingerprint) || data.images.find((e) => e && !e.image) || null;
}

/** The model's items with the fitting corrections applied (number AND text must match). */
function deriveItems(modelItems, entry) {
  const items = modelItems.map((it) => ({ ...it, boxes: (it.boxes || []).map((b) => b.slice()) }));
  const touched = new Set();
  for (const c of entry && Array.isArray(entry.items) ? entry.items : []) {
    const item = items[c.number - 1];
    if (!item || item.instruction !== c.instruction) continue;
    if (typeof c.executable === "boolean") item.executable = c.executable;
    if (typeof c.resolved === "string") item.resolved = c.resolved.trim() ? c.resolved : item.instruction;
    if (Array.isArray(c.boxes)) item.boxes = c.boxes.map((b) => b.slice());
    touched.add(c.number);
  }
  return { items, touched };
}

class PlanEditor {
  constructor(node) {
    this.node = node;
    this.entries = []; // the node's UI message: one entry per image
    this.index = 0; // the image shown
    this.image = null;
    this.imageKey = null;
    this.items = [];
    this.touched = new Set();
    this.selected = null; // {number, box} (box -1: the instruction, no box)
    this.adding = false;
    this.drag = null;
    this.hover = null;
    this.drawn = [];
    this.problem = null;
    this.received = 0; // UI messages received (tests wait for the next one)
    this.build();
  }

  get widget() {
    return this.node.widgets?.find((w) => w.name === WIDGET);
  }

  get entry() {
    return this.entries[this.index] || null;
  }

  // ------------------------------------------------------------------ DOM
  build() {
    installStyle();
    const el = (tag, cls, text) => {
      const e = document.createElement(tag);
      if (cls) e.className = cls;
      if (text !== undefined) e.textContent = text;
      return e;
    };
    this.root = el("div", "contextedit-view contextedit-plan-editor");
    const bar = el("div", "contextedit-toolbar");
    this.prevButton = el("button", "", "\u25c0");
    this.pageLabel = el("span", "contextedit-page");
    this.nextButton = el("button", "", "\u25b6");
    this.addButton = el("button", "contextedit-add", "+ Box");
    this.addButton.title = "Draw a new box for the selected instruction (drag on the image)";
    this.deleteButton = el("button", "contextedit-delete", "Delete box");
    this.deleteButton.title = "Delete the selected box (or press Delete)";
    this.resetButton = el("button", "contextedit-reset", "Reset");
    this.resetButton.title = "Forget your corrections on this image: back to the model's plan";
    this.clearButton = el("button", "contextedit-clear", "Clear dropped");
    this.clearButton.title = "Remove stored corrections that no longer fit this image or these instructions";
    this.status = el("span", "contextedit-status");
    bar.append(this.prevButton, this.pageLabel, this.nextButton, this.addButton, this.deleteButton,
      this.resetButton, this.clearButton, this.status);
    this.canvas = el("canvas");
    this.canvas.tabIndex = 0;
    this.rows = el("div", "contextedit-rows");
    this.notes = el("div", "contextedit-notes");
    this.root.append(bar, this.canvas, this.rows, this.notes);

    // keys typed in the editor are the editor's (the graph would read Delete as "delete the node",
    // Ctrl+A as "select every node"); Ctrl/Cmd+Enter still queues the workflow
    this.root.addEventListener("keydown", (e) => {
      if (!((e.ctrlKey || e.metaKey) && e.key === "Enter")) e.stopPropagation();
    });
    this.prevButton.addEventListener("click", () => this.showImage(this.index - 1));
    this.nextButton.addEventListener("click", () => this.showImage(this.index + 1));
    this.addButton.addEventListener("click", () => {
      this.adding = !this.adding && !!this.selected;
      if (!this.selected) this.say("Select an instruction first (click its row), then drag on the image.");
      this.renderSelection();
    });
    this.deleteButton.addEventListener("click", () => this.deleteSelectedBox());
    this.resetButton.addEventListener("click", () => this.resetImage());
    this.clearButton.addEventListener("click", () => this.clearDropped());
    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("pointercancel", () => { this.drag = null; this.draw(); });
    this.canvas.addEventListener("pointerleave", () => { if (!this.drag) { this.hover = null; this.draw(); } });
    this.canvas.addEventListener("keydown", (e) => this.onKey(e));
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);
  }

  destroy() {
    this.resizeObserver?.disconnect();
  }

  say(text) {
    this.hint = text;
    this.renderStatus();
  }

  // ------------------------------------------------------------------ data
  setMessage(entries) {
    this.received += 1;
    this.entries = Array.isArray(entries) ? entries : [];
    this.showImage(Math.min(this.index, Math.max(0, this.entries.length - 1)));
  }

  showImage(index) {
    if (!this.entries.length) return this.refresh();
    index = (index + this.entries.length) % this.entries.length;
    if (index !== this.index) {
      this.selected = null;
      this.adding = false;
    }
    this.index = index;
    showViewImage(this, this.entry.image, (message) => this.say(message));
    this.refresh();
  }

  /** Re-read the corrections widget and redraw everything (after any change). */
  refresh() {
    const parsed = parseCorrections(this.widget?.value);
    this.problem = parsed.ok ? null : `The corrections text is not valid JSON (${parsed.error}): fix it or clear it; edits are paused.`;
    this.corrections = parsed.ok ? parsed.data : null;
    const entry = this.entry;
    if (entry) {
      const applying = this.corrections ? entryFor(this.corrections, entry.fingerprint) : null;
      const { items, touched } = deriveItems(entry.model_plan.items, applying);
      this.items = items;
      this.touched = touched;
      if (this.selected && !this.items[this.selected.number - 1]) this.selected = null;
    } else {
      this.items = [];
      this.touched = new Set();
    }
    this.render();
  }

  render() {
    this.renderRows();
    this.renderStatus();
    this.renderNotes();
    this.draw();
  }

  /** After a selection change only: keep the rows (a focused text field stays focused). */
  renderSelection() {
    for (const row of this.rows.children) {
      row.classList.toggle("selected", !!this.selected && row.dataset.number === String(this.selected.number));
    }
    this.renderStatus();
    this.draw();
  }

  renderStatus() {
    const many = this.entries.length > 1;
    for (const b of [this.prevButton, this.nextButton, this.pageLabel]) b.style.display = many ? "" : "none";
    this.pageLabel.textContent = many ? `image ${this.index + 1}/${this.entries.length}` : "";
    this.addButton.classList.toggle("on", this.adding);
    const hasBox = this.selected && this.selected.box >= 0;
    this.deleteButton.disabled = !hasBox;
    this.clearButton.style.display = this.staleCount() ? "" : "none";
    if (!this.entry) {
      const stored = this.corrections ? this.corrections.images.reduce((n, e) => n + (e.items || []).length, 0) : 0;
      this.status.textContent = `Run the workflow to review the plan on the image${stored ? ` (${stored} correction(s) stored)` : ""}.`;
      return;
    }
    const n = this.items.length;
    const masks = this.items.filter((it) => it.executable).length;
    this.status.textContent = this.hint || `${n} instruction(s), ${masks} [MASK], ${this.touched.size} corrected`;
    this.hint = null;
  }

  renderNotes() {
    const lines = [];
    if (this.problem) lines.push(this.problem);
    const entry = this.entry;
    if (entry && entry.dropped && entry.dropped.length) {
      lines.push("Dropped on the last run (they no longer fit):", ...entry.dropped.map((d) => `\u2022 ${d}`));
    }
    if (!entry && this.corrections) {
      for (const e of this.corrections.images) {
        for (const c of e.items || []) lines.push(`\u2022 stored: instruction ${c.number} (${truncate(c.instruction, 40)})${e.image ? ` on image ${e.image}` : ""}`);
      }
    }
    this.notes.textContent = lines.join("\n");
  }

  renderRows() {
    this.rows.replaceChildren();
    const entry = this.entry;
    if (!entry) return;
    this.items.forEach((item, i) => {
      const number = i + 1;
      const row = document.createElement("div");
      row.className = "contextedit-row" + (this.selected && this.selected.number === number ? " selected" : "");
      row.dataset.number = String(number);
      row.title = `${number}. ${token(item.executable)} ${item.instruction}\nreason: ${item.reason || "(no reason given)"}`;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry.colours[i] || "#888";
      swatch.textContent = String(number);
      const flip = document.createElement("button");
      flip.className = "token";
      flip.textContent = token(item.executable);
      flip.style.background = item.executable ? MASK_CHIP : NEG_CHIP;
      flip.title = "Flip between [MASK] (edit it) and [NEG] (leave it alone)";
      flip.addEventListener("click", (e) => {
        e.stopPropagation();
        this.update(number, (it) => { it.executable = !it.executable; });
      });
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = item.instruction + (this.touched.has(number) ? " \u270e" : "");
      const resolved = document.createElement("input");
      resolved.className = "resolved";
      resolved.value = item.resolved || item.instruction;
      resolved.title = "The explicit instruction editing uses (the model's reading of your words); edit it to correct it";
      resolved.addEventListener("pointerdown", (e) => e.stopPropagation());
      resolved.addEventListener("change", () => this.update(number, (it) => { it.resolved = resolved.value; }));
      const reset = document.createElement("button");
      reset.textContent = "\u21ba";
      reset.title = "Undo your corrections of this instruction";
      reset.disabled = !this.touched.has(number);
      reset.addEventListener("click", (e) => {
        e.stopPropagation();
        this.update(number, (it, model) => Object.assign(it, { ...model, boxes: (model.boxes || []).map((b) => b.slice()) }));
      });
      row.append(swatch, flip, text, resolved, reset);
      row.addEventListener("click", (e) => {
        if (e.target.closest("input, button")) return;
        this.selected = { number, box: item.boxes.length ? 0 : -1 };
        this.renderSelection();
      });
      this.rows.append(row);
    });
  }

  // ------------------------------------------------------------------ corrections
  /** Change one instruction (``change(item, modelItem)``) and store the result as its correction. */
  update(number, change) {
    const entry = this.entry;
    if (!entry || !this.corrections) return this.render();
    const item = { ...this.items[number - 1], boxes: this.items[number - 1].boxes.map((b) => b.slice()) };
    const model = entry.model_plan.items[number - 1];
    change(item, model);
    const data = this.corrections;
    let target = entryFor(data, entry.fingerprint);
    if (!target) {
      target = { image: entry.fingerprint, items: [] };
      data.images.push(target);
    }
    const [pw, ph] = entry.plan_size;
    const correction = { number, instruction: model.instruction };
    if (item.executable !== model.executable) correction.executable = item.executable;
    const resolved = (item.resolved || "").trim() ? item.resolved : model.instruction;
    if (resolved !== (model.resolved || model.instruction)) correction.resolved = resolved;
    // boxes the artist touched snap to whole pixels; untouched ones stay exactly as the model gave them
    const boxes = item.boxes.map((b, i) => (model.boxes?.[i] && sameBoxes([b], [model.boxes[i]]) ? b : roundBox(b, pw, ph)));
    if (!sameBoxes(boxes, model.boxes)) correction.boxes = boxes;
    target.items = (target.items || []).filter((c) => c.number !== number);
    if (Object.keys(correction).length > 2) target.items.push(correction);
    target.items.sort((a, b) => a.number - b.number);
    data.images = data.images.filter((e) => e.items && e.items.length);
    this.write(data);
  }

  write(data) {
    const widget = this.widget;
    if (!widget) return;
    const text = data.images.length ? JSON.stringify({ schema: SCHEMA, version: 1, images: data.images }) : "";
    widget.value = text;
    this.refresh();
    this.node.setDirtyCanvas?.(true, true);
    markGraphChanged(app);
  }

  resetImage() {
    if (!this.entry || !this.corrections) return;
    const data = this.corrections;
    const target = entryFor(data, this.entry.fingerprint);
    data.images = data.images.filter((e) => e !== target);
    this.selected = null;
    this.write(data);
  }

  /** Stored corrections that cannot apply here: other fingerprints, or a number/text that no longer matches. */
  staleCount() {
    if (!this.corrections || !this.entries.length) return 0;
    const fingerprints = new Set(this.entries.map((e) => e.fingerprint));
    let count = 0;
    for (const e of this.corrections.images) {
      const entry = this.entries.find((x) => x.fingerprint === e.image) || (!e.image ? this.entry : null);
      for (const c of e.items || []) {
        if (e.image && !fingerprints.has(e.image)) count += 1;
        else if (entry && entry.model_plan.items[c.number - 1]?.instruction !== c.instruction) count += 1;
      }
    }
    return count;
  }

  clearDropped() {
    if (!this.corrections) return;
    const fingerprints = new Set(this.entries.map((e) => e.fingerprint));
    const data = this.corrections;
    data.images = data.images.filter((e) => !e.image || fingerprints.has(e.image));
    for (const e of data.images) {
      const entry = this.entries.find((x) => x.fingerprint === e.image) || this.entry;
      e.items = (e.items || []).filter((c) => entry.model_plan.items[c.number - 1]?.instruction === c.instruction);
    }
    data.images = data.images.filter((e) => e.items.length);
    this.write(data);
  }

  deleteSelectedBox() {
    const sel = this.selected;
    if (!sel || sel.box < 0) return;
    this.selected = { number: sel.number, box: -1 };
    this.update(sel.number, (it) => { it.boxes.splice(sel.box, 1); });
  }

  // ------------------------------------------------------------------ geometry
  layout() {
    const { w, h, dpr } = syncCanvasSize(this.canvas);
    const entry = this.entry;
    const [pw, ph] = entry ? entry.plan_size : [1, 1];
    this.view = { w, h, dpr, pw, ph, ...fitRect(pw, ph, w, h) };
    return this.view;
  }

  toImage(p) {
    const v = this.view;
    return { x: (p.x - v.x) / v.s, y: (p.y - v.y) / v.s };
  }

  toCanvas(x, y) {
    const v = this.view;
    return { x: v.x + x * v.s, y: v.y + y * v.s };
  }

  /** Client (viewport) pixels of an image point: where a pointer must go to touch it. */
  imageToClient(x, y) {
    this.layout();
    const c = this.toCanvas(x, y);
    return canvasToClient(this.canvas, c.x, c.y);
  }

  hitTest(p) {
    const tol = HANDLE_PX / this.view.s;
    const sel = this.selected;
    if (sel && sel.box >= 0) {
      const b = this.items[sel.number - 1]?.boxes[sel.box];
      if (b) {
        const corners = { nw: [b[0], b[1]], ne: [b[2], b[1]], sw: [b[0], b[3]], se: [b[2], b[3]] };
        for (const [corner, [x, y]] of Object.entries(corners)) {
          if (Math.abs(p.x - x) <= tol && Math.abs(p.y - y) <= tol) return { number: sel.number, box: sel.box, corner };
        }
      }
    }
    const order = this.items.map((_, i) => i + 1).reverse();
    if (sel) order.sort((a, b) => (b === sel.number) - (a === sel.number));
    for (const number of order) {
      const boxes = this.items[number - 1].boxes;
      for (let k = boxes.length - 1; k >= 0; k -= 1) {
        const [x1, y1, x2, y2] = boxes[k];
        if (p.x >= x1 - tol && p.x <= x2 + tol && p.y >= y1 - tol && p.y <= y2 + tol) return { number, box: k, corner: null };
      }
    }
    return null;
  }

  clampPoint(p) {
    return { x: Math.min(Math.max(p.x, 0), this.view.pw), y: Math.min(Math.max(p.y, 0), this.view.ph) };
  }

  // ------------------------------------------------------------------ pointer
  onPointerDown(e) {
    if (e.button !== 0 || !this.entry) return;
    e.preventDefault();
    e.stopPropagation();
    this.canvas.focus({ preventScroll: true });
    if (!this.corrections) return this.say("Fix or clear the corrections text first.");
    this.layout();
    const p = this.toImage(eventToCanvas(this.canvas, e));
    this.canvas.setPointerCapture?.(e.pointerId);
    if (this.adding && this.selected) {
      const start = this.clampPoint(p);
      this.drag = { kind: "create", number: this.selected.number, start, box: [start.x, start.y, start.x, start.y] };
      return this.draw();
    }
    const hit = this.hitTest(p);
    if (!hit) {
      this.selected = null;
      return this.renderSelection();
    }
    this.selected = { number: hit.number, box: hit.box };
    const box = this.items[hit.number - 1].boxes[hit.box].slice();
    this.drag = { kind: hit.corner ? "resize" : "move", corner: hit.corner, number: hit.number, index: hit.box, start: p, orig: box, box, moved: false };
    this.renderSelection();
  }

  onPointerMove(e) {
    if (!this.entry) return;
    this.layout();
    const p = this.toImage(eventToCanvas(this.canvas, e));
    if (!this.drag) {
      const hit = this.hitTest(p);
      this.hover = hit ? { ...hit, at: eventToCanvas(this.canvas, e) } : null;
      this.canvas.style.cursor = hit ? (hit.corner ? "nwse-resize" : "move") : this.adding ? "crosshair" : "default";
      this.canvas.title = hit ? this.describe(hit.number, hit.box).join("\n") : "";
      return this.draw();
    }
    e.preventDefault();
    e.stopPropagation();
    this.dragTo(p);
    this.draw();
  }

  dragTo(p) {
    const d = this.drag;
    const { pw, ph } = this.view;
    if (d.kind === "create") {
      const q = this.clampPoint(p);
      d.box = [Math.min(d.start.x, q.x), Math.min(d.start.y, q.y), Math.max(d.start.x, q.x), Math.max(d.start.y, q.y)];
    } else if (d.kind === "move") {
      const [x1, y1, x2, y2] = d.orig;
      const dx = Math.min(Math.max(p.x - d.start.x, -x1), pw - x2);
      const dy = Math.min(Math.max(p.y - d.start.y, -y1), ph - y2);
      d.box = [x1 + dx, y1 + dy, x2 + dx, y2 + dy];
      d.moved = d.moved || Math.abs(dx) > 0 || Math.abs(dy) > 0;
    } else {
      const q = this.clampPoint(p);
      let [x1, y1, x2, y2] = d.orig;
      if (d.corner.includes("w")) x1 = q.x; else x2 = q.x;
      if (d.corner.includes("n")) y1 = q.y; else y2 = q.y;
      d.box = [Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)];
      d.moved = true;
    }
  }

  onPointerUp(e) {
    const d = this.drag;
    if (!d) return;
    e.preventDefault();
    e.stopPropagation();
    this.canvas.releasePointerCapture?.(e.pointerId);
    this.layout();
    this.dragTo(this.toImage(eventToCanvas(this.canvas, e)));
    this.drag = null;
    const [x1, y1, x2, y2] = d.box;
    if (d.kind === "create") {
      this.adding = false;
      if (x2 - x1 < 2 * MIN_BOX_PX || y2 - y1 < 2 * MIN_BOX_PX) return this.renderSelection();
      const count = this.items[d.number - 1].boxes.length;
      this.selected = { number: d.number, box: count };
      return this.update(d.number, (it) => { it.boxes.push(d.box); });
    }
    if (!d.moved) return this.renderSelection();
    this.update(d.number, (it) => { it.boxes[d.index] = d.box; });
  }

  onKey(e) {
    if (e.key === "Delete" || e.key === "Backspace") {
      e.preventDefault();
      e.stopPropagation();
      this.deleteSelectedBox();
    } else if (e.key === "Escape") {
      e.stopPropagation();
      this.adding = false;
      this.selected = null;
      this.renderSelection();
    }
  }

  // ------------------------------------------------------------------ drawing
  describe(number, boxIndex) {
    const item = this.items[number - 1];
    const lines = [`${number}. ${token(item.executable)} ${item.instruction}`];
    if (item.resolved && item.resolved !== item.instruction) lines.push(`\u2192 ${item.resolved}`);
    lines.push(`reason: ${item.reason || "(no reason given)"}`);
    if (this.touched.has(number)) lines.push("corrected by you (stored in 'corrections')");
    const box = item.boxes[boxIndex];
    if (box) lines.push(`box: [${box.map((v) => Math.round(v)).join(", ")}]`);
    return lines;
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const v = this.layout();
    ctx.setTransform(v.dpr, 0, 0, v.dpr, 0, 0);
    ctx.clearRect(0, 0, v.w, v.h);
    this.drawn = [];
    const entry = this.entry;
    if (!entry) {
      ctx.fillStyle = "#999";
      ctx.font = "12px sans-serif";
      ctx.fillText("Run the workflow: the plan appears here on the image.", 10, 22);
      return;
    }
    if (this.image) ctx.drawImage(this.image, v.x, v.y, v.pw * v.s, v.ph * v.s);
    else {
      ctx.fillStyle = "#333";
      ctx.fillRect(v.x, v.y, v.pw * v.s, v.ph * v.s);
    }
    const sel = this.selected;
    const order = this.items.map((_, i) => i + 1);
    if (sel) order.sort((a, b) => (a === sel.number) - (b === sel.number));
    for (const number of order) this.drawItem(ctx, number, entry.colours[number - 1] || "#ffffff");
    if (this.drag && this.drag.kind === "create") this.drawBox(ctx, this.drag.box, entry.colours[this.drag.number - 1], true, 0.1);
    if (sel && sel.box >= 0) {
      const b = this.boxesOf(sel.number)[sel.box];
      if (b) this.drawHandles(ctx, b);
    }
    if (this.hover && !this.drag) drawTooltip(ctx, this.hover.at.x, this.hover.at.y, this.describe(this.hover.number, this.hover.box), v.w, v.h);
  }

  boxesOf(number) {
    const d = this.drag;
    const boxes = this.items[number - 1].boxes.map((b) => b.slice());
    if (d && d.kind !== "create" && d.number === number) boxes[d.index] = d.box;
    return boxes;
  }

  drawBox(ctx, box, colour, executable, fill) {
    const a = this.toCanvas(box[0], box[1]);
    const c = this.toCanvas(box[2], box[3]);
    ctx.save();
    if (executable) {
      ctx.fillStyle = colour;
      ctx.globalAlpha = fill;
      ctx.fillRect(a.x, a.y, c.x - a.x, c.y - a.y);
      ctx.globalAlpha = 1;
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.strokeRect(a.x, a.y, c.x - a.x, c.y - a.y);
    } else {
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.6)";
      ctx.strokeRect(a.x, a.y, c.x - a.x, c.y - a.y);
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 2;
      ctx.strokeStyle = NEG_STROKE;
      ctx.strokeRect(a.x, a.y, c.x - a.x, c.y - a.y);
    }
    ctx.restore();
    return { a, c };
  }

  drawItem(ctx, number, colour) {
    const item = this.items[number - 1];
    const v = this.view;
    const label = `${number} ${token(item.executable)} ${truncate(item.resolved || item.instruction, 32)}`;
    const chip = item.executable ? colour : NEG_CHIP;
    const boxes = this.boxesOf(number);
    if (!boxes.length) {
      if (!item.executable) return;
      // an executable instruction without a box edits the whole image
      ctx.save();
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      const inset = 2 + 3 * (number - 1);
      ctx.strokeRect(v.x + inset, v.y + inset, v.pw * v.s - 2 * inset, v.ph * v.s - 2 * inset);
      ctx.restore();
      drawChip(ctx, v.x + 4, v.y + v.ph * v.s - 19 - 16 * (number - 1), `${label} (whole image)`, chip);
      this.drawn.push({ number, box: null, whole: true, executable: true });
      return;
    }
    boxes.forEach((box, k) => {
      const { a, c } = this.drawBox(ctx, box, colour, item.executable, 0.16);
      const top = a.y - 16 >= v.y ? a.y - 16 : a.y + 1;
      drawChip(ctx, a.x, top, label, chip, "#fff", v.w - 2);
      const tl = canvasToClient(this.canvas, a.x, a.y);
      const br = canvasToClient(this.canvas, c.x, c.y);
      this.drawn.push({ number, index: k, executable: item.executable, colour, box: box.slice(),
        canvas: [a.x, a.y, c.x, c.y], client: [tl.x, tl.y, br.x, br.y] });
    });
  }

  drawHandles(ctx, box) {
    ctx.save();
    ctx.fillStyle = "#ffffff";
    ctx.strokeStyle = "#000000";
    for (const [x, y] of [[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]]) {
      const p = this.toCanvas(x, y);
      ctx.fillRect(p.x - 4, p.y - 4, 8, 8);
      ctx.strokeRect(p.x - 4, p.y - 4, 8, 8);
    }
    ctx.restore();
  }

  /** Everything a test (or a curious artist, from the console) may want to read back. */
  snapshot() {
    const rect = this.canvas.getBoundingClientRect();
    const entry = this.entry;
    return {
      ready: !!(entry && this.image),
      index: this.index,
      images: this.entries.length,
      fingerprint: entry ? entry.fingerprint : null,
      planSize: entry ? entry.plan_size : null,
      items: this.items.map((it) => ({ instruction: it.instruction, resolved: it.resolved, executable: it.executable, reason: it.reason, boxes: it.boxes })),
      touched: [...this.touched],
      drawn: this.drawn,
      selected: this.selected,
      adding: this.adding,
      corrections: this.widget ? this.widget.value : null,
      notes: this.notes.textContent,
      status: this.status.textContent,
      canvas: { left: rect.left, top: rect.top, width: rect.width, height: rect.height, cssWidth: this.canvas.clientWidth, cssHeight: this.canvas.clientHeight },
    };
  }
}

app.registerExtension({
  name: "ContextEdit.ReviewPlan",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const editor = new PlanEditor(this);
      this.contexteditEditor = editor;
      const widget = this.addDOMWidget("plan_editor", "contextedit_plan_editor", editor.root, {
        serialize: false, // the editor's state lives in the corrections widget
        getMinHeight: () => 300,
      });
      widget.serialize = false;
      const corrections = this.widgets?.find((w) => w.name === WIDGET);
      if (corrections) {
        const callback = corrections.callback;
        corrections.callback = function () {
          const r = callback?.apply(this, arguments);
          editor.refresh();
          return r;
        };
      }
      const [w, h] = this.computeSize();
      this.setSize([Math.max(w, 440), Math.max(h, 520)]);
      editor.refresh();
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.contexteditEditor?.refresh();
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      if (message && message[MESSAGE_KEY]) this.contexteditEditor?.setMessage(message[MESSAGE_KEY]);
      return result;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.contexteditEditor?.destroy();
      return onRemoved?.apply(this, arguments);
    };
  },
});
