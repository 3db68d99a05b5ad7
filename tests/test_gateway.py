"""The gateway's REST API, resume with since, and bad requests."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.vigil import Stack, recv_json


@pytest.fixture
def stack(service_factory, redis_server, tmp_path, prefix):
    s = Stack(service_factory, redis_server.url, tmp_path, prefix, [
        {"id": "a", "name": "Alpha", "host": "10.0.0.1", "tags": ["prod"], "rise": 1, "fall": 1},
        {"id": "b", "host": "10.0.0.2", "port": 3307, "rise": 1, "fall": 1},
    ], extra_env={"VIGIL_API_TOKEN": "tok-123"})
    s.http.headers["Authorization"] = "Bearer tok-123"
    s.start("state", "gateway")  # results are injected: nothing is really probed
    yield s
    s.close()


def test_rest_instances_summary_and_history(stack):
    ids = stack.flap("a", 5)
    body = stack.get("/api/instances")
    by_id = {i["id"]: i for i in body["instances"]}
    assert set(by_id) == {"a", "b"}
    assert by_id["a"]["status"] == "running" and by_id["a"]["tags"] == ["prod"]
    assert by_id["a"]["name"] == "Alpha" and by_id["b"]["name"] == "b"
    assert by_id["a"]["since"].endswith("Z") and by_id["a"]["latency_ms"] == 2.0
    assert body["summary"] == {"total": 2, "running": 1, "error": 0, "unknown": 1}
    assert body["cursor"] == ids[-1]
    assert stack.get("/api/summary") == body["summary"]

    one = stack.get("/api/instances/a")
    assert one["instance"]["id"] == "a"
    assert [t["id"] for t in one["transitions"]] == ids

    page1 = stack.get("/api/transitions", since="0-0", limit=2)
    page2 = stack.get("/api/transitions", since=page1["next"], limit=10)
    assert [t["id"] for t in page1["transitions"] + page2["transitions"]] == ids
    assert not page1["gap"] and not page2["gap"]
    assert stack.get("/api/transitions", limit=1)["transitions"][0]["id"] == ids[-1]
    assert stack.get("/api/transitions", instance="b")["transitions"] == []
    # A filter that matches nothing still moves the paging point past what it looked at.
    assert stack.get("/api/transitions", since="0-0", instance="b") == {
        "transitions": [], "next": ids[-1], "gap": False}
    assert [t["id"] for t in stack.get("/api/transitions", since="0-0", instance="a",
                                       limit=3)["transitions"]] == ids[:3]


@pytest.mark.parametrize("path, field", [
    ("/api/transitions?since=yesterday", "since"),
    ("/api/transitions?since=%C2%B2", "since"),  # '²' is a digit to str.isdigit()
    ("/api/transitions?since=%D9%A1%D9%A2", "since"),  # Arabic-Indic digits
    ("/api/transitions?since=99999999999999999999", "since"),  # beyond 2**64 - 1
    ("/api/transitions?limit=%C2%B2", "limit"),
    ("/api/nothing-here", "path"),
    ("/api/transitions?limit=0", "limit"),
    ("/api/transitions?limit=abc", "limit"),
    ("/api/transitions?colour=red", "colour"),
    ("/api/transitions?limit=1&limit=2", "limit"),  # which one? neither
    ("/api/transitions?instance=", "instance"),
    ("/api/instances?x=1", "x"),  # every endpoint, not only the one with parameters
    ("/api/instances/a?since=1", "since"),
    ("/api/summary?verbose", "verbose"),
    ("/api/instances/nope", "id"),
])
def test_bad_requests_name_the_field(stack, path, field):
    resp = stack.http.get(path)
    assert resp.status_code in (400, 404)
    assert resp.json()["error"]["field"] == field


def test_token_is_required_when_configured(stack):
    url = f"http://127.0.0.1:{stack.port}/api/summary"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url + "?token=tok-123").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{stack.port}/healthz").status_code == 200
    with pytest.raises(InvalidStatus) as refused:
        stack.ws().close()
    assert refused.value.response.status_code == 401
    with stack.ws(token="tok-123") as ws:
        assert recv_json(ws)["type"] == "snapshot"


def test_resume_with_since_replays_exactly_what_was_missed(stack):
    ids = stack.flap("a", 6)
    with stack.ws(since=ids[2], token="tok-123") as ws:
        got = [recv_json(ws)["id"] for _ in range(3)]
        assert got == ids[3:]
        more = stack.flap("a", 2)  # live ones follow without a snapshot in between
        assert [recv_json(ws)["id"] for _ in range(2)] == more


def test_resume_from_a_point_that_was_never_here_resets(stack):
    with stack.ws(since="1-0", token="tok-123") as ws:
        first = recv_json(ws)
        assert first["type"] == "reset"
        assert recv_json(ws)["type"] == "snapshot"


def test_bad_since_and_bad_frames_get_an_error_naming_the_field(stack):
    with stack.ws(since="latest", token="tok-123") as ws:
        msg = recv_json(ws)
        assert (msg["type"], msg["field"]) == ("error", "since")
    url = f"ws://127.0.0.1:{stack.port}/ws?token=tok-123"
    for query, field in (("&foo=bar", "foo"), ("&since=1-0&since=2-0", "since")):
        with connect(url + query) as ws:
            msg = recv_json(ws)
            assert (msg["type"], msg["field"]) == ("error", field), query
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with stack.ws(token="tok-123") as ws:
        assert recv_json(ws)["type"] == "snapshot"
        ws.send("{not json")
        assert recv_json(ws)["field"] == "frame"
        ws.send('{"type": "dance"}')
        assert recv_json(ws)["field"] == "type"
        ws.send('{"type": "ping"}')
        assert recv_json(ws)["type"] == "pong"


def test_dashboard_is_served_with_security_headers(stack):
    resp = httpx.get(f"http://127.0.0.1:{stack.port}/")
    assert resp.status_code == 200 and "<html" in resp.text.lower()
    csp = {d.split()[0]: d.split()[1:] for d in
           resp.headers["content-security-policy"].split(";") if d.strip()}
    assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"], csp
    assert csp["frame-ancestors"] == ["'none'"], csp  # no clickjacking in a frame
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "no-referrer"  # the URL may carry ?token=
    assert resp.headers["cache-control"] == "no-store"
    static = httpx.get(f"http://127.0.0.1:{stack.port}/static/app.js")
    assert static.status_code == 200 and static.headers["x-content-type-options"] == "nosniff"
    api = stack.http.get("/api/summary")  # JSON answers carry them too
    assert api.headers["x-frame-options"] == "DENY"


def test_foreign_entries_on_the_transitions_stream_never_reach_clients(stack):
    ids = stack.flap("a", 1)
    with stack.ws(token="tok-123") as ws:
        assert recv_json(ws)["type"] == "snapshot"
        t = f"{stack.prefix}:transitions"
        stack.redis.xadd(t, {"data": b' {"instance":"a"}'})  # not what the fold writes
        stack.redis.xadd(t, {"data": json.dumps({  # a spoofed snapshot
            "type": "snapshot", "id": "x", "instances": [], "instance": "a", "name": "a",
            "from": "running", "to": "error", "at": "2026-01-01T00:00:00.000Z",
            "summary": {"total": 2, "running": 0, "error": 1, "unknown": 1}})})
        more = stack.flap("a", 1)
        frames = [recv_json(ws) for _ in range(2)]
    assert frames[0]["type"] == "transition" and frames[0]["id"] != "x"
    assert "instances" not in frames[0]  # re-encoded from the schema: unknown keys dropped
    assert frames[1]["id"] == more[0] and ids[0] < more[0]


def test_junk_written_into_redis_hashes_does_not_break_the_api(stack):
    stack.redis.hset(f"{stack.prefix}:inventory", "junk", "not json")
    stack.redis.hset(f"{stack.prefix}:status", "b", "{also not")
    body = stack.get("/api/instances")
    assert {i["id"] for i in body["instances"]} == {"a", "b"}
    assert next(i for i in body["instances"] if i["id"] == "b")["status"] == "unknown"
    with stack.ws(token="tok-123") as ws:
        assert recv_json(ws)["type"] == "snapshot"
