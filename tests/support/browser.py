"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``):
no driver, no websocket library, only the standard library. Used by the browser test and by
``scripts/ui_screenshots.py``.

Chromium reads JSON commands, each ended by a NUL byte, on its fd 3 and answers on its fd 4.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    env = os.environ.get("WATTSUP_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page. ``init_script`` runs in every document before the
    page's own scripts (e.g. to preset local storage)."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000, init_script: str | None = None):
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="wattsup-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        args = [
            binary,
            "--headless=new",
            "--no-sandbox",  # CI containers run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]

        def fds():  # the pipe ends become the child's fd 3 (commands) and fd 4 (answers)
            hi_r, hi_w = os.dup(cmd_r), os.dup(res_w)
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            pass_fds=(3, 4),  # kept open: fds() runs before the child closes the others
            start_new_session=True,
        )
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        if init_script:
            self.page("Page.addScriptToEvaluateOnNewDocument", source=init_script)

    # -- protocol ---------------------------------------------------------------------------------

    def _send(self, msg: dict) -> None:
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")

    def _read(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._res_r], [], [], left)[0]:
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe (did it crash?)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, timeout_s: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        while True:
            reply = self._read(timeout_s)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)
                del self.events[:-200]

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    # -- page -------------------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        self.page("Page.navigate", url=url)

    def evaluate(self, expression: str):
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"script failed: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def html(self) -> str:
        return self.evaluate("document.documentElement ? document.documentElement.outerHTML : ''") or ""

    def wait_for(self, *needles: str, timeout_s: float = 60, settle_s: float = 1.0) -> str:
        """Poll until every needle is in the page's text; returns the text. After they appear,
        wait ``settle_s`` more for the rest of the page (charts, late requests)."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                time.sleep(settle_s)
                return self.text()
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise BrowserError(
            f"not on the page after {timeout_s:.0f} s: {missing}; page text starts: {text[:600]!r}"
        )

    def click_text(self, text: str, selector: str = "button, [role=tab], [role=radio], a, label") -> bool:
        """Click the first element matching ``selector`` whose text is ``text``; True if found."""
        js = (
            f"(() => {{ const els = [...document.querySelectorAll({json.dumps(selector)})]"
            f".filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)});"
            " if (!els.length) return false; els[0].click(); return true; })()"
        )
        return bool(self.evaluate(js))

    def screenshot(self, path: str | Path, full_page: bool = False, max_height: int = 4000) -> Path:
        """PNG of the viewport, or of the whole scrollable page (up to ``max_height`` px)."""
        params: dict = {"format": "png"}
        if full_page:
            h = self.evaluate(
                "Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight || 0), "
                "document.documentElement.scrollHeight)"
            )
            h = min(int(h or self.height), max_height)
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": self.width, "height": h, "scale": 1},
            )
        data = self.page("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout_s=5)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        for fd in (self._cmd_w, self._res_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
