"""Messages between the parts, as msgspec Structs (wire format: README.md, "API").

Schema evolution only by adding fields with defaults, so old and new replicas can
read each other's messages during a rolling upgrade.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

StatusName = Literal["unknown", "running", "error"]
Reason = Literal[
    "refused", "timeout", "dns", "auth", "host_blocked", "too_many_connections",
    "tls", "protocol", "unknown",
]
REASONS: tuple[str, ...] = (
    "refused", "timeout", "dns", "auth", "host_blocked", "too_many_connections",
    "tls", "protocol", "unknown",
)


# Unknown fields are not refused here: the inventory file's keys are checked, with their
# places, by shared/inventory.py; the copy in Redis must stay readable by the previous
# release during a rolling upgrade that adds a field (old probers ignore it).
class TLS(msgspec.Struct, frozen=True):
    ca: str | None = None
    verify: bool = True
    server_name: str | None = None
    cert: str | None = None
    key: str | None = None


class Instance(msgspec.Struct, frozen=True):
    """One endpoint to watch, as validated from the inventory and stored in Redis."""

    id: str
    host: str
    port: int = 3306
    name: str = ""
    tags: tuple[str, ...] = ()
    interval: float = 5.0
    timeout: float = 3.0
    rise: int = 1
    fall: int = 2
    credentials: str = "default"
    tls: TLS | None = None


EpochMs = Annotated[int, msgspec.Meta(ge=0, lt=2**53)]  # exact in Lua's doubles, too


class ProbeResult(msgspec.Struct, frozen=True):
    """One probe of one instance; ``tick`` is the scheduled slot (epoch ms), ``at`` its end."""

    instance: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    prober: Annotated[str, msgspec.Meta(max_length=256)]
    tick: EpochMs
    at: EpochMs
    ok: bool
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=86_400_000)]
    reason: Reason | None = None
    message: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class Summary(msgspec.Struct):
    total: int = 0
    running: int = 0
    error: int = 0
    unknown: int = 0


class Status(msgspec.Struct):
    id: str
    name: str
    host: str
    port: int
    tags: tuple[str, ...]
    status: StatusName
    since: str | None
    checked_at: str | None
    latency_ms: float | None
    reason: str | None
    message: str | None


class StatusRecord(msgspec.Struct):
    """What the fold keeps per instance in Redis (times in epoch ms)."""

    status: StatusName = "unknown"
    since: int | None = None
    checked_at: int | None = None
    latency_ms: float | None = None
    reason: str | None = None
    message: str | None = None
    ok: int = 0
    fail: int = 0
    tick: int = 0


class Transition(msgspec.Struct, kw_only=True):
    """A change of status; the stream entry's id is the transition id."""

    instance: str
    name: str
    from_: StatusName = msgspec.field(name="from")
    to: StatusName
    at: str
    reason: str | None = None
    message: str | None = None
    summary: Summary = msgspec.field(default_factory=Summary)


_last_second: list[Any] = [None, ""]  # (epoch second, its formatted prefix): results cluster


def rfc3339(ms: int | None) -> str | None:
    """Epoch milliseconds → RFC 3339 UTC with milliseconds and ``Z``."""
    if ms is None:
        return None
    sec = ms // 1000
    if _last_second[0] != sec:
        prefix = datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second[:] = [sec, prefix]
    return f"{_last_second[1]}{ms % 1000:03d}Z"


def status_of(inst: Instance, rec: StatusRecord) -> Status:
    return Status(
        id=inst.id,
        name=inst.name or inst.id,
        host=inst.host,
        port=inst.port,
        tags=inst.tags,
        status=rec.status,
        since=rfc3339(rec.since),
        checked_at=rfc3339(rec.checked_at),
        latency_ms=rec.latency_ms,
        reason=rec.reason,
        message=rec.message,
    )


# One encoder/decoder per type, reused (msgspec perf tips).
encoder = msgspec.json.Encoder()
probe_decoder = msgspec.json.Decoder(ProbeResult)
instance_decoder = msgspec.json.Decoder(Instance)
record_decoder = msgspec.json.Decoder(StatusRecord)
transition_decoder = msgspec.json.Decoder(Transition)
