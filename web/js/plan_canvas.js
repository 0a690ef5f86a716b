// Shared drawing helpers for the ContextEdit canvas views (review_plan.js, mask_view.js).
// Plain ES module, no build step. Exports only: ComfyUI also loads this file as an extension,
// which is harmless because it registers nothing.

import { api } from "../../../scripts/api.js";

export const MASK_CHIP = "#2e7d32"; // [MASK]: executable, drawn solid in the instruction's colour
export const NEG_CHIP = "#b71c1c"; // [NEG]: left alone, drawn dashed in NEG_STROKE
export const NEG_STROKE = "#e6e6e6";

let styleInstalled = false;

/** Inject the views' CSS once (frontend theme variables, so light and dark themes both work). */
export function installStyle() {
  if (styleInstalled) return;
  styleInstalled = true;
  const style = document.createElement("style");
  style.textContent = `
    .contextedit-view { display: flex; flex-direction: column; gap: 4px; box-sizing: border-box;
      font: 12px sans-serif; color: var(--input-text, #ddd); overflow: hidden; }
    .contextedit-view canvas { flex: 1 1 auto; min-height: 120px; width: 100%; display: block;
      background: #1b1b1b; border-radius: 4px; outline: none; touch-action: none; }
    .contextedit-toolbar { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
    .contextedit-toolbar button, .contextedit-row button { font: 11px sans-serif; padding: 1px 6px;
      border-radius: 4px; border: 1px solid var(--border-color, #555); cursor: pointer;
      background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd); }
    .contextedit-toolbar button.on { outline: 2px solid #4fc3f7; }
    .contextedit-status { opacity: 0.8; flex: 1 1 auto; white-space: nowrap; overflow: hidden;
      text-overflow: ellipsis; }
    .contextedit-rows { display: flex; flex-direction: column; gap: 2px; max-height: 40%;
      overflow-y: auto; flex: 0 0 auto; }
    .contextedit-row { display: flex; gap: 4px; align-items: center; padding: 1px 2px; border-radius: 3px; }
    .contextedit-row.selected { background: rgba(79, 195, 247, 0.18); }
    .contextedit-row .swatch { width: 18px; text-align: center; border-radius: 3px; color: #fff;
      font-weight: bold; flex: 0 0 auto; }
    .contextedit-row .token { width: 54px; color: #fff; border: none; flex: 0 0 auto; }
    .contextedit-row .text { flex: 1 1 auto; min-width: 40px; white-space: nowrap; overflow: hidden;
      text-overflow: ellipsis; }
    .contextedit-row input { flex: 1 1 auto; min-width: 60px; font: 11px sans-serif;
      background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
      border: 1px solid var(--border-color, #555); border-radius: 3px; }
    .contextedit-notes { color: #ffb74d; white-space: pre-wrap; max-height: 22%; overflow-y: auto;
      flex: 0 0 auto; }
    .contextedit-notes:empty { display: none; }
  `;
  document.head.appendChild(style);
}

/** The /view URL of a file the server saved ({filename, subfolder, type}). */
export function viewURL(ref) {
  const params = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "temp" });
  return api.apiURL(`/view?${params.toString()}`);
}

/** Load an image; resolves with the element once decoded. */
export function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${url}`));
    img.src = url;
  });
}

/**
 * Show a /view image reference in a view (an object with image, imageKey and draw()): loads it
 * unless it is the one already shown, and draws once decoded (a newer reference wins).
 */
export function showViewImage(view, ref, onError) {
  const key = JSON.stringify(ref);
  if (key === view.imageKey) return;
  view.imageKey = key;
  view.image = null;
  loadImage(viewURL(ref)).then((img) => {
    if (view.imageKey === key) {
      view.image = img;
      view.draw();
    }
  }).catch((error) => onError(String(error.message || error)));
}

/** Size the canvas backing store to its laid-out CSS size; returns {w, h, dpr} in CSS pixels. */
export function syncCanvasSize(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  return { w, h, dpr };
}

/** Where an image of width x height sits, letterboxed, in a w x h area (CSS px): {x, y, s}. */
export function fitRect(width, height, w, h, pad = 4) {
  const s = Math.max(1e-6, Math.min((w - 2 * pad) / width, (h - 2 * pad) / height));
  return { x: (w - width * s) / 2, y: (h - height * s) / 2, s };
}

/** Map a pointer event to the canvas's CSS pixels (the node may be zoomed by the graph canvas). */
export function eventToCanvas(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  const kx = canvas.clientWidth / Math.max(1e-6, rect.width);
  const ky = canvas.clientHeight / Math.max(1e-6, rect.height);
  return { x: (event.clientX - rect.left) * kx, y: (event.clientY - rect.top) * ky };
}

/** Map canvas CSS pixels to client (viewport) pixels: what a pointer must hit. */
export function canvasToClient(canvas, x, y) {
  const rect = canvas.getBoundingClientRect();
  return {
    x: rect.left + (x * rect.width) / Math.max(1e-6, canvas.clientWidth),
    y: rect.top + (y * rect.height) / Math.max(1e-6, canvas.clientHeight),
  };
}

export function truncate(text, max) {
  text = String(text ?? "");
  return text.length <= max ? text : text.slice(0, Math.max(1, max - 1)) + "\u2026";
}

/** A filled label chip; returns its width. (x, y) is its top-left corner, in CSS px; with
 * ``right`` the chip is shifted left so that it ends before that x. */
export function drawChip(ctx, x, y, text, background, colour = "#fff", right = Infinity) {
  ctx.save();
  ctx.font = "bold 11px sans-serif";
  const w = ctx.measureText(text).width + 8;
  x = Math.max(0, Math.min(x, right - w));
  ctx.fillStyle = background;
  ctx.globalAlpha = 0.9;
  ctx.fillRect(x, y, w, 15);
  ctx.globalAlpha = 1;
  ctx.fillStyle = colour;
  ctx.textBaseline = "middle";
  ctx.fillText(text, x + 4, y + 8);
  ctx.restore();
  return w;
}

/** A multi-line tooltip box near (x, y), kept inside the w x h area. */
export function drawTooltip(ctx, x, y, lines, w, h) {
  ctx.save();
  ctx.font = "11px sans-serif";
  const width = Math.min(w - 8, Math.max(...lines.map((l) => ctx.measureText(l).width)) + 12);
  const height = lines.length * 14 + 8;
  const left = Math.max(4, Math.min(x + 12, w - width - 4));
  const top = Math.max(4, Math.min(y + 12, h - height - 4));
  ctx.fillStyle = "rgba(20, 20, 20, 0.92)";
  ctx.strokeStyle = "#888";
  ctx.fillRect(left, top, width, height);
  ctx.strokeRect(left + 0.5, top + 0.5, width - 1, height - 1);
  ctx.fillStyle = "#eee";
  ctx.textBaseline = "top";
  lines.forEach((line, i) => ctx.fillText(truncate(line, 120), left + 6, top + 4 + i * 14, width - 12));
  ctx.restore();
}

/** The active workflow's change tracker notices a widget edit (undo, "modified", persistence). */
export function markGraphChanged(app) {
  try {
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState();
  } catch (error) {
    console.warn("ContextEdit: could not record the change", error);
  }
}
