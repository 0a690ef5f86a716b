"""Write the node help pages the ComfyUI frontend shows in its node-library help panel.

    python tools/make_help_pages.py --server http://127.0.0.1:8188
    python tools/make_help_pages.py --object-info object_info.json

One markdown page per node id, web/docs/<NodeId>.md (served from the pack's WEB_DIRECTORY at
/extensions/<pack folder>/docs/<NodeId>.md, the path the pinned frontend requests). Each page is the
node's own schema (description, every input and output with its tooltip, defaults and ranges, from
/object_info of a server running the pack) plus a short usage note written here, the models it
loads with their sources (nodes/model_catalog.py), a schematic picture where one helps
(tools/make_help_images.py) and the shipped workflows that use it. Re-run it when a schema changes
(tests/host/test_help_pages.py checks every input and output is on the page).
"""

import argparse
import json
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "web" / "docs"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow_models import load_catalog  # noqa: E402

USAGE = {
    "ContextEditLoadVLM": (
        "Put a Hugging Face vision-language model folder in `models/LLM` (for example the whole "
        "`Qwen/Qwen2.5-VL-3B-Instruct` repository as `models/LLM/Qwen2.5-VL-3B-Instruct`), refresh, pick it "
        "in `model_name` and connect `vlm` to **ContextEdit Check Instructions** or **ContextEdit Rewrite Edit "
        "Instruction**. An empty folder shows `(none installed in models/LLM)`; queueing then answers with "
        "where to download a model."),
    "ContextEditCheckInstructions": (
        "Connect the image, write the instructions one per line and connect **ContextEdit Load VLM**. Show "
        "`report` with Preview Any: one line per instruction, `[MASK]` with its box or `[NEG]` with the reason. "
        "Connect `plan` to **ContextEdit Decode Masks** and **ContextEdit Attention Mask**; `executable` is the "
        "text of the executable instructions. `[NEG]` instructions are left out of the prompt and their regions "
        "are not edited."),
    "ContextEditManualPlan": (
        "The same EDIT_PLAN as Check Instructions, without a VLM: write the instructions one per line and, in "
        "`boxes`, one entry per instruction in pixels, e.g. `[[0, 0, 512, 190], null]` (`null` = the whole "
        "image). `non_executable` = `2` marks instruction 2 `[NEG]`. Masks or another pack's `BBOX` can "
        "replace the boxes."),
    "ContextEditReviewPlan": (
        "Put it between the plan (Check Instructions or Manual Plan) and what uses it (Decode Masks, Attention "
        "Mask), with the plan's image. After a run the node shows the image with every instruction's boxes: "
        "drag a box to move it, drag a corner of the selected box to resize it, pick an instruction's row and "
        "press **+ Box** to draw one, Delete removes the selected box; the row's `[MASK]`/`[NEG]` button flips "
        "the verdict and its text field edits the resolved instruction. The edits go into `corrections` (saved "
        "with the workflow) and apply on the next run, which re-runs only this node and what follows. A "
        "correction whose image or instruction changed is dropped and listed, never applied elsewhere. Scripts "
        "send the same JSON (see the README: Review and correct the plan on the canvas)."),
    "ContextEditLoadSAM": (
        "Put a segment-anything checkpoint in `models/sams` (e.g. `sam_vit_b_01ec64.pth`) and connect `sam` to "
        "**ContextEdit Decode Masks**, which then refines each box into an object mask."),
    "ContextEditDecodeMasks": (
        "Connect the image and the plan (Check Instructions or Manual Plan), and optionally **ContextEdit Load "
        "SAM**. `masks` holds one mask per instruction, in order, for **ContextEdit Attention Mask**; `union` is "
        "every mask together (e.g. for Set Latent Noise Mask); `preview` shows each instruction's mask in its "
        "colour. Without SAM the boxes themselves are the masks. After a run the node shows the masks over the "
        "image, one colour per instruction; a `[NEG]` instruction's mask is empty. Put **ContextEdit Review "
        "Plan** before it to correct the plan on the canvas."),
    "ContextEditAttentionMask": (
        "Connect the model and CLIP from the loader, the masks from **ContextEdit Decode Masks** and the plan "
        "(or write the instructions in `prompt`). Sample with the patched `model` and use `positive` as the "
        "positive conditioning (for InstructPix2Pix: into InstructPixToPixConditioning, then DualCFGGuider). "
        "With the defaults the prompt acts only inside the masks in the 16x16 layers at 512 px."),
    "ContextEditAttentionMap": (
        "A diagnostic: connect a model (patched or not), its CLIP, the prompt, the words to show and a latent "
        "of the image (VAE Encode), and show `heatmap` with Preview Image. With a model patched by Attention "
        "Mask, attention outside the masks drops to zero."),
    "ContextEditMAGEdit": (
        "Connect an SD1.x model and CLIP, the source image's latent (VAE Encode with the same checkpoint) and a "
        "mask of the region to edit; write the source prompt (what the image shows) and the target prompt "
        "(the same with the edit). VAE Decode `latent`; `attention` shows the edit words' attention before | "
        "after. `fast` is the default preset; `paper` uses MAG-Edit's published settings and is much slower."),
    "ContextEditLoadRegionPredictor": (
        "Pick a trained head from `models/contextedit` (none is published: train one with "
        "`nodes/regions/train.py`) or `none (test-time mode)`, CLIP ViT-L/14 in `clip_vision` and FLAN-T5 in "
        "`text_encoder`; test-time mode also needs a CLIP text folder in `clip_text`. Connect the output to "
        "**ContextEdit Predict Edit Region**."),
    "ContextEditPredictEditRegion": (
        "Connect the image, the loaded predictor and the instruction. Feed `mask` to Set Latent Noise Mask + "
        "KSampler at denoise 1.0 to edit only there, prompted with the target caption. With no trained head "
        "(or `test_time_steps` > 0) it fits a head to this image, which needs `edited` and the captions."),
    "ContextEditEditMetrics": (
        "Connect the source and the edited image and pick a metric set; write the captions for the CLIP "
        "metrics, connect the edit `mask` for PIE-Bench's background metrics and the ground truth as "
        "`reference` for MagicBrush. Show `table` with Preview Any and `plot` with Preview Image. `Pixel (no "
        "networks)` needs no model files; the others need the networks below in `models/metrics`, and "
        "queueing without them answers with the missing files and their sources."),
    "ContextEditRewriteEditInstruction": (
        "Connect **ContextEdit Load VLM**, the source and edited images and the instruction that was carried "
        "out. The outputs are the rewritten instructions and captions; with `score` on, `overall` is the "
        "VIEScore-style rating (-1 when not scored) and `report` shows everything."),
    "ContextEditImageStream": (
        "Connect the model, **Load CLIP Vision** with the encoder the IP-Adapter was trained with, the "
        "IP-Adapter file and an image. To keep the background, give the source image with `mask_mode` "
        "`outside the edit masks` and the masks from Decode Masks; to steer the edit, give a reference image "
        "with `inside the edit masks`. Sample with the patched `model`; set `unconditional` to the negative "
        "branch of your sampler (KSampler: negative (1); DualCFGGuider: negative (0))."),
}

