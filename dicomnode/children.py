"""The node's child processes (listener processes, pipeline workers): how they are started
and how they end with the node.

Both are started with ``spawn`` (no thread of the node is forked) while SIGINT and SIGTERM
are held, so that a signal sent to the whole process group as a child starts waits for the
handler the child installs, instead of killing it half-started. Each asks Linux for a signal
when the node dies, even by ``kill -9`` (PR_SET_PDEATHSIG): a child must not outlive the node
that a restart replaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
from collections.abc import Iterator

__all__ = ["STOP_SIGNALS", "die_with_parent", "stop_signals_held"]

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies. The signal comes
    when the parent *thread* that started it ends: start children from a long-lived thread."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread while a child is spawned: the child inherits
    the mask and unblocks them once its handlers are in place."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
