"""Node help pages: the live server serves every registered node's page where the frontend asks.

The pinned frontend (comfyui_frontend_package 1.35.9, NodeHelpService.fetchCustomNodeHelp) takes
the pack folder from the node's python_module ("custom_nodes.<folder>", '@version' stripped), asks
/extensions/<folder>/docs/<NodeId>/<locale>.md first, then /extensions/<folder>/docs/<NodeId>.md,
and treats a text/html answer as missing; relative image paths are resolved against
/extensions/<folder>/docs/.
"""

import re

NODE_PREFIX = "ContextEdit"


def help_base(python_module):
    parts = (python_module or "").split(".")
    assert len(parts) >= 2 and parts[0] == "custom_nodes", python_module
    return f"/extensions/{parts[1].split('@')[0]}/docs/"


def test_every_node_has_a_help_page_where_the_frontend_looks(comfy_server):
    info = comfy_server.initial_object_info
    ours = {k: v for k, v in info.items() if k.startswith(NODE_PREFIX)}
    assert len(ours) >= 13, sorted(ours)
    problems = []
    for node_id, schema in sorted(ours.items()):
        base = help_base(schema["python_module"])
        r = comfy_server.http.get(f"{comfy_server.url}{base}{node_id}.md", timeout=30)
        if r.status_code != 200 or "text/html" in r.headers.get("content-type", ""):
            problems.append(f"{node_id}: GET {base}{node_id}.md -> {r.status_code} {r.headers.get('content-type')}")
            continue
        text = r.text
        if not text.startswith(f"# {schema['display_name']}\n"):
            problems.append(f"{node_id}: the page does not start with the node's display name")
        inputs = [n for section in ("required", "optional") for n in (schema["input"].get(section) or {})]
        for name in inputs + list(schema["output_name"]):
            if f"`{name}`" not in text:
                problems.append(f"{node_id}: '{name}' is not on its help page (re-run tools/make_help_pages.py)")
        for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            img = comfy_server.http.get(f"{comfy_server.url}{base}{image}", timeout=30)
            if img.status_code != 200 or img.headers.get("content-type") != "image/png":
                problems.append(f"{node_id}: picture {image} -> {img.status_code} {img.headers.get('content-type')}")
    assert not problems, "\n".join(problems)
