"""The plan editor on the canvas (ContextEdit Review Plan) and the masks view (Decode Masks), in
the real frontend (headless Chromium, tests/host/browser.py) on the live test server.

What an artist does, with real pointer events (selenium's W3C actions, i.e. CDP mouse input):
run, see one box per [MASK] instruction at the plan's coordinates, drag a box and resize
another, flip an instruction to [NEG], add a box, edit the resolved text, reload the page, run
again; and what the server then does: the decoded masks follow (centroids within 2 px), a [NEG]
mask is all black and its region is left untouched in the sampled latent, the VLM stays cached,
the same corrections sent through POST /prompt give the same masks, a correction that no longer
fits is dropped with a visible note.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.tiny_models import make_tiny_qwen2_vl
from host.graphs import ApiGraph
from PIL import Image, ImageDraw

REVIEW, DECODE = "ContextEditReviewPlan", "ContextEditDecodeMasks"
TINY_VLM = "tiny-qwen2.5-vl"
WIDTH, HEIGHT = 128, 64  # latent 16 x 8: the tiny SD1.5 UNet's three downsamplings divide it
INSTRUCTIONS = ["recolour the red square", "recolour the blue disc", "remove the moon"]
BOXES = [[8, 8, 40, 40], [80, 16, 112, 48], [48, 40, 64, 56]]  # the third is marked [NEG]
CENTROID_PX = 2.0  # the bound: a mask's centroid follows a drag within 2 image pixels


# ---------------------------------------------------------------------------------------- setup
def synthetic_image():
    image = Image.new("RGB", (WIDTH, HEIGHT), (70, 110, 150))
    draw = ImageDraw.Draw(image)
    draw.rectangle([8, 8, 39, 39], fill=(220, 30, 30))
    draw.ellipse([80, 16, 111, 47], fill=(30, 60, 220))
    draw.ellipse([48, 40, 63, 55], fill=(240, 240, 200))
    return image


@pytest.fixture(scope="module")
def image_names(comfy_server):
    """The synthetic image, uploaded twice under two names (same pixels, same fingerprint)."""
    image = synthetic_image()
    return (comfy_server.upload_image(image, name="contextedit_editor.png"),
            comfy_server.upload_image(image, name="contextedit_editor_headless.png"))


@pytest.fixture(scope="module")
def tiny_vlm(comfy_server, generated_dir):
    llm = Path(comfy_server.model_dirs["LLM"]) / TINY_VLM
    if not llm.exists():
        shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), llm)
    return TINY_VLM


def manual_graph(image_name, ckpt_name, corrections="", sampler=True, prefix="editor"):
    """LoadImage -> Manual Plan -> Review Plan -> Decode Masks -> masks saved; with ``sampler``,
    VAEEncode -> SetLatentNoiseMask(union) -> KSampler (1 step) -> latents saved."""
    g = ApiGraph()
    image = g.add("LoadImage", name="image", image=image_name)
    plan = g.add("ContextEditManualPlan", name="plan", image=image[0], instructions="\n".join(INSTRUCTIONS),
                 boxes=json.dumps(BOXES), non_executable="3")
    review = g.add(REVIEW, name="review", image=image[0], plan=plan[0], corrections=corrections)
    decode = g.add(DECODE, name="decode", image=image[0], plan=review[0], dilate=0, feather=0)
    to_image = g.add("MaskToImage", name="mask_image", mask=decode[0])
    g.add("SaveImage", name="masks", images=to_image[0], filename_prefix=f"{prefix}_masks")
    if sampler:
        ckpt = g.add("CheckpointLoaderSimple", name="ckpt", ckpt_name=ckpt_name)
        encode = g.add("VAEEncode", name="encode", pixels=image[0], vae=ckpt[2])
        masked = g.add("SetLatentNoiseMask", name="noise_mask", samples=encode[0], mask=decode[1])
        pos = g.add("CLIPTextEncode", name="positive", text="a green square", clip=ckpt[1])
        neg = g.add("CLIPTextEncode", name="negative", text="", clip=ckpt[1])
        ks = g.add("KSampler", name="sampler", model=ckpt[0], positive=pos[0], negative=neg[0], latent_image=masked[0],
                   seed=3, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=1.0)
        g.add("SaveLatent", name="sampled", samples=ks[0], filename_prefix=f"latents/{prefix}_sampled")
        g.add("SaveLatent", name="source", samples=encode[0], filename_prefix=f"latents/{prefix}_source")
    return g


def vlm_graph(image_name, instructions):
    """LoadImage -> Load VLM (tiny) -> Check Instructions -> Review Plan -> Decode Masks -> masks saved."""
    g = ApiGraph()
    image = g.add("LoadImage", name="image", image=image_name)
    vlm = g.add("ContextEditLoadVLM", name="vlm", model_name=TINY_VLM, dtype="auto")
    check = g.add("ContextEditCheckInstructions", name="check", image=image[0], instructions=instructions,
                  vlm=vlm[0], max_new_tokens=16)
    review = g.add(REVIEW, name="review", image=image[0], plan=check[0], corrections="")
    decode = g.add(DECODE, name="decode", image=image[0], plan=review[0], dilate=0, feather=0)
    to_image = g.add("MaskToImage", name="mask_image", mask=decode[0])
    g.add("SaveImage", name="masks", images=to_image[0], filename_prefix="editor_vlm_masks")
    return g


# ------------------------------------------------------------------------------------ the page
def open_graph(browser, graph, name):
    """Load an API-format graph as the frontend's drop/Open does (app.loadApiJson), then put the
    Review Plan and Decode Masks nodes side by side in view at zoom 1, the rest out of the way."""
    browser.js("window.app.loadApiJson(arguments[0], arguments[1]); return true;", dict(graph), name)
    review, decode = graph.refs["review"], graph.refs["decode"]
    browser.js("""
        const [review, decode] = arguments;
        const app = window.app;
        let y = 0;
        for (const node of app.graph.nodes) {
          if (String(node.id) === review) node.pos = [60, 40];
          else if (String(node.id) === decode) node.pos = [560, 40];
          else { node.pos = [1200, y]; y += node.size[1] + 40; }
        }
        return true;
    """, str(review), str(decode))
    set_view(browser)
    return review, decode


def set_view(browser):
    """Zoom 1, the graph's origin clear of the sidebar and the tab bar; wait for two frames."""
    browser.js("""
        const c = window.app.canvas;
        c.ds.scale = 1;
        c.ds.offset = [100, 110];
        c.setDirty(true, true);
        return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))));
    """)


