"""Headless Chromium (Debian's ``chromium`` package, installed by scripts/setup.sh) driven over the
Chrome DevTools Protocol with ``websocket-client``: open pages, evaluate JavaScript, take
screenshots, and collect every JavaScript error (uncaught exceptions, console errors, log errors)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """One headless Chromium with one page. Use as a context manager; ``errors`` lists every
    JavaScript error seen so far (as text)."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 2000) -> None:
        self.profile, self.width, self.height = profile, width, height
        self.errors: list[str] = []
        self._id = 0

    def __enter__(self) -> "Browser":
        import websocket

        from evolve import owner

        # Chromium puts its singleton socket in a directory of its own under TMPDIR
        # (org.chromium.Chromium.XXXXXX) and a killed browser leaves it there. This process's scratch
        # directory is removed at exit and swept after a kill; a test's tmp_path would make the
        # socket's path too long for a Unix socket (108 bytes).
        env = {**os.environ, "TMPDIR": str(owner.scratch())}
        self.proc = subprocess.Popen(
            [chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-extensions", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):  # Chromium writes the port once it listens (a bounded wait, not a timing)
            if port_file.exists() and port_file.read_text().strip():
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append(f"{d.get('text')} {(d.get('exception') or {}).get('description', '')}".strip())
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                             for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")

    def call(self, method: str, **params) -> dict:
        """Send one CDP command and return its result, handling events that arrive meanwhile."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def wait_event(self, method: str) -> dict:
        """Handle messages until the event ``method`` arrives; returns its params."""
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg.get("params", {})
            self._event(msg)

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for its load event."""
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        """The value of ``expression`` evaluated in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """Click the first element matching ``selector`` and wait for the page it opens to load."""
        self.call("Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)}).click()")
        self.wait_event("Page.loadEventFired")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page at ``path``."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
