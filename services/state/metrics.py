"""The state service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FOLDED = Counter("vigil_fold_results_total", "Probe results folded into a status")
STALE = Counter("vigil_fold_stale_total", "Results ignored as stale or duplicate")
DEAD = Counter("vigil_dead_letters_total", "Stream entries sent to the dead-letter stream")
TRANSITIONS = Counter("vigil_transitions_total", "Status transitions emitted")
BATCH_SECONDS = Histogram(
    "vigil_fold_batch_seconds", "Time of one fold FCALL (a batch of results)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
PROBERS = Gauge("vigil_probers_alive",
                "Probers with a live heartbeat, as the state service last saw (0: nothing probes)")
INVENTORY_LOADS = Counter("vigil_inventory_loads_total", "Inventory loads written to Redis")
INVENTORY_ERRORS = Counter("vigil_inventory_errors_total", "Inventory files refused")