def editor(browser, node_id):
    return browser.js("return window.app.graph.getNodeById(arguments[0]).contexteditEditor.snapshot()", int(node_id))


def mask_view(browser, node_id):
    return browser.js("""
        const view = window.app.graph.getNodeById(arguments[0]).contexteditMaskView;
        return view ? view.snapshot() : null;""", int(node_id))


def image_to_client(browser, node_id, x, y):
    p = browser.js("return window.app.graph.getNodeById(arguments[0]).contexteditEditor.imageToClient(arguments[1], arguments[2])",
                   int(node_id), float(x), float(y))
    return p["x"], p["y"]


def received(browser, node_id):
    return browser.js("return window.app.graph.getNodeById(arguments[0]).contexteditEditor.received", int(node_id))


def queue_and_wait(browser, server, node_id, timeout=300):
    """Run as the Run button does, wait for the prompt and for the editor to receive its message."""
    before = received(browser, node_id)
    prompt_id = browser.queue()
    entry = server.wait(prompt_id, timeout=timeout)
    browser.wait_for(f"(() => {{ const e = window.app.graph.getNodeById({int(node_id)}).contexteditEditor;"
                     f" return e.received > {before} && e.snapshot().ready; }})()", 60, "the editor to show the run")
    return prompt_id, entry


