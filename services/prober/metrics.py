"""The prober's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROBES = Counter("vigil_probes_total", "Probes finished, by outcome", ["result", "reason"])
SKIPPED = Counter(
    "vigil_probes_skipped_total",
    "Probes not run: the previous one still running, or no worker free in time",
    ["why"],
)
LATENCY = Histogram(
    "vigil_probe_latency_seconds", "Whole-probe latency of successful probes",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OWNED = Gauge("vigil_prober_instances", "Instances this prober owns (probes first)")
MEMBERS = Gauge("vigil_prober_members", "Live probers this one knows of, itself included")
CLAIMS_LOST = Counter("vigil_claims_lost_total",
                      "Ticks claimed by another prober first (a backup's look, mostly)")
CLAIM_ROUND_TRIPS = Counter("vigil_claim_round_trips_total",
                            "Pipelined claim round trips to Redis")
PUBLISHED = Counter("vigil_probe_results_published_total", "Results XADDed to the probes stream")
DROPPED = Counter(
    "vigil_probe_results_dropped_total",
    "Results dropped because Redis was unreachable for longer than the buffer holds",
)
PUBLISH_ERRORS = Counter("vigil_publish_errors_total", "Failed XADD batches (retried)")
BUFFERED = Gauge("vigil_probe_results_buffered", "Results waiting to be published")
# Probes of silent servers hold a thread each, not CPU: in a wide outage these fill up
# while CPU stays low (docs/deploy.md: what to scale probers on).
WORKERS_BUSY = Gauge("vigil_prober_workers_busy", "Probe threads running a probe now")
WORKERS_MAX = Gauge("vigil_prober_workers_max", "Probe threads this prober may run "
                    "(VIGIL_PROBER_WORKERS)")
