"""dicomnode.signals: stop and reload signals taken without a lock (an Event.set() in a handler
deadlocked a listener process that was inside the same Event's wait)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from dicomnode.signals import Signals


@pytest.fixture
def restored() -> Iterator[None]:
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for signum, handler in old.items():
        signal.signal(signum, handler)


def test_wait_returns_the_signals_in_order_and_at_once(restored: None) -> None:
    signals = Signals((signal.SIGUSR1, signal.SIGUSR2))
    assert signals.wait(0.01) == []
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert signals.wait(5) == [signal.SIGUSR2, signal.SIGUSR1]
    assert signals.wait(0.01) == []

    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    started = time.monotonic()
    assert signals.wait(30) == [signal.SIGUSR1]
    assert time.monotonic() - started < 10  # woken by the signal, not by the timeout


def test_a_storm_of_signals_never_blocks_the_waiting_thread(restored: None) -> None:
    """Thousands of signals land at every point of the main thread's wait loop: none is lost
    and none blocks (with Event.set() in the handler this hung now and then)."""
    signals = Signals((signal.SIGUSR1,))
    sent = 3000

    def storm() -> None:
        for _ in range(sent):
            os.kill(os.getpid(), signal.SIGUSR1)

    thread = threading.Thread(target=storm)
    thread.start()
    received = 0
    deadline = time.monotonic() + 60
    while (thread.is_alive() or received == 0) and time.monotonic() < deadline:
        received += len(signals.wait(0.001))
    thread.join(10)
    received += len(signals.wait(0.01))
    # The kernel merges a signal sent while the same one is pending: at least one, at most all.
    assert 1 <= received <= sent
    assert time.monotonic() < deadline