PICTURES = {
    "ContextEditDecodeMasks": ("decode_masks.png", "A box per instruction becomes one mask per instruction "
                               "(a NEG instruction's mask is black)"),
    "ContextEditAttentionMask": ("attention_mask.png", "Without the patch the prompt acts everywhere; with it each "
                                 "instruction acts inside its own mask"),
    "ContextEditPredictEditRegion": ("predict_edit_region.png", "Soft map, binary mask and overlay of the "
                                     "predicted edit region"),
}

# models listed on a node's page: (name, folder) in the catalogue
MODELS = {
    "ContextEditLoadVLM": [("Qwen2.5-VL-3B-Instruct", "LLM")],
    "ContextEditLoadSAM": [("sam_vit_b_01ec64.pth", "sams"), ("sam_vit_l_0b3195.pth", "sams"),
                           ("sam_vit_h_4b8939.pth", "sams")],
    "ContextEditLoadRegionPredictor": [("region_predictor.safetensors", "contextedit"),
                                       ("clip_vit_large_patch14.safetensors", "clip_vision"),
                                       ("clip-vit-large-patch14", "clip_vision"), ("flan-t5-base", "text_encoders")],
    "ContextEditImageStream": [("ip-adapter_sd15.safetensors", "ipadapter"),
                               ("ip-adapter_sd15_light.safetensors", "ipadapter"),
                               ("ip-adapter_sdxl_vit-h.safetensors", "ipadapter"),
                               ("ip-adapter_sdxl.safetensors", "ipadapter"),
                               ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision"),
                               ("CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "clip_vision")],
    "ContextEditEditMetrics": [("clip-vit-large-patch14", "metrics"), ("clip-vit-base-patch32", "metrics"),
                               ("dino_vitbase8_pretrain.pth", "metrics"), ("dino_deitsmall16_pretrain.pth", "metrics"),
                               ("squeezenet1_1-b8a52dc0.pth", "metrics"), ("lpips_squeeze.pth", "metrics")],
}


def _text(text):
    """Schema text as markdown: '<folder>' would be read as an HTML tag and dropped by the frontend."""
    return str(text).replace("<", "&lt;").replace(">", "&gt;")


def _cell(text):
    return _text(text).replace("|", "\\|").replace("\n", " ")


def _type_cell(node_id, name, spec, catalog):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if kind == "COMBO" or isinstance(kind, list):
        if name in catalog.LOADER_INPUTS.get(node_id, {}):
            folders = " or ".join(f"`models/{f}`" for f in catalog.LOADER_INPUTS[node_id][name])
            return f"a model in {folders}"
        options = opts.get("options", kind if isinstance(kind, list) else [])
        text = " / ".join(f"`{o}`" for o in options)
        return text + (f" (default `{opts['default']}`)" if "default" in opts else "")
    text = f"`{kind}`"
    details = []
    if "default" in opts and opts["default"] not in ("", None) and kind in ("INT", "FLOAT", "BOOLEAN", "STRING"):
        details.append(f"default `{opts['default']}`")
    if "min" in opts and "max" in opts and kind in ("INT", "FLOAT") and opts["max"] < 1e12:
        details.append(f"{opts['min']} to {opts['max']}")
    return text + (f" ({', '.join(details)})" if details else "")


def workflows_using(node_id):
    found = []
    for path in sorted((REPO / "workflows").glob("*.json")):
        nodes = json.loads(path.read_text()).get("nodes") or []
        if any(n.get("type") == node_id for n in nodes):
            found.append(f"`workflows/{path.name}`")
    return found


def page(node_id, schema, catalog):
    lines = [f"# {schema['display_name']}", "", _text(schema["description"].strip()), ""]
    if node_id in PICTURES:
        image, alt = PICTURES[node_id]
        lines += [f"![{alt}](images/{image})", ""]
    lines += ["## How to use", "", USAGE[node_id], ""]
    inputs = []
    for section in ("required", "optional"):
        for name, spec in (schema["input"].get(section) or {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            label = f"`{name}`" + (" (optional)" if section == "optional" else "")
            inputs.append(f"| {label} | {_cell(_type_cell(node_id, name, spec, catalog))} | {_cell(opts.get('tooltip', ''))} |")
    lines += ["## Inputs", "", "| Input | Type | What it is |", "|---|---|---|", *inputs, ""]
    tooltips = schema.get("output_tooltips") or []
    outputs = [f"| `{name}` | `{kind}` | {_cell(tooltips[i] if i < len(tooltips) else '')} |"
               for i, (name, kind) in enumerate(zip(schema["output_name"], schema["output"]))]
    lines += ["## Outputs", "", "| Output | Type | What it is |", "|---|---|---|", *outputs, ""]
    if node_id in MODELS:
        rows = []
        for name, folder in MODELS[node_id]:
            entry = catalog.lookup(name, folder)
            where = f"[{entry.source}]({entry.source}): {entry.how}" if entry.source else entry.how
            rows.append(f"| `{name}` | `models/{entry.directory}` | {entry.what} | {_cell(where)} |")
        lines += ["## Models", "", "Nothing is downloaded by the pack; put the files in ComfyUI's model folders.", "",
                  "| Model | Folder | What | Where to get it |", "|---|---|---|---|", *rows, ""]
    used = workflows_using(node_id)
    if used:
        lines += ["## Example workflows", "", ", ".join(used), ""]
    lines += [f"Category: `{schema['category']}`", ""]
    return "\n".join(lines)


def load_object_info(args):
    if args.object_info:
        return json.loads(Path(args.object_info).read_text())
    with urllib.request.urlopen(args.server.rstrip("/") + "/object_info", timeout=60) as response:  # noqa: S310
        return json.loads(response.read())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="URL of a ComfyUI running the pack")
    source.add_argument("--object-info", help="a saved /object_info JSON")
    args = parser.parse_args(argv)
    info = load_object_info(args)
    catalog = load_catalog()
    ours = {k: v for k, v in info.items() if k.startswith("ContextEdit")}
    missing = sorted(set(ours) - set(USAGE))
    if missing:
        parser.error(f"no usage note for {missing}: add one to USAGE")
    DOCS.mkdir(parents=True, exist_ok=True)
    for node_id, schema in sorted(ours.items()):
        (DOCS / f"{node_id}.md").write_text(page(node_id, schema, catalog), encoding="utf-8")
        print(f"wrote web/docs/{node_id}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
