"""The tiny profile's report in a real browser (headless Chromium through the DevTools protocol): every image
loads, nothing is logged as an error, no request leaves the machine; screenshots of the first screen and of
the plots section are saved (into $NLILAB_SCREENSHOT_DIR when set, else the test's temporary folder).

Chromium is Debian's `chromium` package (`make browser` installs it when run as root); without it the test
skips and says so.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
WIDTH, HEIGHT = 1360, 900


class Chromium:
    """Just enough of the DevTools protocol: navigate, collect errors, evaluate, screenshot."""

    def __init__(self, profile_dir: Path):
        self.proc = subprocess.Popen(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile_dir}",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile_dir / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 60 s")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        import websocket

        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params):
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(event)

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        time.sleep(0.5)  # late console messages
        self.call("Runtime.evaluate", expression="1")  # drains pending events

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, clip: dict | None = None) -> None:
        params = {"format": "png", "captureBeyondViewport": clip is not None}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing what may never have opened
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


IMAGES = "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; `make browser` installs it as root)")
    pytest.importorskip("websocket", reason="websocket-client is needed to talk to Chromium")
    with tempfile.TemporaryDirectory(prefix="nlilab-chromium-", ignore_cleanup_errors=True) as folder:
        chrome = Chromium(Path(folder))
        yield chrome
        chrome.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("NLILAB_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _local(urls: list[str]) -> list[str]:
    """Requests that left the machine (anything but the file itself, data URIs and the blank page)."""
    return [u for u in urls if not u.startswith(("file://", "data:", "about:"))]


def test_report_renders_with_every_image_and_no_error(tiny_run, browser, shots):
    page = tiny_run.report
    browser.open(page.as_uri())
    images = browser.evaluate(IMAGES)
    assert images, "the report has no image"
    broken = [i["alt"] for i in images if not i["complete"] or i["width"] == 0]
    assert not broken, f"images that did not load: {broken}"
    assert not browser.errors(), browser.errors()
    assert not _local(browser.requests()), _local(browser.requests())
    assert browser.evaluate("document.querySelectorAll('#results ~ div table tr').length") > 1
    browser.screenshot(shots / "report_first_screen.png")
    box = browser.evaluate("(() => { const a = document.getElementById('plots').getBoundingClientRect();"
                           " const b = document.getElementById('findings').getBoundingClientRect();"
                           " return {x: 0, y: a.top + window.scrollY, width: document.documentElement.scrollWidth,"
                           " height: Math.min(6000, b.top - a.top)}; })()")
    browser.screenshot(shots / "report_plots.png", clip=box)
    assert (shots / "report_first_screen.png").stat().st_size > 10_000
    assert (shots / "report_plots.png").stat().st_size > 10_000


def test_notebook_pages_render_without_error_with_code_folded(tiny_run, browser):
    pages = sorted((tiny_run.reports_dir / tiny_run.profile / "notebooks").glob("*.html"))
    assert pages
    for page in pages:
        browser.open(page.as_uri())
        assert not browser.errors(), (page.name, browser.errors())
        assert not _local(browser.requests()), (page.name, _local(browser.requests()))
        broken = [i["alt"] for i in browser.evaluate(IMAGES) if i["width"] == 0]
        assert not broken, (page.name, broken)
        # Code is folded: the code blocks exist, but none is visible until its <details> is opened.
        counts = browser.evaluate("({cells: document.querySelectorAll('details.nl-code').length,"
                                  " open: document.querySelectorAll('details.nl-code[open]').length,"
                                  " visible: Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea'))"
                                  ".filter(e => e.checkVisibility()).length})")
        assert counts["cells"] > 0 and counts["open"] == 0 and counts["visible"] == 0, (page.name, counts)
        browser.evaluate("document.querySelector('details.nl-code').open = true")
        assert browser.evaluate("Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea'))"
                                ".filter(e => e.checkVisibility()).length") == 1
