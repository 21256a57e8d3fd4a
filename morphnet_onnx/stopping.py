"""A stop that a signal asked for (Ctrl-C, SIGTERM), kept where long loops look for it.

Python raises a handler's KeyboardInterrupt wherever the main thread is when the signal arrives; when
that is a weakref callback or a finalizer, CPython prints "Exception ignored in ..." and drops it, and
the run went on to its end, exit 0. So the handler also records the request, and training (every
step) and latency measurement (every model) raise it again where it cannot be dropped.
"""

from __future__ import annotations

import contextlib
import signal

_requested: list[int] = []  # the signals received since the command started


def request_stop(signum: int = signal.SIGINT) -> None:
    _requested.append(signum)


def stop_requested() -> bool:
    return bool(_requested)


def raise_if_stop_requested() -> None:
    """Raise KeyboardInterrupt if a signal asked this process to stop (even if its own raise was lost)."""
    if _requested:
        raise KeyboardInterrupt


def _stop(signum, frame) -> None:
    """SIGTERM (`kill PID`, a job scheduler's stop) ends a run as Ctrl-C does: temporary files are
    removed, and training says where its checkpoint is."""
    request_stop(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def stopping_on_signals():
    """Within it SIGINT and SIGTERM stop the command, recorded as well as raised. SIGINT keeps being
    ignored where the process started with it ignored (a shell's background job)."""
    _requested.clear()
    previous: dict[int, object] = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig == signal.SIGINT and signal.getsignal(sig) is not signal.default_int_handler:
                continue
            previous[sig] = signal.signal(sig, _stop)
    except ValueError:  # called from a thread other than the main one: signals stay as they are
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()
