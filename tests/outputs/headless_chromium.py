"""A real browser for the report's tests: Debian's `chromium`, headless, driven over the DevTools protocol.

`check_page(path)` loads a local HTML file and returns what a user would have seen go wrong: console errors
(`console.error`, uncaught exceptions, and the browser's own log errors such as a resource that failed to
load), images that did not load, and a screenshot of the whole page.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websocket
from PIL import Image

FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-allow-origins=*",
    "--window-size=1280,900",
)

IMAGES_CHECK = """(() => {
  const images = [...document.images];
  return {count: images.length,
          broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))};
})()"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    screenshot: bytes = b""

    def screenshot_array(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.screenshot)).convert("RGB"))


class _DevTools:
    def __init__(self, ws_url: str) -> None:
        self._ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self._next = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if any(event.get("method") == method for event in self.events):
            return
        while time.monotonic() < deadline:
            self._ws.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self._ws.recv())
            self.events.append(message)
            if message.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")

    def close(self) -> None:
        self._ws.close()


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(
                "console: " + " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            found.append(f"log: {entry['text']} {entry.get('url', '')}".strip())
    return found


def _stop(process: subprocess.Popen) -> None:
    """Ends the browser and every process of its group (helpers outlive the main process for a moment)."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def check_page(path: Path, timeout: float = 60) -> PageCheck:
    """Opens `path` in headless chromium, as a user opens a file from disk, and reports what went wrong."""
    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError(
            "chromium is not installed (make install puts it there as root: apt-get install chromium)"
        )
    with tempfile.TemporaryDirectory(prefix="camray-chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the renderers and helpers end with it
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not start (exit status {process.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.load(response)
            page = next(target for target in targets if target["type"] == "page")
            tools = _DevTools(page["webSocketDebuggerUrl"])
            try:
                for domain in ("Page", "Runtime", "Log"):
                    tools.call(f"{domain}.enable")
                tools.events.clear()
                tools.call("Page.navigate", url=path.resolve().as_uri())
                tools.wait_for("Page.loadEventFired", timeout)
                images = tools.call("Runtime.evaluate", expression=IMAGES_CHECK, returnByValue=True)["result"]["value"]
                shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                return PageCheck(
                    console_errors=_errors(tools.events),
                    images=images["count"],
                    broken_images=images["broken"],
                    screenshot=base64.b64decode(shot["data"]),
                )
            finally:
                tools.close()
        finally:
            _stop(process)


def require_browser() -> str | None:
    """Chromium's path; in CI (`CI` set) a missing browser is an error, elsewhere the caller skips."""
    executable = chromium_path()
    if executable is None and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError("chromium is missing in CI: `make test` installs it (apt-get install chromium) as root")
    return executable


def assert_not_blank(check: PageCheck) -> None:
    """A page that rendered shows text, charts and photos: many colours, and not only background."""
    pixels = check.screenshot_array()
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300, pixels.shape
    # One integer a pixel: `np.unique(..., axis=0)` over rows takes 30 times as long on a full-page screenshot.
    packed = (pixels[..., 0].astype(np.uint32) << 16) | (pixels[..., 1].astype(np.uint32) << 8) | pixels[..., 2]
    colours = len(np.unique(packed))
    inked = float((pixels.min(axis=-1) < 200).mean())
    assert colours > 1000 and inked > 0.05 and float(pixels.std()) > 20, (colours, inked, float(pixels.std()))


def render_ok(path: Path, screenshot_to: Path | None = None, docs_height: int = 1900) -> PageCheck:
    """Loads the page; fails on any console error or broken image, or a blank page. `screenshot_to` keeps the
    top of the screenshot (the summary, the charts and the first pictures) as documentation."""
    check = check_page(path)
    assert not check.console_errors, check.console_errors
    assert not check.broken_images, check.broken_images
    assert_not_blank(check)
    if screenshot_to is not None:
        shot = Image.open(io.BytesIO(check.screenshot)).convert("RGB")
        top = shot.crop((0, 0, shot.width, min(shot.height, docs_height)))
        # 256 colours: a third of the bytes in the repository, and the page's text and charts stay exact.
        top.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(screenshot_to, optimize=True)
    return check
