"""Open every kind of HTML output in a real, headless Chromium with no network.

Checks: no console errors or uncaught exceptions; every plot rendered (plotly's SVG, or its WebGL
canvas for 3D); a screenshot that is not blank; no request for anything but the file itself (the
default file references no outside URL). Driven over the DevTools protocol with `websocket-client`.
Skipped when chromium (Debian's package: /usr/bin/chromium) or websocket-client is missing.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_render import make_results
from test_render_analysis import make_roughness

CHROMIUM = os.environ.get("LANDSCAPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    # 3D surfaces need WebGL; with no GPU, Chromium's software renderer provides it
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--remote-allow-origins=*",
    "--window-size=1280,1600",
    "--remote-debugging-port=0",
]


class Browser:
    """A headless Chromium and one page, spoken to over the DevTools protocol."""

    def __init__(self, exe: str):
        websocket = pytest.importorskip("websocket", reason="websocket-client not installed")
        self.profile = tempfile.mkdtemp(prefix="landscape-chromium-")
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.fail("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            time.sleep(0.05)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return res.get("result", {}).get("value")

    def open(self, path: Path, timeout: float = 40.0) -> None:
        """Navigate to a file and wait until the page has loaded and every plot has drawn."""
        self.events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.evaluate(
                "(() => { const f = [...document.querySelectorAll('div.figure')];"
                " return {ready: document.readyState, n: f.length,"
                " drawn: f.filter(d => d.querySelector('.main-svg') && d._fullLayout).length}; })()"
            )
            if state and state["ready"] == "complete" and state["n"] > 0 and state["drawn"] == state["n"]:
                time.sleep(0.3)  # let WebGL scenes paint
                return
            time.sleep(0.2)
        raise AssertionError(f"{path.name}: plots did not render in {timeout:.0f} s: {state}")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and log errors seen since the last `open`."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(
                    "console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
                )
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    b = Browser(CHROMIUM)
    yield b
    b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Every HTML output the CLI writes, from synthetic results files (2D with NaN, 1D, hostile metadata)."""
    from landscape.cli import main

    d = tmp_path_factory.mktemp("html")
    grid = make_results(d / "grid.h5")
    line = make_results(d / "line.h5", dims=1)
    evil = make_results(d / "evil.h5", evil=True)
    runs = {
        "plot-all": ["plot", grid, "--kind", "all"],  # contour lines, filled, heatmap, 3D surface, lines
        "plot-contour-log": ["plot", grid, "--kind", "contour", "--log"],
        "plot-line": ["plot", line],
        "compare": ["compare", grid, evil],
        "report": ["report", grid, line, evil],
        "plot-roughness": ["plot", make_roughness(d / "rough.h5")],
    }
    out = {}
    for name, args in runs.items():
        path = d / f"{name}.html"
        try:
            main([str(a) for a in args] + ["-o", str(path)])
        except SystemExit as exc:
            assert not exc.code, f"{name}: exit {exc.code}"
        out[name] = path
    return out


NAMES = ["plot-all", "plot-contour-log", "plot-line", "compare", "report", "plot-roughness"]


@pytest.mark.parametrize("name", NAMES)
def test_html_renders_offline_without_errors(browser, pages, name):
    path = pages[name]
    browser.open(path)
    assert browser.problems() == []
    outside = [u for u in browser.requests() if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert outside == [], f"{name} asked the network for {outside}"
    n = browser.evaluate("document.querySelectorAll('div.figure').length")
    drawn = browser.evaluate(
        "[...document.querySelectorAll('div.figure')].filter(d => d.querySelector('.main-svg') &&"
        " (d.querySelector('.contour, .heatmaplayer image, .scatterlayer .trace, .gl-container canvas, .hm'))).length"
    )
    assert n >= 1 and drawn == n
    img = browser.screenshot()
    box = browser.evaluate(
        "(() => { const r = document.querySelector('div.figure').getBoundingClientRect();"
        " return [r.top + window.scrollY, r.bottom + window.scrollY, r.left, r.right]; })()"
    )
    top, bottom, left, right = (int(v) for v in box)
    keep = os.environ.get("LANDSCAPE_SCREENSHOTS")  # a folder: keep the screenshots to look at
    if keep:
        from PIL import Image

        Path(keep).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(Path(keep) / f"{name}.png")
    # not blank: many distinct colours, and ink on more than a sliver of the page
    fig = img[top:bottom, left:right]
    colours = len(np.unique(fig[::2, ::2].reshape(-1, 3), axis=0))
    ink = float((fig.min(axis=2) < 200).mean())
    assert colours > 50 and ink > 0.01, f"{name}: screenshot looks blank ({colours} colours, {ink:.1%} ink)"
    # markup in a results file's metadata (compare, report) is shown as text and never runs
    assert browser.evaluate("window.__pwned === undefined && !document.querySelector('script[data-evil]')")
    if name == "report":
        assert "<script data-evil>" in browser.evaluate("document.body.innerText")


def test_default_html_references_no_outside_url(pages):
    import plotly.offline

    bundle = plotly.offline.get_plotlyjs()
    for name, path in pages.items():
        html = path.read_text(encoding="utf-8")
        assert html.count(bundle) == 1, f"{name}: plotly.js not embedded exactly once"
        rest = html.replace(bundle, "")  # plotly.js's own source mentions URLs it never loads here
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", rest, flags=re.I), name
        assert "<link" not in rest and "@import" not in rest and "url(http" not in rest, name
        assert rest.count("<script") == rest.count("</script>")
