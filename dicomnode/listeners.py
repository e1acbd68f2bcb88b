"""Listener processes: ``node.listeners`` pynetdicom listeners accepting on one port.

One Python process receives on one core at most (the GIL; pynetdicom's receive loop is pure
Python). With ``node.listeners`` N > 1 the node binds the port itself, then
starts N listener processes (``spawn``, so that no thread of the node is forked) that all
accept on that one socket, each running the same gate and C-STORE handler
(``dicomnode.ingest``) into the same spool. Everything else stays in the node's process:
the pipeline workers, the forwarders, the review page, the metrics endpoint and the audit
trail.

Why one shared socket and not one socket each with SO_REUSEPORT: the kernel hashes each new
connection to one of the SO_REUSEPORT sockets, and a connection waiting in the queue of a
socket that closes is reset. So every reload (the old set closes its sockets) and every stop
of a listener reset a sender or two. A connection in the shared socket's queue waits for
whichever listener accepts next, and the socket lives as long as the node: a reload, or a
listener that dies, loses nothing. It also gives a new connection to a listener that is
waiting, not to one the hash picked however busy it is.

- **What they tell the node**, over one queue: each instance received (its id: the node
  counts it and submits it to the workers at once; a message lost with a crashed listener
  costs nothing, the workers' rescan of ``incoming/`` finds the file), each refusal (the
  node counts and audits it, as for its own listener), and the gate's connection refusals
  summed per reason every half second (``dicomnode_connections_refused_total``).
- **Limits across them**: ``max_associations`` and ``max_connections_per_address`` are
  counted in shared memory (:class:`dicomnode.gate.SharedCounts`), one row per listener,
  so they hold for the node as a whole; a listener that dies has its row given back.
- **Allow-lists, projects, TLS** are the configuration's, read by each listener; the node
  checks the port and the TLS files before it starts any, so that a mistake is one
  start-up error, as with one listener.
- **pydicom's reading validation** is off in them: it only ever warned, and it cost ~13% of
  the CPU of accepting an association (``dicomnode._uid_checks``).
- **Crashes**: the node restarts a listener that exits without being asked
  (``dicomnode_listener_restarts_total``); a listener ends when the node dies, even by
  ``kill -9`` (PR_SET_PDEATHSIG, and a check of its parent every half second): it stops
  accepting at once and lets its open associations finish.
- **Stopping** (SIGTERM to the node): every listener stops accepting, lets its open
  associations finish within ``node.stop_timeout_s``, then aborts the rest, and exits.
- **Reload** (SIGHUP): a new set of listeners starts with the new configuration on the same
  socket, then the old ones stop as above: no moment without a listener, and no connection
  waiting in the queue is lost.
  The number of listeners changes at a restart only.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dicomnode._uid_checks import skip_pydicom_warnings
from dicomnode.children import STOP_SIGNALS, die_with_parent, stop_signals_held
from dicomnode.config import Config
from dicomnode.gate import GatedServer, SharedCounts
from dicomnode.ingest import Ingest
from dicomnode.logs import setup_logging
from dicomnode.projects import Router
from dicomnode.signals import Signals
from dicomnode.spool import Spool

log = logging.getLogger(__name__)
_node_log = logging.getLogger("dicomnode.node")  # the lines of the node's stop

__all__ = ["ABORT_GRACE_S", "ListenerPool", "drain"]

ABORT_GRACE_S = 10.0  # for aborted associations to end before "stopped" is logged
_TICK_S = 0.5
_START_TIMEOUT_S = 60.0


def drain(listeners: list[GatedServer], deadline: float, timeout: float) -> bool:
    """Wait until the associations of ``listeners`` have ended, up to ``deadline``; then
    A-ABORT those still open and wait for them to end. True once none is open.

    Logged as the node's stop (``dicomnode.node``), in the node's process or a listener's."""
    log = _node_log

    def still_open() -> int:
        return sum(server.associations for server in listeners)

    if still_open():
        log.info("waiting for %d open association(s) to end", still_open())
    while still_open() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not still_open():
        return True
    log.warning(
        "aborting %d association(s) still open after %.0f s (node.stop_timeout_s); their "
        "senders keep what was not acknowledged and send it again",
        still_open(),
        timeout,
    )
    aborted: list[Any] = []
    grace = time.monotonic() + ABORT_GRACE_S
    while still_open() and time.monotonic() < grace:
        for server in listeners:
            for association in server.active_associations:
                if not any(association is a for a in aborted):
                    aborted.append(association)
                    # abort() waits for the peer to close: one thread each, bounded by grace
                    threading.Thread(
                        target=association.abort, name="dicomnode-abort", daemon=True
                    ).start()
        time.sleep(0.05)
    return not still_open()


