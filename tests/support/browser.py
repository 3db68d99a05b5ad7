"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), for dashboard tests.

No selenium or playwright: one ``websockets`` connection to the browser endpoint, pages
attached as flat sessions on it, synchronous request/response by message id. Chromium
runs in its own session (process group), registered with ``tests.support.procs`` so that
it is killed with everything else if the caller never closes it.

    with Chromium(tmp_path) as browser:
        page = browser.new_page()
        page.goto("http://127.0.0.1:8000/")
        page.wait("document.readyState === 'complete'", 10)
"""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support import procs
from tests.support.wait import wait_for

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "chrome", "headless_shell")
PROBE_JS = Path(__file__).with_name("dashboard_probe.js")


def find_chromium() -> str | None:
    """A Chromium/Chrome binary on PATH, or None (Debian: ``apt-get install chromium``)."""
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


class CDPError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium with a fresh profile under ``workdir``; ``close()`` kills it."""

    def __init__(self, workdir: Path, binary: str | None = None,
                 size: tuple[int, int] = (1280, 1000)) -> None:
        found = binary or find_chromium()
        if found is None:
            raise FileNotFoundError("no chromium binary on PATH (apt-get install chromium)")
        self.binary = found
        self.workdir = workdir
        self.size = size
        self.profile = workdir / "chromium-profile"
        self.log_path = workdir / "chromium.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._exits = contextlib.ExitStack()
        self._ids = itertools.count(1)
        # Events (console messages, exceptions, crashes), newest last, per session id.
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        args = [
            self.binary, "--headless=new", "--no-sandbox",  # root cannot use the sandbox
            "--remote-debugging-port=0",  # Chromium picks a free port, written to port_file
            f"--user-data-dir={self.profile}", f"--window-size={self.size[0]},{self.size[1]}",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--mute-audio", "--password-store=basic",
            # A page measured or tested must not be throttled as a background tab would be.
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "about:blank",
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        procs.register(self._proc, group=True)
        proc = self._proc

        def endpoint() -> str | None:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}: {self.log_tail()}")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) >= 2 else None

        try:
            url = wait_for(endpoint, 30, message="chromium DevTools endpoint")
            self._ws = self._exits.enter_context(
                connect(url, max_size=2**27, open_timeout=10, ping_interval=None))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._ws = None
        self._exits.close()
        if self._proc is not None:
            procs.terminate(self._proc, 5, group=True)
            self._proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 60) -> dict[str, Any]:
        """One CDP command; returns its ``result`` (raises CDPError on an ``error``)."""
        if self._ws is None:
            raise RuntimeError("chromium is not running")
        ident = next(self._ids)
        msg: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        reply = self._read(lambda m: m.get("id") == ident, timeout, f"an answer to {method}")
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        """The params of the next ``method`` event (one already received counts)."""
        for ev in list(self.events):
            if ev.get("method") == method:
                self.events.remove(ev)
                return dict(ev.get("params", {}))
        return dict(self._read(lambda m: m.get("method") == method, timeout, method)["params"])

    def _read(self, done: Callable[[dict[str, Any]], bool], timeout: float,
              what: str) -> dict[str, Any]:
        """Messages until ``done(message)``; events read meanwhile are kept in ``events``."""
        assert self._ws is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no CDP {what} in {timeout} s")
            msg = json.loads(self._ws.recv(timeout=left))
            if done(msg):
                return dict(msg)
            if "method" in msg:
                self.events.append(msg)

    def start_trace(self, categories: Sequence[str]) -> None:
        self.send("Tracing.start", {"transferMode": "ReturnAsStream", "traceConfig": {
            "includedCategories": list(categories), "excludedCategories": ["*"]}})

    def stop_trace(self) -> list[dict[str, Any]]:
        """End the trace started by start_trace; its events (Trace Event Format)."""
        self.send("Tracing.end")
        handle = self.wait_event("Tracing.tracingComplete")["stream"]
        chunks = []
        while True:
            part = self.send("IO.read", {"handle": handle, "size": 1 << 22})
            data = part.get("data", "")
            chunks.append(base64.b64decode(data) if part.get("base64Encoded") else data.encode())
            if part.get("eof"):
                break
        self.send("IO.close", {"handle": handle})
        trace = json.loads(b"".join(chunks))
        return list(trace["traceEvents"] if isinstance(trace, dict) else trace)

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, session["sessionId"])
        page.call("Runtime.enable")  # console messages and uncaught exceptions become events
        page.call("Page.enable")
        return page


class Page:
    """One tab, addressed through its CDP session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression (promises are awaited), as JSON."""
        res = self.browser.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        }, self.session, timeout)
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression[:80]!r}: {text}")
        return res.get("result", {}).get("value")

    def apply(self, function: str, *args: Any) -> Any:
        """Call a JavaScript function (source text) with JSON arguments; its value."""
        return self.evaluate(f"({function})({', '.join(json.dumps(a) for a in args)})")

    def wait(self, expression: str, timeout: float, message: str = "") -> Any:
        """Evaluate ``expression`` until it is truthy; return that value."""
        return wait_for(lambda: self.evaluate(expression), timeout, interval=0.02,
                        message=message or expression)

    def add_init_script(self, source: str) -> None:
        """Run ``source`` in every new document of this page, before the page's own scripts."""
        self.call("Page.addScriptToEvaluateOnNewDocument", source=source)

    def goto(self, url: str) -> None:
        res = self.call("Page.navigate", url=url)
        if res.get("errorText"):
            raise CDPError(f"navigate {url}: {res['errorText']}")

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors this page reported so far."""
        out = []
        for ev in self.browser.events:
            if ev.get("sessionId") != self.session:
                continue
            params = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                out.append(d.get("exception", {}).get("description") or d.get("text", "?"))
            elif ev["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description")))
                                    for a in params.get("args", [])))
        return out


def open_dashboard(browser: Chromium, url: str) -> Page:
    """A new page with the probe (``window.__probe``, see dashboard_probe.js) on the dashboard."""
    page = browser.new_page()
    page.add_init_script(PROBE_JS.read_text())
    page.goto(url)
    return page
