"""Headless Chromium driven over the Chrome DevTools Protocol, for the report tests.

Chromium is started with ``--remote-debugging-pipe`` (the transport Playwright uses): CDP
messages are NUL-terminated JSON on file descriptors 3 (to the browser) and 4 (from it), so
no port, no websocket package and no race for a free port. Debian's ``chromium`` package is
what CI installs (``.ci/run``).

>>> with HeadlessChromium() as browser:                            # doctest: +SKIP
...     page = browser.load("report.html", width=1280, height=800)
...     page["errors"], page["images"], page["screenshot"]
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

#: Executable names tried in order (Debian: chromium; others: chromium-browser, google-chrome).
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: What the page reports after loading: every image, the page's size, the first screen.
_PROBE = """JSON.stringify({
  images: Array.from(document.images).map(img => {
    const box = img.getBoundingClientRect();
    return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
            naturalHeight: img.naturalHeight, top: box.top + window.scrollY,
            left: box.left + window.scrollX, width: box.width, height: box.height};
  }),
  scrollWidth: document.documentElement.scrollWidth,
  viewport: [window.innerWidth, window.innerHeight],
  headings: Array.from(document.querySelectorAll('h1, h2')).map(h => ({
    text: h.textContent, top: h.getBoundingClientRect().top + window.scrollY})),
})"""


def find_chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class HeadlessChromium:
    """A headless Chromium process and one CDP session to a blank page.

    Parameters
    ----------
    executable : str, optional
        Default: :func:`find_chromium`.
    timeout : float
        Seconds to wait for any one answer of the browser.
    """

    def __init__(self, executable: str | None = None, *, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError(f"no Chromium executable among {CANDIDATES}")
        self.timeout = timeout
        self._buffer, self._next, self._events = b"", 0, []

    # -- process ----------------------------------------------------------------------
    def __enter__(self):
        self._profile = tempfile.mkdtemp(prefix="bsym-chromium-")
        self.log = Path(self._profile) / "chromium.log"
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def on_fds_3_and_4():  # in the child, before exec: CDP reads fd 3, writes fd 4
            read = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            write = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(read, 3)
            os.dup2(write, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        with open(self.log, "wb") as log:
            self._process = subprocess.Popen(
                [self.executable, "--headless", "--no-sandbox", "--disable-gpu",
                 "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", f"--user-data-dir={self._profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=False,
                preexec_fn=on_fds_3_and_4)
        os.close(to_browser)
        os.close(from_browser)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.call("Target.attachToTarget",
                                      {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=True)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self._process.poll() is None:
                try:
                    self.call("Browser.close", timeout=5)
                except (OSError, RuntimeError, TimeoutError, EOFError):
                    pass
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol ---------------------------------------------------------------------
    def _receive(self, timeout) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"Chromium sent nothing for {timeout:.0f} s; its log: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError(f"Chromium closed the DevTools pipe (exit code "
                               f"{self._process.poll()}); its log: "
                               f"{self.log.read_text(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, *, session=False, timeout=None) -> dict:
        """Send one CDP command (to the page's session when ``session``) and return its
        result; events that arrive meanwhile are kept for :meth:`load`."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive(timeout or self.timeout)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._events.append(answer)

    # -- pages ------------------------------------------------------------------------
    def load(self, path, *, width: int = 1280, height: int = 800) -> dict:
        """Open ``path`` in a ``width`` x ``height`` window and report what happened.

        Returns
        -------
        dict
            ``errors`` (uncaught exceptions, console errors, browser log errors: list of
            str), ``images`` (per ``<img>``: natural and rendered size, position),
            ``scrollWidth``, ``viewport``, ``headings`` and ``screenshot`` (PNG bytes of
            the first screen).
        """
        self._events.clear()
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=True)
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            self._events.append(self._receive(max(deadline - time.monotonic(), 0.1)))
        probe = self.call("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True},
                          session=True)
        page = json.loads(probe["result"]["value"])
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=True)
        page["screenshot"] = base64.b64decode(shot["data"])
        page["errors"] = [_describe(e) for e in self._events if _is_error(e)]
        return page


def _is_error(event) -> bool:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        return True
    if method == "Runtime.consoleAPICalled":
        return params.get("type") in ("error", "assert")
    if method == "Log.entryAdded":
        return params.get("entry", {}).get("level") == "error"
    return False


def _describe(event) -> str:
    params = event.get("params", {})
    if event["method"] == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"exception: {details.get('text')} {details.get('exception', {}).get('description')}"
    if event["method"] == "Runtime.consoleAPICalled":
        return "console." + params.get("type", "?") + ": " + " ".join(
            str(a.get("value", a.get("description"))) for a in params.get("args", []))
    entry = params.get("entry", {})
    return f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
