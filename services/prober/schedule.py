"""When to probe: each instance on its own interval, at a stable phase within it.

The tick of a probe is its scheduled slot in epoch milliseconds. Slots only grow
with time, even when an instance's interval changes, so the fold can order results
by tick alone.
"""

from __future__ import annotations

import zlib


def phase_ms(instance_id: str, interval_ms: int) -> int:
    """A stable offset in [0, interval): instances spread over the interval, never all at once."""
    return zlib.crc32(instance_id.encode()) % interval_ms


def next_slot(instance_id: str, interval_ms: int, after_ms: int) -> int:
    """The first slot of ``instance_id`` strictly after ``after_ms`` (epoch ms)."""
    phase = phase_ms(instance_id, interval_ms)
    k = (after_ms - phase) // interval_ms + 1
    return phase + k * interval_ms
