"""Errors that carry a place (``field``) so that every message names what is wrong."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad configuration: the process exits 2 with every problem listed.

    ``problems`` holds one line per problem, each starting with its place
    (``VIGIL_GATEWAY_PORT: ...`` or ``inv.toml:instance[2].port: ...``).
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
