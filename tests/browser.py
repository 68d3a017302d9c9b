"""A real headless browser for tests: Debian's ``chromium`` driven by ``chromedriver`` over the W3C
WebDriver protocol (plain HTTP + JSON, so the standard library is the whole client; no selenium).

Install the browser with ``apt-get install -y chromium chromium-driver`` (``.ci/install-system-packages``).
Chromium runs with a new empty profile and every background service off, because the test machines
have no network and Chromium otherwise stalls on it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["Browser", "INSTALL", "find_browser"]

INSTALL = "apt-get install -y chromium chromium-driver (Debian/Ubuntu; or run .ci/install-system-packages)"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


def find_browser() -> tuple[str, str] | None:
    """``(chromium binary, chromedriver)`` when both are installed, else None."""
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if os.path.exists(p)), None)
    # Debian's /usr/bin/chromium is a shell wrapper; the driver wants the binary itself
    binary = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                   if p and os.path.exists(p)), None)
    return None if driver is None or binary is None else (binary, driver)


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One headless Chromium session; use as a context manager (the browser and driver always stop).

    Examples (needs chromium)::

        with Browser() as b:
            b.open(Path("page.html"))
            b.text("#headline")
    """

    def __init__(self, width: int = 1280, height: int = 1000, timeout: float = 60.0) -> None:
        found = find_browser()
        if found is None:
            raise WebDriverError(f"chromium and chromedriver are not installed; {INSTALL}")
        self.binary, self.driver = found
        self.size = (width, height)
        self.timeout = timeout
        self.profile = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = ""

    # ------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Browser":
        self.profile = tempfile.mkdtemp(prefix="depass-chromium-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([self.driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    self._call("GET", "/status")
                    break
                except (urllib.error.URLError, ConnectionError):
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise WebDriverError("chromedriver did not start") from None
                    time.sleep(0.1)
            options = {"binary": self.binary, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                                       f"--window-size={self.size[0]},{self.size[1]}"]}
            caps = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.session:
                self._call("DELETE", f"/session/{self.session}")
        except Exception:  # the browser may already be gone; the driver is stopped below either way
            pass
        finally:
            if self.proc is not None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    # ------------------------------------------------------------------------------ protocol
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            detail = json.loads(e.read() or b"{}").get("value", {})
            raise WebDriverError(f"{method} {path}: {detail.get('error')}: {detail.get('message', '')[:500]}") from None

    def _s(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    # ------------------------------------------------------------------------------ actions
    def open(self, page: Path) -> None:
        """Load a local file and wait until its script has set ``document.body.dataset.ready``."""
        self._s("POST", "/url", {"url": page.resolve().as_uri()})
        deadline = time.monotonic() + self.timeout
        while not self.js("return document.body && document.body.dataset.ready === 'true'"):
            if time.monotonic() > deadline:
                raise WebDriverError(f"{page} never became ready; browser log: {self.log()}")
            time.sleep(0.05)

    def js(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments[i]`` are the args) in the page; returns its value."""
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        """The element reference of the first match of a CSS selector (raises if none)."""
        return self._s("POST", "/element", {"using": "css selector", "value": css})[_ELEMENT]

    def click(self, css: str) -> None:
        """A real (WebDriver) click on the first match of ``css``."""
        self._s("POST", f"/element/{self.find(css)}/click", {})

    def select(self, css: str, value: str) -> None:
        """Choose the ``<option value=...>`` of a ``<select>`` by clicking it, as a user would."""
        self.click(css)
        self.click(f"{css} option[value='{value}']")

    def text(self, css: str) -> str:
        """The rendered text of the first match of ``css``."""
        return self._s("GET", f"/element/{self.find(css)}/text")

    def texts(self, css: str) -> list[str]:
        """The text of every match, in document order."""
        return self.js("return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", css)

    def log(self) -> list[dict[str, Any]]:
        """The browser console entries since the last call (level, message, source)."""
        return self._s("POST", "/se/log", {"type": "browser"})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._s("GET", "/screenshot")))
        return path
