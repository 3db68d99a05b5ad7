"""The outage Vigil was born from, end to end, with nobody watching.

A monitor that only started when the first browser connected left an instance
`error` after a server reboot. Here no WebSocket client is connected until the end.
"""

from __future__ import annotations

from tests.support.vigil import Stack, recv_json

FAST = {"interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 2}


def test_outage_recovers_with_nobody_watching(service_factory, redis_server, mariadb, tmp_path,
                                              prefix):
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "db", "name": "The DB", "host": mariadb.host, "port": mariadb.port}],
                  defaults=FAST, user=mariadb.user, password=mariadb.password)
    try:
        stack.start()
        stack.wait_status("db", "running", 15)

        mariadb.stop()
        stack.wait_status("db", "error", 10, reason="refused")
        assert stack.status_in_redis("db")["status"] == "error"
        assert stack.status_in_redis("db")["reason"] == "refused"

        mariadb.start()
        stack.wait_status("db", "running", 10)
        assert stack.status_in_redis("db")["status"] == "running"

        # Restart all of Vigil while MariaDB is down; it comes back with nobody watching.
        codes = stack.stop("state", "prober", "gateway")
        assert codes == {"state": 0, "prober": 0, "gateway": 0}
        mariadb.stop()
        stack.start()
        stack.wait_status("db", "error", 10, reason="refused")
        mariadb.start()
        stack.wait_status("db", "running", 10)

        with stack.ws() as ws:
            snap = recv_json(ws)
        assert snap["type"] == "snapshot"
        [db] = snap["instances"]
        assert (db["id"], db["status"], db["name"]) == ("db", "running", "The DB")
        assert snap["summary"] == {"total": 1, "running": 1, "error": 0, "unknown": 0}

        steps = [(t["from"], t["to"]) for t in stack.transitions("db")]
        assert steps == [("unknown", "running"), ("running", "error"), ("error", "running"),
                         ("running", "error"), ("error", "running")]
    finally:
        stack.close()
