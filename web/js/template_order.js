// ContextEdit: the order of the pack's cards in the frontend's Templates browser (Extensions).
//
// The pinned frontend (comfyui-frontend-package 1.35.9) reads nothing about a custom node pack's
// templates but their names (GET /workflow_templates): each card's title is the file name, its
// description the file name with "_" and "-" as spaces, its thumbnail <name>.jpg, and the cards
// come in the order the server lists them, which is the file system's (ComfyUI globs the
// workflows folder). This module puts the pack's own list in TEMPLATE_ORDER, main workflow first;
// names it does not know keep the server's order, after them. Other packs' lists are untouched.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export const TEMPLATE_ORDER = [
  "context_aware_edit",
  "context_aware_edit_manual",
  "check_instructions",
  "context_aware_edit_kontext",
  "context_aware_edit_qwen",
  "insight_edit",
  "attention_mask_ip2p",
  "mag_edit",
  "region_edit",
  "editing_pair",
];

// ComfyUI serves this folder at /extensions/<the pack's folder name>/ and lists its templates
// under the same folder name.
const PACK_FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/")[2] || "");

export function orderTemplates(names) {
  const rank = (name) => {
    const i = TEMPLATE_ORDER.indexOf(name);
    return i < 0 ? TEMPLATE_ORDER.length : i;
  };
  return names.map((name, i) => [rank(name), i, name]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((e) => e[2]);
}

const listTemplates = api.getWorkflowTemplates.bind(api);
api.getWorkflowTemplates = async (...args) => {
  const templates = await listTemplates(...args);
  if (templates && Array.isArray(templates[PACK_FOLDER])) {
    templates[PACK_FOLDER] = orderTemplates(templates[PACK_FOLDER]);
  }
  return templates;
};

app.registerExtension({ name: "ContextEdit.TemplateOrder" });
