"""Stop and reload signals, received without a lock.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock. ``threading.Event.set()`` (or a log line) in a handler then waits for a
lock its own thread holds, for ever: a listener process was found stuck so, in ``Event.set``
inside its own ``Event.wait``, after two SIGTERMs. So the handler here only appends the signal
to a list and writes a byte to a pipe (neither takes a Python lock); the main thread waits on
the pipe and does the work.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterable
from types import FrameType

__all__ = ["Signals"]


class Signals:
    """Catch ``signums``; :meth:`wait` returns those received since the last call."""

    def __init__(self, signums: Iterable[int]) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._received: list[int] = []
        for signum in signums:
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self._received.append(signum)
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the reader all the same
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> list[int]:
        """The signals received, in order, once one came or after ``timeout`` seconds."""
        if not self._received:
            with contextlib.suppress(InterruptedError):
                select.select([self._read], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass
        taken = []
        while self._received:
            taken.append(self._received.pop(0))
        return taken
