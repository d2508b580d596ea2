"""Graceful shutdown: on SIGTERM, stop being ready first, stop listening later.

uvicorn, on SIGTERM, closes its listener at once and then gives the requests it has accepted
``timeout_graceful_shutdown`` (``PFVIT_SHUTDOWN_TIMEOUT_S``) to finish. Behind a load balancer
that is one step short: the balancer learns that the server is going only when its readiness
probe fails or its endpoint list is updated, and until then it keeps sending requests, which
now meet a closed port. So the service puts a drain in front of uvicorn's shutdown:

1. SIGTERM arrives: ``/readyz`` answers 503 (``"status": "draining"``) from that moment, and
   every request that still arrives is served as before;
2. ``PFVIT_SHUTDOWN_DRAIN_S`` later, uvicorn's own shutdown begins: the listener closes, idle
   connections are closed, and accepted requests get ``PFVIT_SHUTDOWN_TIMEOUT_S`` to finish.

A second SIGTERM during the drain, and SIGINT (Ctrl-C) at any time, skip the drain.

The drain is installed by the app's lifespan, in the process that serves (with
``PFVIT_WORKERS`` > 1, in every worker, which the supervisor sends SIGTERM): it wraps the
SIGTERM handler that uvicorn's server has installed, and only that one. Under anything else
(a test client, another server) it installs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


def drain_on_sigterm(drain_s: float, on_drain: Callable[[], None]) -> Callable[[], None]:
    """Make SIGTERM call ``on_drain`` at once and reach uvicorn's server ``drain_s`` later.

    Must be called from the running event loop (the app's lifespan). Returns a function that
    puts uvicorn's handler back (at the end of the lifespan); a no-op when nothing was wrapped.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers belong to the main thread: not a served process
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler) or not isinstance(getattr(server_handler, "__self__", None), uvicorn.Server):
        return lambda: None
    loop = asyncio.get_running_loop()
    draining = False

    def pass_on(sig: int, frame: FrameType | None) -> None:
        log.info("shutting down: closing the listener; accepted requests finish first")
        server_handler(sig, frame)

    def handle_sigterm(sig: int, frame: FrameType | None) -> None:
        nonlocal draining
        if draining or drain_s <= 0:
            on_drain()
            pass_on(sig, frame)
            return
        draining = True
        on_drain()
        # A signal handler runs between two bytecodes of the loop's own code: hand the timer
        # to the loop through its thread-safe entry rather than touching its heap from here.
        loop.call_soon_threadsafe(loop.call_later, drain_s, pass_on, sig, None)

    signal.signal(signal.SIGTERM, handle_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handle_sigterm:
            signal.signal(signal.SIGTERM, server_handler)

    return restore
