// ContextEdit Decode Masks: the masks over the image, in the node, after a run.
//
// The node's UI output (nodes/masks/canvas.py) brings, per image, the tinted preview (each
// instruction's mask in its colour, the colour the plan editor uses) and, per instruction, its
// verdict, text, the plan's boxes and the mask's area / box / centroid. The view draws the
// preview with a numbered outline around each mask and lists every instruction below it: a
// [NEG] instruction's mask is empty (all black), so it tints nothing; its plan box is drawn
// dashed and crossed, and its row says "empty mask". Read-only; created on the first run.

import { app } from "../../../scripts/app.js";
import {
  MASK_CHIP, NEG_CHIP, NEG_STROKE, drawChip, fitRect, installStyle, showViewImage, syncCanvasSize,
  truncate,
} from "./plan_canvas.js";

const NODE_TYPE = "ContextEditDecodeMasks";
const MESSAGE_KEY = "contextedit_masks";

class MaskView {
  constructor(node) {
    this.node = node;
    this.entries = [];
    this.index = 0;
    this.image = null;
    this.imageKey = null;
    this.drawn = [];
    installStyle();
    this.root = document.createElement("div");
    this.root.className = "contextedit-view contextedit-mask-view";
    const bar = document.createElement("div");
    bar.className = "contextedit-toolbar";
    this.prevButton = document.createElement("button");
    this.prevButton.textContent = "\u25c0";
    this.nextButton = document.createElement("button");
    this.nextButton.textContent = "\u25b6";
    this.status = document.createElement("span");
    this.status.className = "contextedit-status";
    bar.append(this.prevButton, this.nextButton, this.status);
    this.canvas = document.createElement("canvas");
    this.rows = document.createElement("div");
    this.rows.className = "contextedit-rows";
    this.root.append(bar, this.canvas, this.rows);
    this.prevButton.addEventListener("click", () => this.show(this.index - 1));
    this.nextButton.addEventListener("click", () => this.show(this.index + 1));
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);
  }

  get entry() {
    return this.entries[this.index] || null;
  }

  destroy() {
    this.resizeObserver?.disconnect();
  }

  setMessage(entries) {
    this.entries = Array.isArray(entries) ? entries : [];
    this.show(Math.min(this.index, Math.max(0, this.entries.length - 1)));
  }

  show(index) {
    if (!this.entries.length) return;
    this.index = (index + this.entries.length) % this.entries.length;
    showViewImage(this, this.entry.image, (message) => { this.status.textContent = message; });
    this.renderRows();
    this.draw();
  }

  renderRows() {
    const entry = this.entry;
    const many = this.entries.length > 1;
    this.prevButton.style.display = many ? "" : "none";
    this.nextButton.style.display = many ? "" : "none";
    const masks = entry.items.filter((it) => it.area > 0).length;
    this.status.textContent = `${many ? `image ${this.index + 1}/${this.entries.length}: ` : ""}${masks} of ${entry.items.length} mask(s) non-empty, ${entry.source}`;
    this.rows.replaceChildren();
    for (const item of entry.items) {
      const row = document.createElement("div");
      row.className = "contextedit-row";
      row.dataset.number = String(item.number);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.textContent = String(item.number);
      swatch.style.background = item.area > 0 ? item.colour : "transparent";
      swatch.style.border = `2px ${item.area > 0 ? "solid" : "dashed"} ${item.colour}`;
      const verdict = document.createElement("span");
      verdict.className = "token";
      verdict.style.background = item.executable ? MASK_CHIP : NEG_CHIP;
      verdict.style.textAlign = "center";
      verdict.style.borderRadius = "3px";
      verdict.textContent = item.executable ? "[MASK]" : "[NEG]";
      const text = document.createElement("span");
      text.className = "text";
      const what = item.area > 0 ? `${(100 * item.fraction).toFixed(1)}% of the image` : "empty mask (all black)";
      text.textContent = `${item.resolved || item.instruction} \u2014 ${what}`;
      row.title = `${item.number}. ${item.instruction}${item.resolved !== item.instruction ? ` \u2192 ${item.resolved}` : ""}\n${what}`;
      row.append(swatch, verdict, text);
      this.rows.append(row);
    }
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { w, h, dpr } = syncCanvasSize(this.canvas);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    this.drawn = [];
    const entry = this.entry;
    if (!entry) return;
    const fit = fitRect(entry.width, entry.height, w, h);
    const at = (x, y) => ({ x: fit.x + x * fit.s, y: fit.y + y * fit.s });
    if (this.image) ctx.drawImage(this.image, fit.x, fit.y, entry.width * fit.s, entry.height * fit.s);
    for (const item of entry.items) {
      if (item.area > 0 && item.bbox) {
        const a = at(item.bbox[0], item.bbox[1]);
        const c = at(item.bbox[2], item.bbox[3]);
        ctx.save();
        ctx.strokeStyle = item.colour;
        ctx.lineWidth = 1.5;
        ctx.strokeRect(a.x, a.y, c.x - a.x, c.y - a.y);
        ctx.restore();
        drawChip(ctx, a.x, a.y - 16 >= fit.y ? a.y - 16 : a.y + 1, `${item.number} ${truncate(item.resolved || item.instruction, 28)}`, item.colour, "#fff", w - 2);
        this.drawn.push({ number: item.number, empty: false, bbox: item.bbox });
      } else {
        // nothing to tint: show where the plan's box was, crossed out, so "empty" is visible
        for (const box of item.plan_boxes || []) {
          const a = at(box[0], box[1]);
          const c = at(box[2], box[3]);
          ctx.save();
          ctx.setLineDash([5, 4]);
          ctx.strokeStyle = NEG_STROKE;
          ctx.lineWidth = 1.5;
          ctx.strokeRect(a.x, a.y, c.x - a.x, c.y - a.y);
          ctx.beginPath();
          ctx.moveTo(a.x, a.y);
          ctx.lineTo(c.x, c.y);
          ctx.moveTo(c.x, a.y);
          ctx.lineTo(a.x, c.y);
          ctx.stroke();
          ctx.restore();
          drawChip(ctx, a.x, a.y - 16 >= fit.y ? a.y - 16 : a.y + 1, `${item.number} [NEG] empty mask`, NEG_CHIP, "#fff", w - 2);
        }
        this.drawn.push({ number: item.number, empty: true, bbox: null });
      }
    }
  }

  snapshot() {
    const entry = this.entry;
    return { ready: !!(entry && this.image), items: entry ? entry.items : [], drawn: this.drawn, status: this.status.textContent };
  }
}

app.registerExtension({
  name: "ContextEdit.MaskView",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const entries = message && message[MESSAGE_KEY];
      if (!entries) return result;
      if (!this.contexteditMaskView) {
        // created on the first run only, so loading a workflow never changes the node's size
        const view = new MaskView(this);
        this.contexteditMaskView = view;
        const widget = this.addDOMWidget("mask_view", "contextedit_mask_view", view.root, {
          serialize: false,
          getMinHeight: () => 240,
        });
        widget.serialize = false;
        const [w, h] = this.computeSize();
        this.setSize([Math.max(this.size[0], w, 320), Math.max(this.size[1], h)]);
        this.setDirtyCanvas?.(true, true);
      }
      this.contexteditMaskView.setMessage(entries);
      return result;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.contexteditMaskView?.destroy();
      return onRemoved?.apply(this, arguments);
    };
  },
});
