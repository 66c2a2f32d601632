"""Stopping a process cleanly on SIGINT / SIGTERM (the worker's and the API's).

The first signal asks for a graceful stop (the worker finishes or hands back what it is
running; the API finishes its requests); later ones are noted and ignored, so `soar up`
forwarding SIGTERM after a terminal's Ctrl-C does not cut the stop short. Its supervisor
kills a process that does not stop in time.

Then `exit_now`: the Temporal client's Rust threads can outlive the event loop, and the
interpreter's finalization then aborts with "Fatal Python error: PyGILState_Release"
(temporalio/sdk-python#300). Everything worth keeping is flushed first, then the process
leaves without that finalization.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

log = logging.getLogger("soar.lifecycle")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run `main(stop)` in a new event loop; SIGINT / SIGTERM set `stop`. Returns 0 when
    `main` returns (after a signal or not), 1 when it raised (logged)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        seen: list[int] = []

        def on_signal(sig: int) -> None:
            seen.append(sig)
            if len(seen) == 1:
                log.info("%s: stopping gracefully", signal.Signals(sig).name)
                stop.set()
            else:
                log.info("%s: already stopping", signal.Signals(sig).name)

        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await main(stop)
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)  # nothing may interrupt the way out

    try:
        asyncio.run(runner())
    except Exception as exc:
        log.error("stopped by an error: %s: %s", type(exc).__name__, str(exc)[:300])
        return 1
    return 0


async def run_until_stopped(
    run: Awaitable[None], stop: asyncio.Event, shutdown: Callable[[], Awaitable[None]]
) -> None:
    """Await `run` until it ends or `stop` is set; then `shutdown()` (graceful) and wait for
    `run` to return."""
    runner = asyncio.ensure_future(run)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not runner.done():
        await shutdown()
    await runner


@contextlib.contextmanager
def signals_noted() -> Any:
    """For a server that installs its own handlers for the time it runs and re-raises the
    signal afterwards (uvicorn): the re-raised signal is only noted, not fatal."""
    seen: list[int] = []

    def note(sig: int, frame: FrameType | None) -> None:
        seen.append(sig)

    previous = {sig: signal.signal(sig, note) for sig in SIGNALS}
    try:
        yield seen
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_now(code: int) -> None:
    """Flush logs, traces and the standard streams, then leave without interpreter
    finalization (see the module's docstring)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        from soar.observability.tracing import shutdown_tracing

        shutdown_tracing()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
