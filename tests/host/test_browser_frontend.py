"""The pack in the real web frontend (headless Chromium on the pinned comfyui_frontend_package).

The first checks of the browser suite: the frontend knows every node the pack registers, builds it
with the widgets the server declares, and shows no console error doing so.
"""

PACK_PREFIX = "ContextEdit"  # every node id the pack registers starts with it (DESIGN.md)


def pack_node_ids(object_info):
    return sorted(t for t in object_info if t.startswith(PACK_PREFIX))


def test_frontend_registers_every_pack_node_with_its_widgets(browser, comfy_server, tmp_path):
    info = comfy_server.initial_object_info
    ours = pack_node_ids(info)
    assert ours, "no ContextEdit node in /object_info"
    built = browser.js("""
        const out = {};
        for (const type of arguments[0]) {
          if (!(type in window.LiteGraph.registered_node_types)) { out[type] = null; continue; }
          const node = window.LiteGraph.createNode(type);
          out[type] = (node.widgets || []).map(w => w.name);
        }
        return out;
    """, ours)
    missing = [t for t, widgets in built.items() if widgets is None]
    assert not missing, f"the frontend does not know these pack nodes: {missing}"
    for node_type in ours:
        declared = info[node_type]["input_order"]
        inputs = {**info[node_type]["input"].get("required", {}), **info[node_type]["input"].get("optional", {})}
        widget_inputs = [name for section in ("required", "optional") for name in declared.get(section, [])
                         if isinstance(inputs[name][0], list) or inputs[name][0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        shown = [w for w in built[node_type] if w in widget_inputs]
        assert shown == widget_inputs, f"{node_type}: frontend widgets {built[node_type]} vs declared {widget_inputs}"
    browser.screenshot(tmp_path / "frontend.png")
    assert browser.console_errors() == []


def test_search_preview_prints_a_default_for_every_pack_combo(browser, comfy_server):
    """The node search box's preview prints each widget input's default (NodePreview.vue); a model
    list without one printed "undefined" for Load VLM's model_name on a server with no model
    installed. Every combo of every pack node gets a default the frontend shows."""
    ours = pack_node_ids(comfy_server.initial_object_info)
    shown = browser.js("""
        const out = {};
        for (const type of arguments[0]) {
          const data = window.LiteGraph.registered_node_types[type].nodeData;
          const inputs = {...(data.input.required || {}), ...(data.input.optional || {})};
          for (const [name, spec] of Object.entries(inputs)) {
            const combo = Array.isArray(spec[0]) || spec[0] === 'COMBO';
            if (combo) out[`${type}.${name}`] = spec[1] && spec[1].default !== undefined ? String(spec[1].default) : 'undefined';
          }
        }
        return out;
    """, ours)
    assert shown, "no pack combo found"
    assert [k for k, v in shown.items() if v in ("undefined", "")] == []
    assert shown["ContextEditLoadVLM.model_name"] != "undefined"
