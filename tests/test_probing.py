"""Probing real servers: failure reasons, deadlines, and clean goodbyes."""

from __future__ import annotations

import itertools
import time

from services.prober.probe import probe
from shared.inventory import Credential
from shared.schema import Instance
from shared.settings import Secret
from tests.support.vigil import Stack
from tests.support.wait import free_port, wait_for


def _cred(user: str, password: str) -> Credential:
    return Credential(user, Secret(password))


def test_reasons_for_auth_refused_and_dns(mariadb):
    deadline = lambda: time.monotonic() + 2  # noqa: E731
    good = probe(Instance(id="ok", host=mariadb.host, port=mariadb.port),
                 _cred(mariadb.user, mariadb.password), deadline())
    assert good.ok and good.reason is None and good.latency_ms > 0

    bad = probe(Instance(id="pw", host=mariadb.host, port=mariadb.port),
                _cred(mariadb.user, "not-the-password"), deadline())
    assert (bad.ok, bad.reason) == (False, "auth")
    assert "not-the-password" not in (bad.message or "")

    refused = probe(Instance(id="r", host="127.0.0.1", port=free_port()),
                    _cred(mariadb.user, mariadb.password), deadline())
    assert (refused.ok, refused.reason) == (False, "refused")

    dns = probe(Instance(id="d", host="no-such-host.invalid", port=3306),
                _cred(mariadb.user, mariadb.password), deadline())
    assert (dns.ok, dns.reason) == (False, "dns")


def test_unknown_credentials_name_is_an_auth_failure_naming_it():
    out = probe(Instance(id="x", host="127.0.0.1", port=1, credentials="reports"), None,
                time.monotonic() + 1)
    assert (out.ok, out.reason) == (False, "auth")
    assert "reports" in (out.message or "")


def test_blackholed_server_times_out_within_the_deadline(mariadb, proxy_factory):
    proxy = proxy_factory(mariadb.host, mariadb.port)
    proxy.mode = "blackhole"
    start = time.monotonic()
    out = probe(Instance(id="bh", host="127.0.0.1", port=proxy.port),
                _cred(mariadb.user, mariadb.password), start + 0.5)
    elapsed = time.monotonic() - start
    assert (out.ok, out.reason) == (False, "timeout")
    assert 0.45 <= elapsed < 0.9


def test_probes_leave_aborted_counters_unchanged(mariadb):
    before = (mariadb.status_var("Aborted_connects"), mariadb.status_var("Aborted_clients"))
    inst = Instance(id="db", host=mariadb.host, port=mariadb.port)
    cred = _cred(mariadb.user, mariadb.password)
    results = [probe(inst, cred, time.monotonic() + 2) for _ in range(120)]
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    after = (mariadb.status_var("Aborted_connects"), mariadb.status_var("Aborted_clients"))
    assert after == before


def test_frozen_server_is_a_timeout_while_a_healthy_one_keeps_its_cadence(
        service_factory, redis_server, mariadb_factory, tmp_path, prefix):
    frozen, healthy = mariadb_factory(), mariadb_factory()
    interval, timeout = 1.0, 0.6
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix, [
        {"id": "frozen", "host": frozen.host, "port": frozen.port},
        {"id": "healthy", "host": healthy.host, "port": healthy.port},
    ], defaults={"interval": interval, "timeout": timeout, "rise": 1, "fall": 2},
        user=frozen.user, password=frozen.password)
    try:
        stack.start()
        stack.wait_status("frozen", "running", 15)
        stack.wait_status("healthy", "running", 15)
        frozen.freeze()
        frozen_at = int(time.time() * 1000)
        stack.wait_status("frozen", "error", 3 * interval + timeout + 2, reason="timeout")
        failed = [p for p in stack.probes("frozen") if p["tick"] >= frozen_at]
        assert failed and all(p["reason"] == "timeout" for p in failed)
        for p in failed:  # each result was published within the timeout of its slot
            assert p["at"] - p["tick"] <= timeout * 1000 + 250, p
        # The healthy instance never missed a tick while its neighbour hung.
        ticks = [p["tick"] for p in stack.probes("healthy") if p["tick"] >= frozen_at - 1000]
        gaps = {b - a for a, b in itertools.pairwise(ticks)}
        assert gaps == {int(interval * 1000)}, gaps
        assert all(p["ok"] for p in stack.probes("healthy"))
        frozen.thaw()
        stack.wait_status("frozen", "running", 10)
    finally:
        frozen.thaw()
        stack.close()


def test_prober_counts_aborted_nothing_over_many_probes(service_factory, redis_server, mariadb,
                                                        tmp_path, prefix):
    """The whole prober, not just probe(): >= 100 probes, counters unchanged."""
    before = (mariadb.status_var("Aborted_connects"), mariadb.status_var("Aborted_clients"))
    instances = [{"id": f"db{i}", "host": mariadb.host, "port": mariadb.port} for i in range(20)]
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix, instances,
                  defaults={"interval": 0.2, "timeout": 0.15},
                  user=mariadb.user, password=mariadb.password)
    try:
        stack.start("state", "prober")
        wait_for(lambda: stack.redis.xlen(f"{prefix}:probes") >= 150, 30,
                 message="150 probes")
        stack.stop("prober")
        probes = [p for i in range(20) for p in stack.probes(f"db{i}")]
        assert len(probes) >= 150 and all(p["ok"] for p in probes)
        after = (mariadb.status_var("Aborted_connects"), mariadb.status_var("Aborted_clients"))
        assert after == before
    finally:
        stack.close()


def test_password_is_never_sent_in_clear_text_without_tls():
    """Whoever answers at an inventoried address may ask for the clear-text password."""
    from tests.support.rogue import ClearTextServer

    with ClearTextServer() as rogue:
        out = probe(Instance(id="rogue", host="127.0.0.1", port=rogue.port),
                    _cred("vigil", "s3cret-pw"), time.monotonic() + 2)
    assert (out.ok, out.reason) == (False, "auth")
    assert "clear text" in (out.message or "")
    assert not any(b"s3cret-pw" in r for r in rogue.received)
