"""A real browser on the real ComfyUI frontend, for the browser suite.

Headless Debian Chromium, driven with selenium through chromedriver, opens the frontend that the
pinned ``comfyui_frontend_package`` serves from a live test server (tests/host/server.py). The
helpers below talk to the frontend's own objects (``window.app``: its graph, canvas, graph-to-prompt
conversion and queue), the way an artist's clicks would reach them, and read back what the
frontend shows:

    with Browser(workdir) as browser:
        browser.open(server)
        load = browser.load_workflow(ui_json, "context_aware_edit.json")
        load["missing_node_types"]          # what the frontend's missing-nodes dialog would list
        browser.graph_to_prompt()["output"] # the API prompt the frontend builds
        browser.node_boxes()                # [{id, type, title, x, y, w, h}] as drawn
        prompt_id = browser.queue()         # through app.queuePrompt, like the Run button
        browser.screenshot(path)            # the window; canvas_screenshot(path): the canvas alone
        browser.open_templates("ContextEdit")  # the Templates browser's cards

``chromium_available()`` says whether the browser is installed; the browser tests skip with one
line when it is not, except under CI (``CI=true``), where a missing browser is a failure:
``.ci/run`` installs it.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = os.environ.get("CONTEXTEDIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CONTEXTEDIT_CHROMEDRIVER", "/usr/bin/chromedriver")

# Flags for a closed network and a root user: no sandbox, no background connections that the
# machine would refuse, a fresh profile per browser.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--hide-scrollbars", "--force-device-scale-factor=1",
)

# Console messages that say nothing about the pack: resources a fresh user folder does not have
# yet (the frontend asks for them and falls back), and the browser's own favicon request.
EXPECTED_CONSOLE_NOISE = (
    "/user.css", "/favicon.ico", "/api/userdata", "comfy.templates.json",
)

# What the pinned frontend logs when focus mode ends (its minimap remounts): see canvas_screenshot.
FOCUS_MODE_NOISE = "Attempted to cleanup event listeners for graph that was never set up"

# Settings a returning user has: no first-run template browser, no tutorial.
QUIET_SETTINGS = {
    "Comfy.TutorialCompleted": True,
}


def chromium_available():
    return os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER) and _selenium_available()


def _selenium_available():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


class BrowserError(RuntimeError):
    """The frontend did not come up, or a script in the page failed."""


class Browser:
    """One headless Chromium window (a context manager)."""

    def __init__(self, workdir, width=1600, height=1000):
        self.workdir = Path(workdir)
        self.width, self.height = width, height
        self.driver = None
        self.server = None
        self._profile = None
        self._console = []
        self._pending_console = []  # entries read while taking a canvas screenshot

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=self.workdir)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={self.width},{self.height}")
        options.add_argument(f"--user-data-dir={self._profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(CHROMEDRIVER, log_output=str(self.workdir / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_script_timeout(120)
        return self

    def stop(self):
        driver, self.driver = self.driver, None
        if driver is not None:
            try:
                driver.quit()
            except Exception:  # noqa: BLE001 - the browser may already be gone; nothing to save
                pass
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ page

    def open(self, server, settings=None, timeout=120.0):
        """Open the frontend of ``server`` as a returning user and wait until the app is ready."""
        self.server = server
        for key, value in {**QUIET_SETTINGS, **(settings or {})}.items():
            r = server.http.post(f"{server.url}/settings/{key}", data=json.dumps(value), timeout=30)
            r.raise_for_status()
        self.driver.get(server.url)
        self.wait_for("!!(window.app && window.app.graph && window.app.canvas && window.app.vueAppReady)",
                      timeout, "the ComfyUI frontend to start")
        # the extensions (ours included) are registered before the app reports ready; give the
        # first graph a frame to settle
        self.js("return new Promise(r => requestAnimationFrame(() => r(true)))")
        self._install_probes()
        return self

    def reload(self, timeout=120.0):
        """Reload the page (what an artist's F5 does); the frontend restores its open workflow."""
        self.driver.refresh()
        self.wait_for("!!(window.app && window.app.graph && window.app.canvas && window.app.vueAppReady)",
                      timeout, "the ComfyUI frontend to start again")
        self._install_probes()

    def _install_probes(self):
        # Record each POST /prompt answer the frontend's queue gets (its api.queuePrompt, wrapped
        # without changing what it sends or returns).
        self.js("""
            const api = window.app.api;
            if (!window.__contextedit_probe) {
              window.__contextedit_probe = {queued: []};
              const original = api.queuePrompt.bind(api);
              api.queuePrompt = async (...args) => {
                try {
                  const res = await original(...args);
                  window.__contextedit_probe.queued.push({ok: true, res});
                  return res;
                } catch (e) {
                  window.__contextedit_probe.queued.push({ok: false, error: String(e && e.message || e),
                                                         response: e && e.response || null});
                  throw e;
                }
              };
            }
        """)

    def js(self, script, *args):
        """Run ``script`` (a function body) in the page; a returned Promise is awaited."""
        wrapped = ("const done = arguments[arguments.length - 1];"
                   "const args = Array.prototype.slice.call(arguments, 0, -1);"
                   "Promise.resolve().then(() => (function() {" + script + "}).apply(null, args))"
                   ".then(v => done({ok: true, value: v}), e => done({ok: false, error: String(e && e.stack || e)}));")
        result = self.driver.execute_async_script(wrapped, *args)
        if not result.get("ok"):
            raise BrowserError(f"script failed in the page: {result.get('error')}")
        return result.get("value")

    def wait_for(self, expression, timeout=60.0, what=None, poll=0.25):
        """Wait until the JavaScript ``expression`` is truthy; returns its value."""
        t0 = time.monotonic()
        while True:
            try:
                value = self.driver.execute_script(f"return ({expression});")
            except Exception as error:  # noqa: BLE001 - the page may be navigating; retry
                value, last = None, error
            else:
                last = None
            if value:
                return value
            if time.monotonic() - t0 > timeout:
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what or expression}"
                                   + (f" (last error: {last})" if last else ""))
            time.sleep(poll)

    # ------------------------------------------------------------------ workflows

    def load_workflow(self, workflow, name="workflow.json"):
        """Load a UI-format workflow as the frontend's Open does; returns ``missing_node_types``
        (the types its missing-nodes dialog would list: the same test the frontend makes, a type
        absent from LiteGraph's registry) and the number of nodes it built. The dialogs stay shut."""
        missing = self.js("""
            const wf = arguments[0];
            const known = window.LiteGraph.registered_node_types;
            return [...new Set((wf.nodes || []).map(n => n.type).filter(t => !(t in known)))];
        """, workflow)
        self.js("return window.app.loadGraphData(arguments[0], true, true, arguments[1],"
                " {showMissingNodesDialog: false, showMissingModelsDialog: false}).then(() => true)",
                workflow, name)
        # wait for the frontend to size and draw the nodes
        self.js("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        return {"missing_node_types": list(missing), "node_count": self.js("return window.app.graph.nodes.length")}

    def graph_to_prompt(self):
        """The frontend's own graph-to-prompt conversion: {"output": API prompt, "workflow": UI json}."""
        return self.js("return window.app.graphToPrompt().then(p => JSON.parse(JSON.stringify(p)))")

    def queue(self, timeout=60.0):
        """Queue the open graph as the Run button does (app.queuePrompt); returns the prompt id.
        Raises BrowserError with the server's answer when the prompt was rejected."""
        before = self.js("return window.__contextedit_probe.queued.length")
        self.js("return window.app.queuePrompt(0, 1)")
        self.wait_for(f"window.__contextedit_probe.queued.length > {before}", timeout, "POST /prompt to answer")
        answer = self.js(f"return window.__contextedit_probe.queued[{before}]")
        if not answer.get("ok"):
            raise BrowserError(f"the frontend's POST /prompt was rejected: {answer.get('error')}\n"
                               f"{json.dumps(answer.get('response'), indent=1)[:4000]}")
        res = answer["res"]
        if res.get("node_errors"):
            raise BrowserError(f"node errors: {json.dumps(res['node_errors'], indent=1)[:4000]}")
        return res["prompt_id"]

    def node_boxes(self):
        """Every node's box on the canvas as the frontend sized it (graph coordinates, title bar
        included): [{id, type, title, x, y, w, h}]."""
        return self.js("""
            return window.app.graph.nodes.map(n => {
              const b = n.getBounding();
              return {id: n.id, type: n.type, title: n.title, mode: n.mode,
                      x: b[0], y: b[1], w: b[2], h: b[3]};
            });
        """)

    def groups(self):
        """Every group: {title, x, y, w, h, nodes: ids of the nodes inside it}."""
        return self.js("""
            return window.app.graph.groups.map(g => {
              g.recomputeInsideNodes();
              const b = g.getBounding ? g.getBounding() : g._bounding;
              const inside = [...(g._children || g.nodes || [])].filter(c => c && c.id !== undefined && c.type !== undefined)
                                                             .map(c => c.id);
              return {title: g.title, x: b[0], y: b[1], w: b[2], h: b[3], nodes: inside};
            });
        """)

    def canvas_view(self):
        """The canvas's zoom (scale) and offset, and its size in CSS pixels."""
        return self.js("""
            const c = window.app.canvas;
            return {scale: c.ds.scale, offset: [c.ds.offset[0], c.ds.offset[1]],
                    width: c.canvas.clientWidth, height: c.canvas.clientHeight};
        """)

    # ------------------------------------------------------------------ evidence

    def screenshot(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.js("window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true);")
        self.driver.save_screenshot(str(path))
        return path

    def open_templates(self, category=None, timeout=60.0):
        """Open the Templates browser as its sidebar button does; with ``category`` (the label of an
        entry in its navigation, e.g. a pack under Extensions), click it. Returns the cards shown,
        in order: [{name, title, description, thumbnail (src), thumbnail_loaded (its image loaded
        when the card scrolled into view)}]."""
        self.js("return window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        self.wait_for("document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length > 0",
                      timeout, "the Templates browser to show cards")
        if category is not None:
            first = self.js("return document.querySelector('[data-testid^=\"template-workflow-\"]').getAttribute('data-testid')")
            clicked = self.js("""
                const label = arguments[0];
                const el = [...document.querySelectorAll('span, a, button, li, div')]
                  .find(e => e.children.length === 0 && e.textContent.trim() === label);
                if (!el) return false;
                el.click();
                return true;
            """, category)
            if not clicked:
                raise BrowserError(f"no entry {category!r} in the Templates browser's navigation")
            self.wait_for("(document.querySelector('[data-testid^=\"template-workflow-\"]') || {getAttribute: () => null})"
                          f".getAttribute('data-testid') !== {json.dumps(first)}", timeout, f"the {category} page")
        # the thumbnails load lazily as a card scrolls into view (and are let go when it leaves):
        # scroll to each card in turn and note whether its image loaded
        seen = self.js("""
            const cards = [...document.querySelectorAll('[data-testid^="template-workflow-"]')];
            const loaded = (card) => { const img = card.querySelector('img');
                                       return !!(img && img.complete && img.naturalWidth > 0); };
            const seen = {};
            return cards.reduce((p, card) => p.then(() => new Promise(r => {
              card.scrollIntoView({block: 'center'});
              const t0 = Date.now();
              const poll = () => {
                if (loaded(card) || Date.now() - t0 > 8000) {
                  seen[card.getAttribute('data-testid')] = loaded(card);
                  r();
                } else setTimeout(poll, 100);
              };
              poll();
            })), Promise.resolve()).then(() => {
              if (cards.length) cards[0].scrollIntoView({block: 'center'});
              return new Promise(r => setTimeout(() => r(seen), 500));
            });
        """)
        cards = self.template_cards()
        for card in cards:
            card["thumbnail_loaded"] = bool(seen.get(f"template-workflow-{card['name']}"))
        return cards

    def template_cards(self):
        """The cards the Templates browser shows now, in order."""
        return self.js("""
            return [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(card => {
              const img = card.querySelector('img');
              const title = card.querySelector('h3');
              const description = card.querySelector('p');
              return {name: card.getAttribute('data-testid').slice('template-workflow-'.length),
                      title: title ? title.textContent.trim() : null,
                      description: description ? description.textContent.trim() : null,
                      thumbnail: img ? img.getAttribute('src') : null,
                      thumbnail_loaded: !!(img && img.complete && img.naturalWidth > 0)};
            });
        """)

    def close_dialogs(self, timeout=10.0):
        """Close the open dialog as a person would (Escape; else its close button)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        open_dialog = "document.querySelectorAll('[role=\"dialog\"]').length"
        ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()
        try:
            self.wait_for(f"{open_dialog} === 0", 3, "the dialog to close on Escape")
        except BrowserError:
            self.js("""
                const dialog = document.querySelector('[role="dialog"]');
                const close = dialog && [...dialog.querySelectorAll('button')].find(
                  b => /close/i.test(b.getAttribute('aria-label') || '') || b.querySelector('.pi-times, [class*="lucide--x"]'));
                if (close) close.click();
            """)
            self.wait_for(f"{open_dialog} === 0", timeout, "the dialog to close")

    def canvas_screenshot(self, path):
        """A screenshot of the canvas alone: the frontend's focus mode hides its menus, tabs,
        sidebars and minimap for the shot, the canvas info is off; the view does not move, and
        everything comes back afterwards. Leaving focus mode remounts the minimap, which makes the
        pinned frontend log FOCUS_MODE_NOISE (its cleanup finds no listeners it set up on the
        graph): that one message, logged during the shot, is dropped; any other is kept for
        console_errors()."""
        setting = "Comfy.Graph.CanvasInfo"
        info = self.js("return window.app.extensionManager.setting.get(arguments[0])", setting)
        self._pending_console.extend(self.driver.get_log("browser"))
        self.js("return window.app.extensionManager.setting.set(arguments[0], false)", setting)
        self.js("return window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        try:
            self.js("return new Promise(r => setTimeout(() => requestAnimationFrame(() => r(true)), 300))")
            return self.screenshot(path)
        finally:
            self.js("return window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
            self.js("return window.app.extensionManager.setting.set(arguments[0], arguments[1])", setting, info)
            self.js("return new Promise(r => setTimeout(() => requestAnimationFrame(() => r(true)), 300))")
            self._pending_console.extend(e for e in self.driver.get_log("browser")
                                         if FOCUS_MODE_NOISE not in e.get("message", ""))

    def console_errors(self, include_noise=False):
        """SEVERE console entries since the last call (less the expected noise, unless asked)."""
        entries, self._pending_console = self._pending_console + self.driver.get_log("browser"), []
        self._console.extend(entries)
        errors = [e for e in entries if e.get("level") == "SEVERE"]
        if not include_noise:
            errors = [e for e in errors if not any(n in e.get("message", "") for n in EXPECTED_CONSOLE_NOISE)]
        return errors
