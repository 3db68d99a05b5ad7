"""Every Redis key name, built from the prefix in one place.

With a hash-tag prefix such as ``{vigil}`` every key lands in one Cluster slot,
which the fold needs: it touches several keys in one Function call.
"""

from __future__ import annotations

GROUP = "state"  # consumer group on the probes stream (contract)
FUNCTION_LIBRARY = "vigil"


class Keys:
    __slots__ = ("dead", "inventory", "inventory_cursor", "inventory_version", "origin",
                 "prefix", "probers", "probes", "status", "summary", "transitions")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.probes = f"{prefix}:probes"  # stream of ProbeResult (contract)
        self.transitions = f"{prefix}:transitions"  # stream of Transition (contract)
        self.dead = f"{prefix}:dead"  # dead letters (contract)
        self.inventory = f"{prefix}:inventory"  # hash: id -> Instance JSON
        self.inventory_version = f"{prefix}:inventory:version"  # string: content digest
        # string: the newest transition id when the inventory last changed
        self.inventory_cursor = f"{prefix}:inventory:cursor"
        self.status = f"{prefix}:status"  # hash: id -> StatusRecord JSON
        self.summary = f"{prefix}:summary"  # hash: running/error/unknown counters
        # string: the id just before this Redis' first transition; resume points older than
        # it were lost with a previous Redis' data.
        self.origin = f"{prefix}:transitions:origin"
        self.probers = f"{prefix}:probers"  # zset: prober id -> heartbeat expiry (Redis ms)

    def claim(self, instance_id: str, tick: int) -> str:
        """String set NX by the one prober that probes ``instance_id`` at ``tick``."""
        return f"{self.prefix}:claim:{instance_id}:{tick}"

    # Key lists in the order each Function in services/state/fold.lua expects them.
    def fold_keys(self) -> list[str]:
        return [self.probes, self.transitions, self.dead, self.inventory, self.status,
                self.summary, self.origin, self.inventory_version]

    def inventory_keys(self) -> list[str]:
        return [self.inventory, self.inventory_version, self.status, self.summary, self.origin,
                self.transitions, self.inventory_cursor]

    def snapshot_keys(self) -> list[str]:
        return [self.inventory, self.status, self.summary, self.transitions, self.origin,
                self.inventory_version]

    def resumable_keys(self) -> list[str]:
        return [self.transitions, self.origin, self.inventory_cursor]
