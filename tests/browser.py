"""A minimal headless-Chromium driver for page tests: the DevTools protocol over a pipe.

``chromium --headless=new --remote-debugging-pipe`` reads JSON commands (NUL-terminated) on fd 3
and writes replies and events on fd 4 — what Puppeteer's ``pipe: true`` does. No extra Python
package and no TCP port. Chromium itself comes from the system's packages
(``apt-get install chromium``; ``scripts/install.sh --test`` installs it where apt is available).

    with Browser() as b:
        page = b.open("file:///.../index.html")      # waits for the load event
        page.eval("document.title")
        page.errors                                  # console errors, uncaught exceptions, failed loads
        page.press("j"); page.press("?"); page.press("Tab", shift=True)   # real key events
        page.click("#download")                      # a real mouse click at the element's centre
        page.screenshot("shot.png")

Input goes through ``Input.dispatchKeyEvent`` / ``Input.dispatchMouseEvent``: the browser's own
event path (focus, default actions, trusted events), not ``element.dispatchEvent`` from script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    env = os.environ.get("NTT_CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, executable: str | None = None, *, width: int = 1400, height: int = 1000, timeout: float = 60):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("no Chromium found (apt-get install chromium)")
        self.size = (width, height)
        self.timeout = timeout
        self._id = 0
        self._buf = b""
        self.events: list[dict] = []

    def __enter__(self) -> Browser:
        self.profile = tempfile.mkdtemp(prefix="ntt-chromium-")
        to_child_r, self._to_child = os.pipe()  # we write commands; Chromium reads fd 3
        self._from_child, from_child_w = os.pipe()  # Chromium writes fd 4; we read
        args = [
            self.executable,
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--mute-audio",
            "--disable-dev-shm-usage",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "about:blank",
        ]

        # fds 3 and 4 for Chromium: bash (dash refuses fds > 9) sets them up and execs it
        shell = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}'
        self.proc = subprocess.Popen(
            [shutil.which("bash") or "bash", "-c", shell, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=(to_child_r, from_child_w),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float | None = None
    ) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str | None = None, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for m in self.events:
                if m.get("method") == method and (session is None or m.get("sessionId") == session):
                    self.events.remove(m)
                    return m
            self.events.append(self._read_message(deadline))

    def allow_downloads(self, folder: str) -> None:
        """Save downloads into ``folder`` (``Browser.downloadProgress`` events are reported)."""
        self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": folder, "eventsEnabled": True})

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.send("Emulation.setFocusEmulationEnabled", {"enabled": True}, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", session=session)
        return page


# key name -> (code, Windows virtual key code, text typed); letters, digits and "shift" come from _key()
_KEYS = {
    "Enter": ("Enter", 13, "\r"),
    "Tab": ("Tab", 9, ""),
    "Escape": ("Escape", 27, ""),
    "Backspace": ("Backspace", 8, ""),
    "ArrowLeft": ("ArrowLeft", 37, ""),
    "ArrowUp": ("ArrowUp", 38, ""),
    "ArrowRight": ("ArrowRight", 39, ""),
    "ArrowDown": ("ArrowDown", 40, ""),
    "PageUp": ("PageUp", 33, ""),
    "PageDown": ("PageDown", 34, ""),
    "Home": ("Home", 36, ""),
    "End": ("End", 35, ""),
    " ": ("Space", 32, " "),
    "[": ("BracketLeft", 219, "["),
    "]": ("BracketRight", 221, "]"),
    "/": ("Slash", 191, "/"),
    "?": ("Slash", 191, "?"),
}
SHIFT = 8


def _key(key: str, shift: bool) -> dict:
    """The ``Input.dispatchKeyEvent`` fields of one key as a US keyboard types it."""
    if len(key) == 1 and key.isalpha():
        code, vk, text = f"Key{key.upper()}", ord(key.upper()), key
        shift = shift or key.isupper()
    elif len(key) == 1 and key.isdigit():
        code, vk, text = f"Digit{key}", ord(key), key
    elif key in _KEYS:
        code, vk, text = _KEYS[key]
        shift = shift or key == "?"
    else:
        raise ValueError(f"no key mapping for {key!r}: add it to browser._KEYS")
    fields = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}
    if shift:
        fields["modifiers"] = SHIFT
    if text:
        fields.update(text=text, unmodifiedText=text)
    return fields


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    def eval(self, expression: str) -> Any:
        r = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        if "exceptionDetails" in r:
            raise BrowserError(
                f"{expression!r} threw: "
                f"{r['exceptionDetails'].get('exception', {}).get('description') or r['exceptionDetails']}"
            )
        return r["result"].get("value")

    def press(self, key: str, *, shift: bool = False) -> None:
        """Press and release ``key`` ("j", "A", "?", "Tab", "ArrowRight", ...) as the user would."""
        fields = _key(key, shift)
        down = dict(fields, type="keyDown" if "text" in fields else "rawKeyDown")
        self.browser.send("Input.dispatchKeyEvent", down, session=self.session)
        up = {k: v for k, v in fields.items() if k not in ("text", "unmodifiedText")}
        self.browser.send("Input.dispatchKeyEvent", dict(up, type="keyUp"), session=self.session)

    def type(self, text: str) -> None:
        for ch in text:
            self.press(ch)

    def click(self, selector: str, *, count: int = 1, at: tuple[float, float] = (0.5, 0.5)) -> None:
        """A real left click (``count`` 2: a double click) on the first element ``selector`` matches,
        scrolled into view first, at ``at`` (fractions of its width and height; the centre by default);
        error if there is none or it has no size."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
            "e.scrollIntoView({block: 'nearest', inline: 'nearest'}); const r = e.getBoundingClientRect(); "
            f"return [r.left + r.width * {float(at[0])}, r.top + r.height * {float(at[1])}, r.width, r.height]; }})()"
        )
        if not box:
            raise BrowserError(f"click: nothing matches {selector!r}")
        if box[2] <= 0 or box[3] <= 0:
            raise BrowserError(f"click: {selector!r} is not displayed (size {box[2]}x{box[3]})")
        x, y = box[0], box[1]
        send = self.browser.send
        send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y}, session=self.session)
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                send(
                    "Input.dispatchMouseEvent",
                    {"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": n},
                    session=self.session,
                )

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy; its value (BrowserError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def reload(self) -> None:
        """Reload the page and wait for its load event."""
        self.browser.events = [m for m in self.browser.events if m.get("method") != "Page.loadEventFired"]
        self.browser.send("Page.reload", {"ignoreCache": True}, session=self.session)
        self.browser.wait_event("Page.loadEventFired", session=self.session)

    def settle(self, seconds: float = 0.3) -> None:
        """Let pending events (image loads, console messages) arrive."""
        self.eval(f"new Promise(r => setTimeout(r, {int(seconds * 1000)}))")
        self.eval(
            "Promise.race([new Promise(r => setTimeout(r, 5000)), "  # lazy images off screen never load
            "Promise.all(Array.from(document.images).map(i => i.complete ? 0 : "
            "new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))])"
        )

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed network loads seen on this page so far."""
        out = []
        for m in self.browser.events:
            if m.get("sessionId") != self.session:
                continue
            p = m.get("params", {})
            meth = m.get("method")
            if meth == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif meth == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(
                    "console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
                )
            elif meth == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
            elif meth == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
        return out

    def screenshot(self, path: str) -> None:
        import base64

        r = self.browser.send("Page.captureScreenshot", {"format": "png"}, session=self.session)
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
