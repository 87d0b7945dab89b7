"""A minimal headless-Chromium driver over the DevTools protocol on a pipe (no dependency).

``chromium --remote-debugging-pipe`` reads NUL-terminated JSON commands on fd 3 and writes
replies and events on fd 4; this is all the browser test needs (load a page, run a script,
collect console errors, take a screenshot), without websockets, Selenium or Playwright.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

#: Binaries tried in order; DLTBENCH_CHROMIUM names another.
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium binary, or None."""
    named = os.environ.get("DLTBENCH_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    """The browser answered a command with an error, died, or did not answer in time."""


class Browser:
    """One headless Chromium and one page (tab) driven over the pipe."""

    def __init__(self, binary: str, profile_dir: Path, timeout: float = 60.0):
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()  # we write commands; the browser reads them on fd 3
        self._out_r, out_w = os.pipe()  # the browser writes on fd 4; we read

        def wire() -> None:  # in the child, before exec: put the pipe ends on fds 3 and 4
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(profile_dir / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        args = [
            binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile_dir}", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            preexec_fn=wire, close_fds=False,
        )  # fmt: skip
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    # --- the protocol ---------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """Send a command and wait for its reply; events seen meanwhile are kept."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._out_r], [], [], max(0.0, left))
            if not ready:
                raise CDPError(f"no answer from the browser in {self.timeout:.0f} s")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise CDPError(f"the browser closed the pipe (exit {self.proc.poll()})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\0")
        return json.loads(line)

    def wait_event(self, name: str) -> dict[str, Any]:
        """The next event ``name`` of this page (kept events first)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for k, ev in enumerate(self.events):
                if ev.get("method") == name and ev.get("sessionId") == self.session:
                    return self.events.pop(k)
            self.events.append(self._next(deadline))

    # --- what the test uses -----------------------------------------------------------------

    def viewport(self, width: int, height: int, mobile: bool = False, dark: bool = False) -> None:
        """Size the page's window and choose the colour scheme it is told the user prefers."""
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile,
        }, session=True)  # fmt: skip
        scheme = "dark" if dark else "light"
        self.send("Emulation.setEmulatedMedia",
                  {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
                  session=True)  # fmt: skip

    def load(self, url: str) -> list[str]:
        """Open ``url`` and wait for its load event; returns the errors it logged meanwhile."""
        self.events = [e for e in self.events if e.get("sessionId") != self.session]
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired")
        self.evaluate("new Promise(r => requestAnimationFrame(() => r(true)))")
        return self.errors()

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far on this page."""
        out = []
        for ev in self.events:
            if ev.get("sessionId") != self.session:
                continue
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
            elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") in (
                "error", "assert", "warning",
            ):  # fmt: skip
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif ev.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") in (
                "error", "warning",
            ):  # fmt: skip
                out.append(f"log: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
        return out

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a script run in the page (promises awaited)."""
        reply = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        }, session=True)  # fmt: skip
        if "exceptionDetails" in reply:
            raise CDPError(f"script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole page with ``full_page``), written to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self.send("Page.captureScreenshot", params, session=True)["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        """End the browser (politely, then for good)."""
        with contextlib.suppress(CDPError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log.close()
