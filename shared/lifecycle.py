"""Process entry: settings → logging → ``run(settings, stop)`` with signals wired to ``stop``.

The first SIGTERM/SIGINT sets ``stop`` and the service drains (bounded by its grace
period); a second one exits at once, as uvicorn does, for an operator who means it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from shared import logs
from shared.errors import ConfigError
from shared.settings import Settings, from_env

Run = Callable[[Settings, asyncio.Event], Awaitable[None]]
log = logging.getLogger("vigil.lifecycle")


def _bad_config(service: str, exc: ConfigError) -> NoReturn:
    print(f"vigil {service}: bad configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    sys.exit(2)


def main(service: str, run: Run) -> NoReturn:
    """Entry point of ``python -m services.<service>``: exit 0 after a drain, 2 on bad config."""
    args = sys.argv[1:]
    if args:
        help_asked = args[0] in ("-h", "--help")
        print(f"usage: python -m services.{service}\n\nVigil's {service} service takes no "
              "arguments: it is configured by VIGIL_* environment variables (README, "
              "'Configuration'). It runs until SIGTERM or SIGINT, then drains and exits 0.",
              file=sys.stdout if help_asked else sys.stderr)
        sys.exit(0 if help_asked else 2)
    try:
        settings = from_env()
    except ConfigError as exc:
        _bad_config(service, exc)
    logs.setup(settings, service)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("%s received: draining (grace %.1fs)", sig.name, settings.grace)
                stop.set()
            else:
                log.warning("%s received again: exiting now", sig.name)
                os._exit(1)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await run(settings, stop)

    try:
        asyncio.run(_main())
    except ConfigError as exc:
        _bad_config(service, exc)
    log.info("stopped")
    logging.shutdown()
    sys.exit(0)


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel until done. A library may swallow a cancellation that lands mid-call (seen
    with redis-py mid-command): cancelled once, a task looping on an event nobody sets any
    more (a prober's claimer, a gateway session) would keep its process from exiting."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    if seconds <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