# -- in the listener process ------------------------------------------------------------------


class _Refusals:
    """The gate's connection refusals, summed per reason between two sends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def count(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self._counts = dict(self._counts), collections.Counter()
        return counts


def _listener_main(
    index: int,
    row: int,
    config: Config,
    shared: SharedCounts,
    events: Any,
    parent: int,
    sock: socket.socket,
    pynetdicom_level: int = logging.WARNING,
) -> None:
    """Entry point of listener process ``index`` (shared-count row ``row``); pynetdicom logs
    at the node's level for it (``setup_logging``: quiet unless ``-v``), so that one listener
    and several log alike."""
    signals = Signals(STOP_SIGNALS)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held since the spawn
    die_with_parent(signal.SIGTERM)  # stop accepting
    if os.getppid() != parent:
        return
    setup_logging(config.logging.level, config.logging.format)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)
    skip_pydicom_warnings()  # a process that only listens: see dicomnode._uid_checks
    refusals = _Refusals()
    ingest = Ingest(
        config.node,
        Spool(config.spool.path),
        on_received=lambda item_id, ae, size, seconds: events.put(
            ("received", item_id, ae, size, seconds)
        ),
        on_refused=lambda reason, ae: events.put(("refused", reason, ae)),
        on_connection_refused=refusals.count,
        router=Router(config) if config.projects else None,
        shared=shared,
        listener=row,
        sock=sock,
    )
    try:
        ingest.start()
    except Exception as exc:
        events.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        return
    server = ingest.listener
    assert server is not None
    events.put(("ready", index, os.getpid()))

    def flush() -> None:
        counts = refusals.take()
        if counts:
            events.put(("connections-refused", counts))

    while not signals.wait(_TICK_S) and os.getppid() == parent:
        flush()
    ingest.stop()  # no new connections; the open associations may finish
    sock.close()
    timeout = config.node.stop_timeout_s
    drain([server], time.monotonic() + timeout, timeout)
    flush()
    if os.getppid() != parent:
        # The node is gone (PR_SET_PDEATHSIG's SIGTERM, or the check above): nobody reads the
        # queue any more, and its pipe is still open in the other listeners, so a full pipe
        # would block the exit for ever. What was not read is found by the next node's rescan.
        events.cancel_join_thread()
    events.close()


# -- in the node's process --------------------------------------------------------------------


class _Listener:
    def __init__(self, index: int, row: int, process: Any) -> None:
        self.index = index
        self.row = row
        self.process = process
        self.stopping = False


class ListenerPool:
    """The listener processes of a node (see the module docstring): what ``Node`` needs of
    :class:`dicomnode.ingest.Ingest` (``start``, ``stop``, ``port``, ``open_associations``),
    plus :meth:`join`, :meth:`reload` and :attr:`alive`."""

    def __init__(
        self,
        config: Config,
        count: int,
        *,
        on_received: Callable[[str, str, int, float], None],
        on_refused: Callable[[str, str], None],
        on_connection_refused: Callable[[str, int], None],
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.count = count
        self.on_received = on_received
        self.on_refused = on_refused
        self.on_connection_refused = on_connection_refused
        self.on_restart = on_restart
        self._ctx = mp.get_context("spawn")
        # Two rows per listener: a reload's new set counts beside the old one while it drains.
        self.shared = SharedCounts(self._ctx, 2 * count)
        self._events: Any = self._ctx.Queue()
        self._lock = threading.Lock()
        self._listeners: list[_Listener] = []  # the current set
        self._retiring: list[_Listener] = []  # replaced by a reload, draining
        self._generation = 0
        self._closing = threading.Event()
        self._socket: socket.socket | None = None
        self._port = 0
        self._ready: dict[int, queue.Queue[str | None]] = {}
        self._thread: threading.Thread | None = None

    # -- what Node uses -------------------------------------------------------------------------

    listener = None  # no GatedServer in this process: join() waits for the listeners instead

    @property
    def port(self) -> int:
        return self._port

    @property
    def open_associations(self) -> int:
        return self.shared.associations

    @property
    def alive(self) -> int:
        """Listener processes of the current set that are running."""
        with self._lock:
            return sum(1 for ln in self._listeners if ln.process.is_alive())

    def pids(self) -> list[int]:
        with self._lock:
            return [int(ln.process.pid or 0) for ln in self._listeners]

    def start(self) -> None:
        """Check the port and TLS files here, then start the listeners and wait until each
        listens. Raises OSError (ssl.SSLError) as ``Ingest.start`` does, with none left."""
        node = self.config.node
        Ingest(node, Spool(self.config.spool.path))._ssl_context()  # a bad file: fail here
        self._socket = _bind(node.bind, node.port)
        self._port = int(self._socket.getsockname()[1])
        self._thread = threading.Thread(
            target=self._supervise, name="dicomnode-listeners", daemon=True
        )
        self._thread.start()
        try:
            self._start_set(self.config)
        except BaseException:
            self.stop()
            self.join(time.monotonic() + 5)
            raise
        log.info("%d listener processes on port %d", self.count, self._port)

    def stop(self) -> None:
        """Stop accepting: each listener lets its open associations finish
        (``node.stop_timeout_s``), then exits; :meth:`join` waits for that."""
        self._closing.set()
        with self._lock:
            everyone = [*self._listeners, *self._retiring]
        for listener in everyone:
            listener.stopping = True
            _signal(listener.process, signal.SIGTERM)
        # The node's copy of the socket goes now: once each listener has closed its own (at
        # once, on SIGTERM), the port refuses new connections while open associations finish,
        # as a single listener's does; none would be accepted from the queue any more.
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def join(self, deadline: float) -> bool:
        """Wait for the listeners to exit, up to ``deadline``; kill those still running
        then. True when all had ended by themselves."""
        with self._lock:
            everyone = [*self._listeners, *self._retiring]
        clean = True
        for listener in everyone:
            listener.process.join(max(0.0, deadline - time.monotonic()))
            if listener.process.is_alive():
                clean = False
                listener.process.kill()
                listener.process.join(5)
        if self._thread is not None:
            self._thread.join(5)
        self._dispatch_pending()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        return clean

    def reload(self, config: Config) -> None:
        """A new set of listeners with ``config`` beside the old, then the old ones go."""
        if config.node.listener_processes != self.count:
            log.warning("node.listeners changed: it applies at the next restart")
        if (config.node.bind, config.node.port) != (self.config.node.bind, self.config.node.port):
            log.warning("node.bind and node.port apply at the next restart with listeners")
            config = config.model_copy(
                update={
                    "node": config.node.model_copy(
                        update={"bind": self.config.node.bind, "port": self.config.node.port}
                    )
                }
            )
        Ingest(config.node, Spool(config.spool.path))._ssl_context()
        with self._lock:
            old = self._listeners
        self._start_set(config)
        self.config = config
        with self._lock:
            self._retiring += old
        for listener in old:
            listener.stopping = True
            _signal(listener.process, signal.SIGTERM)

    # -- inside ---------------------------------------------------------------------------------

    def _config_for_children(self, config: Config) -> Config:
        node = config.node.model_copy(update={"port": self._port})
        return config.model_copy(update={"node": node})

    def _start_set(self, config: Config) -> None:
        self._generation += 1
        half = (self._generation % 2) * self.count
        started = [self._spawn(index, half + index, config) for index in range(self.count)]
        with self._lock:
            self._listeners = started
        for listener in started:
            self._wait_ready(listener)

    def _spawn(self, index: int, row: int, config: Config) -> _Listener:
        if self._socket is None:
            raise OSError("the listeners are stopping: no new listener process")
        self.shared.forget(row)
        waiter: queue.Queue[str | None] = queue.Queue()
        with self._lock:
            self._ready[row] = waiter
        with stop_signals_held():
            process = self._ctx.Process(
                target=_listener_main,
                args=(
                    row,
                    row,
                    self._config_for_children(config),
                    self.shared,
                    self._events,
                    os.getpid(),
                    self._socket,  # passed as a file descriptor by multiprocessing
                    logging.getLogger("pynetdicom").getEffectiveLevel(),
                ),
                name=f"dicomnode-listener-{index}",
                daemon=True,
            )
            process.start()
        return _Listener(index, row, process)

    def _wait_ready(self, listener: _Listener) -> None:
        with self._lock:
            waiter = self._ready[listener.row]
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                failure = waiter.get(timeout=0.2)
                break
            except queue.Empty:
                if not listener.process.is_alive():
                    failure = f"exited with code {listener.process.exitcode} while starting"
                    break
                if time.monotonic() > deadline:
                    failure = "did not start listening in time"
                    break
        with self._lock:
            self._ready.pop(listener.row, None)
        if failure is not None:
            raise OSError(f"listener process {listener.index}: {failure}")

    def _supervise(self) -> None:
        """Read the listeners' messages; restart one that died without being asked."""
        last_check = time.monotonic()
        while True:
            try:
                message = self._events.get(timeout=_TICK_S)
            except queue.Empty:
                message = None
            except (EOFError, OSError):
                return
            if message is not None:
                self._dispatch(message)
            if time.monotonic() - last_check >= _TICK_S:
                last_check = time.monotonic()
                if not self._check():
                    return

    def _dispatch_pending(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                self._dispatch(self._events.get_nowait())

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        try:
            if kind == "received":
                self.on_received(*message[1:])
            elif kind == "refused":
                self.on_refused(*message[1:])
            elif kind == "connections-refused":
                for reason, count in message[1].items():
                    self.on_connection_refused(reason, count)
            elif kind in ("ready", "failed"):
                with self._lock:
                    waiter = self._ready.get(message[1])
                if waiter is not None:
                    waiter.put(None if kind == "ready" else str(message[2]))
                if kind == "failed":
                    log.error("listener process %d could not start: %s", message[1], message[2])
        except Exception:  # a counter or an audit line must not stop the supervisor
            log.exception("handling a message from a listener process failed")

    def _check(self) -> bool:
        """Restart dead listeners of the current set; forget retired ones that ended. False
        once stopping and every listener has ended."""
        with self._lock:
            self._retiring = [ln for ln in self._retiring if ln.process.is_alive()]
            current = list(self._listeners)
        for listener in current:
            process = listener.process
            if process.is_alive() or listener.stopping or self._closing.is_set():
                continue
            if listener.row in self._ready:
                continue  # starting: _wait_ready reports it
            log.error(
                "listener process %d (pid %s) ended with code %s; starting another",
                listener.index,
                process.pid,
                process.exitcode,
            )
            try:
                replacement = self._spawn(listener.index, listener.row, self.config)
            except OSError:  # stopping meanwhile
                continue
            with self._lock:
                self._listeners = [replacement if ln is listener else ln for ln in self._listeners]
            self.on_restart()
            threading.Thread(
                target=self._await_replacement, args=(replacement,), daemon=True
            ).start()
        if self._closing.is_set():
            with self._lock:
                everyone = [*self._listeners, *self._retiring]
            return any(ln.process.is_alive() for ln in everyone)
        return True

    def _await_replacement(self, listener: _Listener) -> None:
        try:
            self._wait_ready(listener)
        except OSError as exc:
            log.error("%s; trying again", exc)
            listener.stopping = False
            _signal(listener.process, signal.SIGKILL)


def _signal(process: Any, signum: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def _bind(bind: str, port: int) -> socket.socket:
    """The node's socket, shared by its listener processes: a port taken by another program,
    or an address not of this host, fails here; port 0 picks a free port. Bound only: the
    first listener that is ready to accept makes it listen (``GatedServer.server_activate``),
    so that no connection waits before any listener can take it."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
    except BaseException:
        sock.close()
        raise
    return sock