def drag(browser, start, end, steps=6):
    """Press the left button at ``start``, move in steps, release at ``end`` (viewport pixels):
    real pointer events through chromedriver's input (CDP Input.dispatchMouseEvent)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.interaction import POINTER_MOUSE
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    actions = ActionBuilder(browser.driver, mouse=PointerInput(POINTER_MOUSE, "mouse"), duration=20)
    pointer = actions.pointer_action
    pointer.move_to_location(round(start[0]), round(start[1]))
    pointer.pointer_down()
    for i in range(1, steps + 1):
        t = i / steps
        pointer.move_to_location(round(start[0] + t * (end[0] - start[0])), round(start[1] + t * (end[1] - start[1])))
    pointer.pointer_up()
    actions.perform()


def click(browser, css, node_id):
    """A real click on an element inside a node's editor (a row's button, a toolbar button)."""
    from selenium.webdriver.common.action_chains import ActionChains

    element = browser.js("""
        const n = window.app.graph.getNodeById(arguments[0]);
        return n.contexteditEditor.root.querySelector(arguments[1]);""", int(node_id), css)
    assert element is not None, f"no {css} in the editor of node {node_id}"
    ActionChains(browser.driver).move_to_element(element).click().perform()
    return element


# ----------------------------------------------------------------------------------- read back
def saved_masks(server, entry, node_id):
    refs = server.output_images(entry, node_id)
    return [server.get_image(**ref, as_array=True)[..., 0] > 127 for ref in refs]


def centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def latent(server, entry, node_id):
    from safetensors.torch import load_file

    ref = entry["outputs"][str(node_id)]["latents"][0]
    return load_file(str(Path(server.output_dir) / ref["subfolder"] / ref["filename"]))["latent_tensor"].float()


def cached_nodes(entry):
    return [set(data["nodes"]) for kind, data in entry["status"]["messages"] if kind == "execution_cached"][0]


def review_message(entry, node_id):
    return entry["outputs"][str(node_id)]["contextedit_review"][0]


def canvas_pixel(browser, node_id, x, y):
    """The RGBA the editor's canvas shows at its CSS pixel (x, y)."""
    return browser.js("""
        const [id, x, y] = arguments;
        const canvas = window.app.graph.getNodeById(id).contexteditEditor.canvas;
        const k = canvas.width / canvas.clientWidth;
        return Array.from(canvas.getContext('2d').getImageData(Math.floor(x * k), Math.floor(y * k), 1, 1).data);
    """, int(node_id), float(x), float(y))


def hover(browser, point):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.interaction import POINTER_MOUSE
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    actions = ActionBuilder(browser.driver, mouse=PointerInput(POINTER_MOUSE, "mouse"), duration=20)
    actions.pointer_action.move_to_location(round(point[0]), round(point[1]))
    actions.perform()


def node_screenshot(browser, path, node_ids):
    """A screenshot of the page cropped to the given nodes (their union, title bars included)."""
    full = browser.screenshot(Path(path).with_name(Path(path).stem + "_full.png"))
    rects = browser.js("""
        const c = window.app.canvas, r = c.canvas.getBoundingClientRect();
        return arguments[0].map(id => { const b = window.app.graph.getNodeById(id).getBounding();
          return [r.left + (b[0] + c.ds.offset[0]) * c.ds.scale, r.top + (b[1] + c.ds.offset[1]) * c.ds.scale,
                  r.left + (b[0] + b[2] + c.ds.offset[0]) * c.ds.scale, r.top + (b[1] + b[3] + c.ds.offset[1]) * c.ds.scale]; });
    """, [int(n) for n in node_ids])
    left, top = min(r[0] for r in rects) - 6, min(r[1] for r in rects) - 6
    right, bottom = max(r[2] for r in rects) + 6, max(r[3] for r in rects) + 6
    Image.open(full).crop((int(left), int(top), int(right), int(bottom))).save(path)
    return path


