"""A stand-in service for testing ``procs.Service`` itself (not part of Vigil).

Prints ``ready <VIGIL_DUMMY_GREETING>`` and sleeps until SIGTERM, then exits with 3.
With ``VIGIL_DUMMY_IGNORE_TERM=1`` it ignores SIGTERM (to exercise the SIGKILL fallback).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType


def _on_term(signum: int, frame: FrameType | None) -> None:
    print("got SIGTERM", flush=True)
    sys.exit(3)


def main() -> None:
    if os.environ.get("VIGIL_DUMMY_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, _on_term)
    leaked = sorted(k for k in os.environ if k.startswith("VIGIL_") and "DUMMY" not in k)
    print(f"ready {os.environ.get('VIGIL_DUMMY_GREETING', '')} leaked={leaked}")
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
