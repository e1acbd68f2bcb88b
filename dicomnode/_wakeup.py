"""An association's two threads woken when there is work, instead of pynetdicom's 1 ms polls.

pynetdicom 3.0.4 runs two loops per association: the DUL thread
(``DULServiceProvider.run_reactor``) sleeps ``_run_loop_delay`` (1 ms) whenever it found
nothing to do, and the association thread (``Association._run_reactor``) sleeps 1 ms per
loop. An open association that carries nothing so costs 8-11% of a core here (measured with a
requestor associated with storescp and idle for 5 s), and each message waits for the next
look. :meth:`Wakeup.install` replaces both sleeps by waits that the association's own queues
end: the DUL thread (``_run_loop_delay`` 0) blocks in its socket's ``ready`` on the socket and
a wake-up socket (:func:`wait_for_data`) that ``to_provider_queue``, ``event_queue``,
``stop_dul`` and ``kill_dul`` ring; the association thread runs :func:`woken_reactor`, which
waits on an event that the DIMSE ``msg_queue`` and the DUL's ``to_user_queue`` set. Both still
look at least every ``REACTOR_TICK_S`` (timers, a DUL thread that ended).

Used by the listener's accepted associations (``gate``) and the forwarders' requested ones
(``_scu.woken``). tests/test_hostile_network.py pins the pynetdicom source this relies on.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import association as _association
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

__all__ = ["REACTOR_TICK_S", "Wakeup", "ring_on_put", "wait_for_data", "woken_reactor"]

# The longest an association's threads wait without a wake-up: the granularity of
# pynetdicom's timers (ARTIM, the idle timeout) and of noticing the other thread has ended.
REACTOR_TICK_S = 0.05


class Wakeup:
    """Wakes an association's two threads when there is work, instead of their 1 ms polling.

    The DUL thread blocks in its socket's ``ready`` (:func:`wait_for_data`) on the socket and
    on this object (a socket pair: a wake-up that comes before the wait is not lost); the
    association thread waits on :attr:`reactor`."""

    def __init__(self, assoc: Association) -> None:
        self._dul = assoc.dul
        self._recv, self._send = socket.socketpair()
        self._recv.setblocking(False)
        self._send.setblocking(False)
        self._lock = threading.Lock()
        self._closed = False
        # True while the DUL thread is in (or about to enter) its wait: only then does a put
        # ring (a byte per PDU sent cost ~40 us each, ~1.4 ms per 0.5 MB instance).
        self.waiting = False
        self.reactor = threading.Event()

    @classmethod
    def install(cls, assoc: Association) -> Wakeup:
        """Ring on everything that gives either thread work; both threads start later."""
        wakeup = cls(assoc)
        dul = assoc.dul
        dul._run_loop_delay = 0  # ready() waits instead (REACTOR_TICK_S at most)
        ring_on_put(dul.to_provider_queue, wakeup.wake, unless=dul)  # a PDU to send
        ring_on_put(dul.event_queue, wakeup.wake, unless=dul)  # an event from elsewhere
        ring_on_put(assoc.dimse.msg_queue, wakeup.reactor.set)  # a whole DIMSE message
        ring_on_put(dul.to_user_queue, wakeup.reactor.set)  # A-RELEASE, A-ABORT...
        # A send_*() or release() pauses the reactor and waits until it is: wake it for that.
        checkpoint = assoc._reactor_checkpoint
        clear = checkpoint.clear

        def _clear() -> None:
            clear()
            wakeup.reactor.set()

        setattr(checkpoint, "clear", _clear)  # noqa: B010 - a method, per instance
        stop_dul, kill_dul = dul.stop_dul, dul.kill_dul

        def _stop_dul() -> bool:
            if dul.state_machine.current_state == "Sta1":
                dul._kill_thread = True
                wakeup.wake()
            return bool(stop_dul())

        def _kill_dul() -> None:
            kill_dul()
            wakeup.wake()

        setattr(dul, "stop_dul", _stop_dul)  # noqa: B010 - a method, per instance
        setattr(dul, "kill_dul", _kill_dul)  # noqa: B010
        setattr(  # noqa: B010
            assoc, "_run_reactor", functools.partial(woken_reactor, assoc, wakeup.reactor)
        )
        return wakeup

    def fileno(self) -> int:
        return self._recv.fileno()

    def busy(self) -> bool:
        """The DUL has something to do besides reading: no waiting."""
        dul = self._dul
        return bool(
            dul._kill_thread or not dul.event_queue.empty() or not dul.to_provider_queue.empty()
        )

    def wake(self) -> None:
        if not self.waiting:
            return  # the DUL looks at its queues and flags before it waits (wait_for_data)
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):  # a wake-up already pending (buffer full)
                self._send.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            self._recv.recv(4096)

    def close(self) -> None:
        self.reactor.set()
        with self._lock:
            self._closed = True
            self._send.close()
            self._recv.close()


def ring_on_put(
    target: queue.Queue[Any], ring: Callable[[], None], unless: threading.Thread | None = None
) -> None:
    """``target.put`` (and so ``put_nowait``) also calls ``ring``, after the item is in;
    not when the thread ``unless`` puts it (the DUL looks at its own queues before waiting)."""
    put = target.put

    def _put(*args: Any, **kwargs: Any) -> None:
        put(*args, **kwargs)
        if unless is None or threading.current_thread() is not unless:
            ring()

    setattr(target, "put", _put)  # noqa: B010 - a method, per instance


def woken_reactor(assoc: Association, wake: threading.Event) -> None:
    """pynetdicom 3.0.4's ``Association._run_reactor`` (pinned), waiting on ``wake`` (set
    when a DIMSE message or an ACSE primitive arrives) instead of sleeping 1 ms per loop.
    The same loop for both roles (pynetdicom's is too)."""
    logger = _association.LOGGER
    assoc._is_paused = False
    while not assoc._kill:
        wake.wait(REACTOR_TICK_S)
        wake.clear()  # before looking: what arrives from now on sets it again

        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False

        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            wake.set()  # another message may be queued behind this one
            assoc._serve_request(msg, int(context_id or 0))

        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            logger.info("Association Released")
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            log_msg = "Association Aborted"
            if assoc.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            logger.info(log_msg)
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            logger.error("Network timeout reached")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return


def wait_for_data(transport: AssociationSocket, wakeup: Wakeup | None) -> bool:
    """For a socket's ``ready`` that found no data: when the DUL has nothing else to do, wait
    for data or a wake-up (at most ``REACTOR_TICK_S``); True when data may have come (the
    caller asks pynetdicom's ``ready`` again), False to go on at once."""
    sock = transport.socket
    if wakeup is None or sock is None or not transport._is_connected:
        return False
    # Flag first, then look: a put after the look sees the flag and rings.
    wakeup.waiting = True
    try:
        if wakeup.busy():
            return False
        ring = wakeup.fileno()
        readable, _, _ = select.select([sock.fileno(), ring], [], [], REACTOR_TICK_S)
    except (OSError, ValueError):
        return True  # pynetdicom's own answer tells a closed socket (Evt17)
    finally:
        wakeup.waiting = False
    if ring in readable:
        wakeup.drain()
    return bool(readable)