# ------------------------------------------------------------------------------------ the tests
def test_editor_shows_the_plan_and_its_edits_reach_the_masks_the_latent_a_reload_and_the_api(
        browser, comfy_server, tiny_checkpoints, image_names, tmp_path):
    graph = manual_graph(image_names[0], tiny_checkpoints.sd15_name)
    review, decode = open_graph(browser, graph, "contextedit_plan_editor.json")
    refs = graph.refs

    # -- 1. after a run: one box per [MASK] instruction, at the plan's coordinates, in its colour
    _, first = queue_and_wait(browser, comfy_server, review)
    snap = editor(browser, review)
    message = review_message(first, review)
    mask_items = [(n, item["boxes"]) for n, item in enumerate(message["plan"]["items"], 1) if item["executable"]]
    drawn = [d for d in snap["drawn"] if d["executable"]]
    assert [(d["number"], [d["box"]]) for d in drawn] == mask_items == [(1, [BOXES[0]]), (2, [BOXES[1]])]
    assert [d["number"] for d in snap["drawn"] if not d["executable"]] == [3]   # [NEG]: drawn, dashed
    scale = image_to_client(browser, review, 1, 0)[0] - image_to_client(browser, review, 0, 0)[0]
    for d in drawn:
        x1, y1, x2, y2 = d["canvas"]
        # the plan's size at the view's scale (both sides computed in float64 from one scale: rounding only)
        assert abs((x2 - x1) - (d["box"][2] - d["box"][0]) * scale) < 0.01
        pixel = canvas_pixel(browser, review, x1, (y1 + y2) / 2)   # on the box's left edge
        colour = [int(d["colour"][i:i + 2], 16) for i in (1, 3, 5)]
        # the 2 px stroke covers this pixel; 40 levels bound antialiasing at a fractional edge
        assert max(abs(a - b) for a, b in zip(pixel[:3], colour)) <= 40, (d, pixel)
    view = mask_view(browser, decode)
    assert view["ready"] and [d["empty"] for d in view["drawn"]] == [False, False, True]
    browser.screenshot(tmp_path / "first_run.png")
    masks_first = saved_masks(comfy_server, first, refs["masks"])
    assert [bbox(m) for m in masks_first[:2]] == BOXES[:2] and not masks_first[2].any()

    # -- 2. drag box 1 (pointer events), select box 2 and drag its bottom-right corner
    node_at = [b for b in browser.node_boxes() if str(b["id"]) == refs["review"]]
    start, end = image_to_client(browser, review, 24, 24), image_to_client(browser, review, 48, 32)
    drag(browser, start, end)
    corner = image_to_client(browser, review, 112, 48)
    drag(browser, image_to_client(browser, review, 96, 32), image_to_client(browser, review, 96, 32), steps=1)  # a click: select
    drag(browser, corner, image_to_client(browser, review, 120, 56))
    assert [b for b in browser.node_boxes() if str(b["id"]) == refs["review"]] == node_at   # the node did not move
    stored = json.loads(editor(browser, review)["corrections"])
    assert stored["images"][0]["image"] == snap["fingerprint"]
    assert [c["number"] for c in stored["images"][0]["items"]] == [1, 2]
    _, moved = queue_and_wait(browser, comfy_server, review)
    assert {refs["image"], refs["plan"], refs["ckpt"]} <= cached_nodes(moved)   # upstream stays cached
    assert not {refs["review"], refs["decode"], refs["sampler"]} & cached_nodes(moved)
    masks_moved = saved_masks(comfy_server, moved, refs["masks"])
    expected = (np.round(end) - np.round(start)) / scale       # the drag, in image pixels
    offset = centroid(masks_moved[0]) - centroid(masks_first[0])
    print(f"drag: expected {expected.round(3).tolist()} px, mask centroid moved {offset.round(3).tolist()} px")
    assert np.abs(offset - expected).max() <= CENTROID_PX
    assert np.abs(np.array(bbox(masks_moved[1])) - [80, 16, 120, 56]).max() <= CENTROID_PX  # the resize
    hover(browser, image_to_client(browser, review, 40, 20))  # the reason on hover (drawn, and the title)
    title = browser.js("return window.app.graph.getNodeById(arguments[0]).contexteditEditor.canvas.title", int(review))
    assert "1. [MASK] recolour the red square" in title and "reason: given by the user" in title, title
    shot = node_screenshot(browser, tmp_path / "plan_editor.png", [review, decode])
    print(f"editor screenshot: {shot}")

    # -- 3. flip instruction 2 to [NEG]: all-black mask, its region untouched in the sampled latent
    click(browser, '.contextedit-row[data-number="2"] .token', review)
    assert editor(browser, review)["items"][1]["executable"] is False
    _, flipped = queue_and_wait(browser, comfy_server, review)
    masks_flipped = saved_masks(comfy_server, flipped, refs["masks"])
    assert not masks_flipped[1].any()
    assert np.array_equal(masks_flipped[0], masks_moved[0])
    assert [d["empty"] for d in mask_view(browser, decode)["drawn"]] == [False, True, True]
    source = latent(comfy_server, flipped, refs["source"])
    region = (Ellipsis, slice(3, 6), slice(11, 14))  # latent cells inside box 2 ([80, 16, 120, 56] / 8), 1-cell margin
    before = (latent(comfy_server, moved, refs["sampled"]) - source)[region].abs()
    after = (latent(comfy_server, flipped, refs["sampled"]) - source)[region].abs()
    print(f"box 2 region, |sampled - source|: [MASK] mean {before.mean():.4f}, [NEG] max {after.max():.2e}")
    assert before.mean() > 0.05      # sampled while it was [MASK]
    # [NEG]: where the denoise mask is 0 every step returns the source latent, and Euler's last step
    # (sigma -> 0) lands on it; what is left is float32 rounding of x - (x - x0) with |x| up to ~100
    # (eps 1.2e-7 x 100 = 1.2e-5; 1e-4 leaves room for the latent scale in/out)
    assert after.max() < 1e-4
    corrections = editor(browser, review)["corrections"]

    # -- 4. reload the page: the corrections are still there and the same prompt is all cached
    browser.reload()
    set_view(browser)
    snap = editor(browser, review)
    assert snap["corrections"] == corrections and "2 correction(s) stored" in snap["status"], snap["status"]
    workflow = browser.graph_to_prompt()     # saved with the workflow and sent in the API prompt
    (node,) = [n for n in workflow["workflow"]["nodes"] if str(n["id"]) == refs["review"]]
    assert node["widgets_values"] == [corrections]
    assert workflow["output"][refs["review"]]["inputs"]["corrections"] == corrections
    from comfy_cli.workflow_to_api import convert_ui_to_api   # `comfy run --workflow` reads the saved file alike

    converted = convert_ui_to_api(workflow["workflow"], comfy_server.initial_object_info)
    assert converted[refs["review"]]["inputs"]["corrections"] == corrections
    _, again = queue_and_wait(browser, comfy_server, review)
    assert refs["review"] in cached_nodes(again)
    keys = ("instruction", "resolved", "executable", "boxes")
    shown = [{k: i[k] for k in keys} for i in editor(browser, review)["items"]]
    assert shown == [{k: i[k] for k in keys} for i in review_message(again, review)["plan"]["items"]]
    assert [i["executable"] for i in shown] == [True, False, False] and shown[1]["boxes"] == [[80, 16, 120, 56]]

    # -- 5. headless parity: the same JSON through POST /prompt (same pixels, another file name)
    headless = manual_graph(image_names[1], tiny_checkpoints.sd15_name, corrections=corrections, sampler=False,
                            prefix="editor_headless")
    entry = comfy_server.run(headless, timeout=300)
    assert headless.refs["review"] not in cached_nodes(entry)   # it ran, on the new LoadImage
    masks_headless = saved_masks(comfy_server, entry, headless.refs["masks"])
    assert all(np.array_equal(a, b) for a, b in zip(masks_headless, masks_flipped)) and len(masks_headless) == 3
    assert review_message(entry, headless.refs["review"])["plan"]["items"] == review_message(flipped, review)["plan"]["items"]
    assert browser.console_errors() == []


