"""Editing the inventory while Vigil runs: probers follow, dashboards get a fresh snapshot."""

from __future__ import annotations

from typing import Any

from tests.support.vigil import Stack, recv_json, write_inventory
from tests.support.wait import wait_for

FAST = {"interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 2}


def test_inventory_edits_reach_probers_and_open_clients(service_factory, redis_server, mariadb,
                                                        tmp_path, prefix):
    first = [{"id": "a", "host": mariadb.host, "port": mariadb.port},
             {"id": "b", "host": mariadb.host, "port": mariadb.port}]
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix, first, defaults=FAST,
                  user=mariadb.user, password=mariadb.password)
    try:
        stack.start()
        stack.wait_status("a", "running", 15)
        with stack.ws() as ws:
            snap = recv_json(ws)
            assert {i["id"] for i in snap["instances"]} == {"a", "b"}
            write_inventory(stack.inventory, [
                {"id": "a", "name": "Renamed", "host": mariadb.host, "port": mariadb.port},
                {"id": "c", "host": mariadb.host, "port": mariadb.port},
            ], FAST)

            def fresh_snapshot() -> dict[str, Any] | None:
                msg = recv_json(ws)
                return msg if msg["type"] == "snapshot" else None

            snap = wait_for(fresh_snapshot, 15, message="a fresh snapshot after the edit")
            by_id = {i["id"]: i for i in snap["instances"]}
            assert set(by_id) == {"a", "c"}
            assert by_id["a"]["name"] == "Renamed"
        stack.wait_status("c", "running", 10)  # the prober follows the edit
        assert stack.get("/api/summary")["total"] == 2

        # A broken edit is refused whole; the last good inventory stays in force.
        stack.inventory.write_text('[[instance]]\nid = "a"\nport = "x"\n')
        wait_for(lambda: "inventory file refused" in stack.services["state"].log(), 10,
                 message="the refusal logged")
        assert "instance[a].port" in stack.services["state"].log()
        assert {i["id"] for i in stack.get("/api/instances")["instances"]} == {"a", "c"}
        stack.wait_status("c", "running", 5)
    finally:
        stack.close()
