"""The dashboard in a real (headless) Chromium: snapshot, live rows, the stale banner, resume.

Skipped when no Chromium/Chrome binary is on PATH (``apt-get install chromium``); the
suite never installs one. Probe results are injected (no prober), each one a transition
(rise = fall = 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Chromium, Page, find_chromium, open_dashboard
from tests.support.vigil import Stack
from tests.support.wait import free_port, wait_for

# CI installs Chromium and sets VIGIL_REQUIRE_BROWSER=1: there, a missing browser fails
# the test instead of skipping it.
pytestmark = pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("VIGIL_REQUIRE_BROWSER"),
    reason="no chromium binary on PATH (apt-get install chromium): the dashboard is "
           "tested in a real browser")

IDS = ("db-a", "db-b", "db-c", "db-d")
KINDS = ("total", "running", "error", "unknown")

# What the page shows, read in one evaluation.
SHOWN = """(kinds) => ({
  chips: Object.fromEntries(kinds.map((k) => [k, document.getElementById('n-' + k).textContent])),
  rows: Object.fromEntries([...document.querySelectorAll('#rows tr.row')]
    .map((tr) => [tr.dataset.id, tr.querySelector('.badge').textContent])),
  banner: document.getElementById('banner').hidden ? null
    : document.getElementById('banner-text').textContent,
  conn: document.getElementById('conn').textContent,
})"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    with Chromium(tmp_path) as b:
        yield b


def shown(page: Page) -> dict[str, Any]:
    return dict(page.apply(SHOWN, KINDS))


def wait_shown(page: Page, want: dict[str, Any], timeout: float, what: str) -> None:
    def same() -> bool:
        got = shown(page)
        assert got == want, f"page shows {got}"
        return True

    wait_for(same, timeout, message=what)


def server_view(stack: Stack) -> dict[str, Any]:
    """What the page should show when live: the REST summary and each instance's status."""
    return {"chips": {k: str(v) for k, v in stack.get("/api/summary").items() if k in KINDS},
            "rows": {i["id"]: i["status"] for i in stack.get("/api/instances")["instances"]},
            "banner": None, "conn": "live"}


def test_dashboard_shows_live_state_goes_stale_and_resumes_with_since(
        service_factory, redis_server, tmp_path, prefix, browser):
    nobody = free_port()  # nothing is probed: results are injected
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": i, "host": "127.0.0.1", "port": nobody, "rise": 1, "fall": 1}
                   for i in IDS])
    try:
        stack.start("state", "gateway")
        stack.flap("db-a", 1)  # unknown → running
        stack.flap("db-b", 2)  # unknown → running → error
        page = open_dashboard(browser, f"http://127.0.0.1:{stack.port}/")

        # The snapshot: every row and the summary as the REST API has them, no banner.
        page.wait("window.__probe && __probe.shown", 15, "the snapshot in the table")
        want = server_view(stack)
        assert want["chips"] == {"total": "4", "running": "1", "error": "1", "unknown": "2"}
        wait_shown(page, want, 5, "live and as REST says")
        # The recent changes from before the page opened, newest first.
        page.wait("document.querySelectorAll('#feed li').length === 3", 5, "history in the feed")
        assert page.evaluate("[...document.querySelectorAll('#feed li .feed-name')]"
                             ".map((e) => e.title)") == ["db-b", "db-b", "db-a"]

        # A live transition changes its row (highlighted for a while) and the counts.
        [before_outage] = stack.flap("db-c", 1)  # unknown → running
        page.wait("document.querySelector('tr[data-id=\"db-c\"] .badge').textContent"
                  " === 'running'", 5, "db-c running")
        assert page.evaluate("document.querySelector('tr[data-id=\"db-c\"]').className") == (
            "row st-running flash")
        wait_shown(page, server_view(stack), 5, "counts after the transition")

        # Gateway down: the banner says the data may be stale, and the rows stay as they were.
        stack.services["gateway"].stop()
        page.wait("!document.getElementById('banner').hidden", 10, "the banner")
        down = shown(page)
        assert down["banner"].startswith("Disconnected"), down
        assert "stale" in down["banner"], down
        assert down["conn"] == "offline", down
        missed = stack.flap("db-a", 1) + stack.flap("db-d", 1)  # running → error, unknown → running
        assert shown(page)["rows"]["db-a"] == "running"  # the page cannot know yet

        # Gateway back: the page reconnects by itself, with `since`, and catches up.
        stack.start("gateway")
        want = server_view(stack)
        assert want["rows"]["db-a"] == "error" and want["rows"]["db-d"] == "running"
        wait_shown(page, want, 20, "banner gone and the missed transitions shown")
        sockets = page.evaluate("__probe.sockets")
        # Same document throughout (a reload would have started a new __probe).
        first, *retries = sockets
        assert "since" not in first["url"] and first["types"][0] == "snapshot", first
        assert retries, sockets
        assert all(s["url"].endswith(f"/ws?since={before_outage}") for s in retries), sockets
        # The connection that made it got exactly the missed transitions: no snapshot.
        assert retries[-1]["types"] == ["transition"] * len(missed), retries[-1]
        page.wait("!document.querySelector('tr.flash')", 5, "highlights gone")
        assert page.errors() == []
    finally:
        stack.close()


def test_dashboard_with_a_token_takes_it_out_of_the_address_bar_and_survives_a_reload(
        service_factory, redis_server, tmp_path, prefix, browser):
    token = "dash-tok-9f3"
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": i, "host": "127.0.0.1", "port": free_port()} for i in IDS],
                  extra_env={"VIGIL_API_TOKEN": token})
    stack.http.headers["Authorization"] = f"Bearer {token}"
    try:
        stack.start("state", "gateway")
        # Without the token the page says why it cannot connect.
        page = open_dashboard(browser, f"http://127.0.0.1:{stack.port}/")
        page.wait("!document.getElementById('server-error').hidden", 15, "the token hint")
        assert "requires an API token" in page.evaluate(
            "document.getElementById('server-error-text').textContent")
        page = open_dashboard(browser, f"http://127.0.0.1:{stack.port}/?token={token}")
        page.wait("window.__probe && __probe.shown", 15, "the snapshot in the table")
        assert token not in page.evaluate("location.href")  # history, bookmarks, screenshots
        assert token in page.evaluate("__probe.sockets[0].url")  # a WebSocket has no header
        wait_shown(page, server_view(stack), 5, "live with the token")
        page.evaluate("window.__before_reload = true; setTimeout(() => location.reload(), 0)")
        page.wait("!window.__before_reload && window.__probe && __probe.shown", 15,
                  "the snapshot after a reload (a new document)")
        assert token not in page.evaluate("location.href")
        wait_shown(page, server_view(stack), 5, "still live after the reload")
        assert page.errors() == []
    finally:
        stack.close()