def test_vlm_stays_cached_while_the_artist_adds_a_box_flips_and_rewords_and_stale_corrections_drop(
        browser, comfy_server, tiny_vlm, image_names, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    graph = vlm_graph(image_names[0], "recolour the red square\nremove the moon")
    review, decode = open_graph(browser, graph, "contextedit_plan_editor_vlm.json")
    refs = graph.refs
    _, first = queue_and_wait(browser, comfy_server, review, timeout=600)
    model_item = review_message(first, review)["model_plan"]["items"][0]

    # select instruction 1, "+ Box", draw a box; make it [MASK] if the model said [NEG]; reword it
    click(browser, '.contextedit-row[data-number="1"] .text', review)
    click(browser, ".contextedit-add", review)
    drag(browser, image_to_client(browser, review, 16, 12), image_to_client(browser, review, 48, 44))
    if not model_item["executable"]:
        click(browser, '.contextedit-row[data-number="1"] .token', review)
    click(browser, '.contextedit-row[data-number="1"] input.resolved', review)
    (ActionChains(browser.driver).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL)
     .send_keys("paint the red square green", Keys.ENTER).perform())
    snap = editor(browser, review)
    assert snap["items"][0]["executable"] is True and snap["items"][0]["resolved"] == "paint the red square green"
    assert browser.js("""return window.app.graph.getNodeById(arguments[0]).contexteditEditor.root
                         .querySelector('.contextedit-row[data-number="1"] input.resolved').value""",
                      int(review)) == "paint the red square green"
    (added,) = snap["items"][0]["boxes"][-1:]
    assert np.abs(np.array(added) - [16, 12, 48, 44]).max() <= 1   # drawn with the pointer, rounded to pixels
    # a second box, deleted again with the Delete key: the box goes, the node stays
    boxes, nodes = len(snap["items"][0]["boxes"]), len(browser.node_boxes())
    click(browser, ".contextedit-add", review)
    drag(browser, image_to_client(browser, review, 70, 10), image_to_client(browser, review, 90, 30))
    assert len(editor(browser, review)["items"][0]["boxes"]) == boxes + 1
    ActionChains(browser.driver).send_keys(Keys.DELETE).perform()
    assert len(editor(browser, review)["items"][0]["boxes"]) == boxes and len(browser.node_boxes()) == nodes

    _, second = queue_and_wait(browser, comfy_server, review)
    cached = cached_nodes(second)
    print(f"second queue: execution_cached lists {sorted(cached, key=int)}; review {refs['review']}, "
          f"decode {refs['decode']}, VLM {refs['vlm']}, check {refs['check']}")
    assert {refs["image"], refs["vlm"], refs["check"]} <= cached       # the VLM was not called again
    assert not {refs["review"], refs["decode"]} & cached
    corrected = review_message(second, review)["plan"]["items"][0]
    assert corrected["executable"] and corrected["resolved"] == "paint the red square green"
    masks = saved_masks(comfy_server, second, refs["masks"])
    assert np.abs(np.array(bbox(masks[0])) - added).max() <= 1   # the box mask of integer corners: exact up to the drag's rounding
    assert np.abs(centroid(masks[0]) - [(added[0] + added[2]) / 2, (added[1] + added[3]) / 2]).max() <= CENTROID_PX

    # the instruction's words change: the VLM runs again and the correction is dropped, visibly
    browser.js("""const n = window.app.graph.getNodeById(arguments[0]);
                  n.widgets.find(w => w.name === 'instructions').value = 'recolour the red circle\\nremove the moon';""",
               int(refs["check"]))
    _, third = queue_and_wait(browser, comfy_server, review, timeout=600)
    assert refs["check"] not in cached_nodes(third)
    message = review_message(third, review)
    assert message["applied"] == [] and len(message["dropped"]) == 1 and "'recolour the red square'" in message["dropped"][0]
    assert message["plan"]["items"][0] == message["model_plan"]["items"][0]   # not applied to the new instruction
    snap = editor(browser, review)
    assert "Dropped on the last run" in snap["notes"] and "recolour the red square" in snap["notes"]
    browser.screenshot(tmp_path / "dropped.png")
    click(browser, ".contextedit-clear", review)
    assert editor(browser, review)["corrections"] == ""
    assert browser.console_errors() == []
