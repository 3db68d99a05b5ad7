"""The inventory (TOML → validated Instances) and the credentials store.

A bad inventory is refused whole, with every problem listed as
``file:instance[index or id].field: what is wrong``.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from shared.errors import ConfigError
from shared.schema import TLS, Instance, encoder
from shared.settings import Secret, Settings

ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEFAULT_KEYS = {"interval", "timeout", "rise", "fall", "credentials", "tls"}
INSTANCE_KEYS = {"id", "name", "host", "port", "tags"} | DEFAULT_KEYS
TLS_KEYS = {"ca", "verify", "server_name", "cert", "key"}
BUILTIN_DEFAULTS: dict[str, Any] = {
    "interval": 5.0, "timeout": 3.0, "rise": 1, "fall": 2, "credentials": "default", "tls": None,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_common(place: str, table: Mapping[str, Any], problems: list[str]) -> None:
    """Checks shared by [defaults] and [[instance]] for the keys both may hold."""
    for key in ("interval", "timeout"):
        if key in table:
            v = table[key]
            if not _is_num(v) or v <= 0:
                problems.append(f"{place}.{key}: must be a positive number of seconds, got {v!r}")
            elif v > 86400:
                problems.append(f"{place}.{key}: must be at most 86400 seconds, got {v!r}")
    for key in ("rise", "fall"):
        if key in table:
            v = table[key]
            if not _is_int(v) or not 1 <= v <= 1000:
                problems.append(f"{place}.{key}: must be an integer from 1 to 1000, got {v!r}")
    if "credentials" in table:
        v = table["credentials"]
        if not isinstance(v, str) or not v:
            problems.append(f"{place}.credentials: must be a non-empty string, got {v!r}")
    if "tls" in table:
        _check_tls(f"{place}.tls", table["tls"], problems)


def _check_tls(place: str, v: Any, problems: list[str]) -> None:
    if not isinstance(v, dict):
        problems.append(f"{place}: must be a table like {{ ca = \"/path\", verify = true }}")
        return
    for key in sorted(set(v) - TLS_KEYS):
        problems.append(f"{place}.{key}: unknown key (allowed: {', '.join(sorted(TLS_KEYS))})")
    for key in ("ca", "server_name", "cert", "key"):
        if key in v and (not isinstance(v[key], str) or not v[key]):
            problems.append(f"{place}.{key}: must be a non-empty string")
    if "verify" in v and not isinstance(v["verify"], bool):
        problems.append(f"{place}.verify: must be true or false")
    if ("cert" in v) != ("key" in v):
        problems.append(f"{place}: cert and key must be given together")


def parse_inventory(doc: Mapping[str, Any], source: str) -> list[Instance]:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    for key in sorted(set(doc) - {"defaults", "instance"}):
        problems.append(f"{source}:{key}: unknown key (allowed: defaults, instance)")
    defaults = dict(BUILTIN_DEFAULTS)
    raw_defaults = doc.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        problems.append(f"{source}:defaults: must be a table")
        raw_defaults = {}
    for key in sorted(set(raw_defaults) - DEFAULT_KEYS):
        problems.append(
            f"{source}:defaults.{key}: unknown key (allowed: {', '.join(sorted(DEFAULT_KEYS))})"
        )
    _check_common(f"{source}:defaults", raw_defaults, problems)
    defaults.update({k: v for k, v in raw_defaults.items() if k in DEFAULT_KEYS})

    raw_instances = doc.get("instance", [])
    if not isinstance(raw_instances, list):
        problems.append(f"{source}:instance: must be an array of tables ([[instance]])")
        raw_instances = []
    seen: dict[str, int] = {}
    instances: list[Instance] = []
    for index, raw in enumerate(raw_instances):
        ident = raw.get("id") if isinstance(raw, dict) else None
        place = f"{source}:instance[{ident}]" if isinstance(ident, str) and ident else (
            f"{source}:instance[{index}]"
        )
        if not isinstance(raw, dict):
            problems.append(f"{place}: must be a table")
            continue
        before = len(problems)
        for key in sorted(set(raw) - INSTANCE_KEYS):
            problems.append(
                f"{place}.{key}: unknown key (allowed: {', '.join(sorted(INSTANCE_KEYS))})"
            )
        if "id" not in raw:
            problems.append(f"{place}.id: missing (a stable id, [A-Za-z0-9._-]{{1,64}})")
        elif not isinstance(ident, str) or not ID_RE.match(ident):
            problems.append(f"{place}.id: must match [A-Za-z0-9._-]{{1,64}}, got {ident!r}")
        elif ident in seen:
            problems.append(
                f"{place}.id: duplicate id {ident!r} (also instance[{seen[ident]}])"
            )
        else:
            seen[ident] = index
        host = raw.get("host")
        if "host" not in raw:
            problems.append(f"{place}.host: missing")
        elif not isinstance(host, str) or not host.strip() or len(host) > 255:
            problems.append(f"{place}.host: must be a non-empty host name or address")
        port = raw.get("port", 3306)
        if not _is_int(port) or not 1 <= port <= 65535:
            problems.append(f"{place}.port: must be an integer from 1 to 65535, got {port!r}")
        name = raw.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            problems.append(f"{place}.name: must be a string of at most 200 characters")
        tags = raw.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            problems.append(f"{place}.tags: must be a list of non-empty strings")
        _check_common(place, raw, problems)
        merged = {**defaults, **{k: v for k, v in raw.items() if k in DEFAULT_KEYS}}
        if (_is_num(merged["interval"]) and _is_num(merged["timeout"])
                and merged["timeout"] >= merged["interval"]):
            problems.append(
                f"{place}.timeout: must be less than interval "
                f"({merged['timeout']} >= {merged['interval']})"
            )
        if len(problems) > before:
            continue
        tls = merged["tls"]
        assert isinstance(ident, str) and isinstance(host, str)  # checked above
        instances.append(Instance(
            id=ident, host=host.strip(), port=port, name=name, tags=tuple(tags),
            interval=float(merged["interval"]), timeout=float(merged["timeout"]),
            rise=merged["rise"], fall=merged["fall"], credentials=merged["credentials"],
            tls=msgspec.convert(tls, TLS) if tls is not None else None,
        ))
    if not problems and not instances:
        problems.append(f"{source}: no [[instance]]: an empty inventory would stop all "
                        "monitoring (a file caught half-written looks like this too)")
    if problems:
        raise ConfigError(problems)
    return instances


def load_inventory(path: str) -> list[Instance]:
    """Read and validate the inventory file; ConfigError lists every problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read inventory: {exc.strerror or exc}"]) from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_inventory(doc, path)


def digest(instances: list[Instance]) -> str:
    """A stable content digest, so replicas loading the same file write nothing new."""
    body = encoder.encode(sorted(instances, key=lambda i: i.id))
    return hashlib.sha256(body).hexdigest()[:16]


class Credential(msgspec.Struct, frozen=True):
    user: str
    password: Secret

    def __repr__(self) -> str:
        return f"Credential(user={self.user!r}, password=***)"


def load_credentials(settings: Settings) -> dict[str, Credential]:
    """Named credentials: the ``VIGIL_CREDENTIALS`` file, plus ``default`` from the env."""
    creds: dict[str, Credential] = {
        "default": Credential(settings.mysql_user, settings.mysql_password),
    }
    if not settings.credentials:
        return creds
    path = settings.credentials
    try:
        doc = tomllib.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read credentials: {exc.strerror or exc}"]) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The parser's message may quote part of the line, which may hold a password:
        # only where the problem is.
        at = re.search(r"\(at line \d+, column \d+\)|\(at end of document\)", str(exc))
        raise ConfigError([f"{path}: not valid TOML" + (f" {at[0]}" if at else "")]) from None
    problems: list[str] = []
    for name, table in doc.items():
        if not isinstance(table, dict):
            problems.append(f"{path}:{name}: must be a table with user and password")
            continue
        for key in sorted(set(table) - {"user", "password"}):
            problems.append(f"{path}:{name}.{key}: unknown key (allowed: password, user)")
        user, password = table.get("user"), table.get("password", "")
        if not isinstance(user, str) or not user:
            problems.append(f"{path}:{name}.user: missing or not a string")
        if not isinstance(password, str):
            problems.append(f"{path}:{name}.password: must be a string")
        if isinstance(user, str) and user and isinstance(password, str):
            creds[name] = Credential(user, Secret(password))
    if problems:
        raise ConfigError(problems)
    return creds
