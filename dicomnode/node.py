"""The node: spool, workers, forwarders, listener, metrics and audit, started and stopped
together.

Start-up order makes sure nothing is lost: the spool is taken (one node per spool, see
``Spool.lock``) and recovered (half-done work back to ``incoming/``, partial receives gone)
before anything can write to it; then the metrics and DICOM ports are bound (a port that is
taken, or an address that is not this host's, stops start-up with one line naming the setting,
before any worker is spawned); then workers and forwarders start.

SIGTERM or SIGINT: no new associations; the open ones may finish within
``node.stop_timeout_s`` and are then aborted (A-ABORT: what was not acknowledged is the
sender's to send again), while the workers finish the item in hand and take no other;
forwarders finish the batch in hand. "stopped" is logged once nothing receives any more, so no
C-STORE is acknowledged after it; what is acknowledged and not yet delivered waits in the
spool for the next start. The same holds when the signal goes to the whole process group
(Ctrl-C in a terminal): the workers get it too and stop quietly, and none is restarted.

SIGHUP reloads the configuration and every rule file:
the new one is validated completely first, and a bad one is refused (logged) while the old
one keeps running; a good one replaces workers and forwarders without losing anything (items
in the spool simply wait for the new workers), and restarts the listener only if its
address, AE title or TLS changed.

Every delivered item has exactly one ``cleaned`` audit line, even across ``kill -9``: the
worker leaves the line's record in the spool's ``journal/`` before the clean object can be
delivered; the node writes the line (when the worker reports, or before the first delivery
line, whichever comes first) and then removes the record; start-up writes what a crash left,
skipping ids whose line is already in the trail.

The review page (``dicomnode.review``, ``review.enabled``) is served from a thread of this
process; its port is bound with the others at start-up and it stops first, so that no action
reaches the spool while the node stops. It acts through the spool's own operations and the
node's reload.

With projects, the project each instance was given at receive time (in its spool name) labels
its metrics and is a ``project`` field of each of its audit lines; a filter's drop is counted
(``dicomnode_instances_dropped_total``) and audited (``dropped``). A reload may change the
projects, but not turn them on or off (the spool names and metric labels differ): restart.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode import __version__, quarantine
from dicomnode.audit import AuditTrail
from dicomnode.config import Config, load_config
from dicomnode.errors import DicomnodeError, StartupError
from dicomnode.forward import Delivery, Forwarder, Result, sender_for
from dicomnode.ingest import Ingest
from dicomnode.listeners import ABORT_GRACE_S, ListenerPool
from dicomnode.listeners import drain as _drain
from dicomnode.metrics import Metrics, serve_metrics
from dicomnode.pipeline import Outcome, WorkerPool, build_projects
from dicomnode.projects import Router
from dicomnode.review.state import Activity, DestinationState, Event
from dicomnode.scrub import load_profile
from dicomnode.signals import Signals
from dicomnode.spool import Spool, SpoolLock, calling_ae_of, project_of
from dicomnode.validate import require_valid

if TYPE_CHECKING:
    from dicomnode.gate import GatedServer
    from dicomnode.review.server import ReviewServer

log = logging.getLogger(__name__)


__all__ = ["Node", "validate"]


def validate(config: Config, secret: bytes) -> None:
    """Everything a worker will build, built once here: a bad rule or policy fails now."""
    load_profile(config.scrub.options, config.scrub.site_rules)
    build_projects(config, secret)


def _callers(config: Config) -> set[str]:
    """Calling AE titles that always get their own metric label."""
    callers = {c.ae_title for c in config.node.allowed_callers}
    for project in config.projects:
        callers.update(project.match.calling_ae_titles)
    return callers


def _cannot_listen(exc: OSError, what: str, host: str, port: int, section: str) -> StartupError:
    """One line for a port that cannot be bound: the address, why, the setting, the fix."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    flag = {"node": "--port", "metrics": "--metrics-port", "review": "--review-port"}[section]
    port_setting = f"{section}.port, {flag}"
    bind_setting = f"{section}.bind" + (", --bind" if section == "node" else "")
    if isinstance(exc, socket.gaierror):
        why = f"{host} does not resolve to an address ({bind_setting})"
        fix = "give an address of this host (ip -brief address), or 0.0.0.0 for all of them"
    elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        why = f"{host} is not an address of this host ({bind_setting})"
        fix = "use one it has (ip -brief address), or 0.0.0.0 for all of them"
    elif exc.errno == errno.EADDRINUSE:
        why = f"the port is already in use ({port_setting})"
        fix = f"stop what holds it (ss -ltnp 'sport = :{port}' names it) or choose another port"
    elif exc.errno in (errno.EACCES, errno.EPERM) and 0 < port < 1024:
        why = (
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE "
            f"({port_setting})"
        )
        fix = (
            "choose a port from 1024 up, or grant the capability "
            "(systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)"
        )
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = f"permission denied ({port_setting})"
        fix = "check what forbids it here (SELinux, a sandbox), or choose another port"
    else:
        why = f"{exc.strerror or type(exc).__name__} ({bind_setting}; {port_setting})"
        fix = "check both settings"
    return StartupError(f"cannot {what} on {address}: {why}; {fix}")


def _listener_of(ingest: Ingest | ListenerPool) -> list[GatedServer]:
    """The listener of ``ingest`` while it runs: after ``Ingest.stop`` it still counts (and
    can abort) the associations that were open (see ``Node.stop``)."""
    server = ingest.listener
    return [server] if server is not None else []


class Node:
    """One running dicomnode."""

    def __init__(
        self,
        config: Config,
        secret: bytes,
        *,
        loader: Callable[[], Config] | None = None,
        demo: bool = False,
        validated: bool = False,
    ) -> None:
        """``validated``: the caller built the stages of this very configuration already
        (``require_valid`` with the secret, as ``dicomnode serve`` does); building them a
        second time cost every start ~0.3 s."""
        if not validated:
            validate(config, secret)
        self.config = config
        self.secret = secret
        self.demo = demo
        self.loader = loader or (lambda: load_config(config.source))
        self.spool = Spool(config.spool.path)
        # Before anything touches the spool or the audit trail: one node per spool.
        self._spool_lock: SpoolLock | None = self.spool.lock(config.spool.mode)
        try:
            self._make_parts(config)
        except BaseException:
            self._release_spool()
            raise
        self._lock = threading.Lock()
        self._metrics_server: Any = None
        # Listeners replaced by a reload whose associations may still be open.
        self._retired: list[GatedServer] = []

    # -- parts -----------------------------------------------------------------------------

    def _make_parts(self, config: Config) -> None:
        self.audit = AuditTrail(
            config.logging.audit_file,
            max_mb=config.logging.audit_max_mb,
            backups=config.logging.audit_backups,
            access=config.logging.audit_mode,
        )
        self.per_project = bool(config.projects)
        self.metrics = Metrics(per_project=self.per_project, known_callers=_callers(config))
        # Ids whose ``cleaned`` line is written (the latest ones): an item cleaned twice (a
        # worker died between its clean copy and deleting its original) gets one line.
        self._cleaned_ids: set[str] = set()
        self._cleaned_order: deque[str] = deque()
        self._audit_lock = threading.Lock()
        # For the review page: the instances of the last day, the last delivery per destination.
        self.activity = Activity()
        self._last_delivered: dict[str, float] = {}
        self.review: ReviewServer | None = None
        self.pool = self._pool(config)
        self.forwarders = self._forwarders(config)
        self.ingest = self._ingest(config)

    def _pool(self, config: Config) -> WorkerPool:
        return WorkerPool(config, self.secret, self.spool, on_outcome=self._on_outcome)

    def _forwarders(self, config: Config) -> list[Forwarder]:
        forwarders = []
        for destination in config.destinations:
            lanes = getattr(destination, "parallel", 1)
            for lane in range(lanes):
                forwarders.append(
                    Forwarder(
                        self.spool,
                        sender_for(destination, config.node.ae_title, hold=True),
                        retry=getattr(destination, "retry", None),
                        batch_size=getattr(destination, "batch_size", 100),
                        keep_days=config.spool.keep_forwarded_days,
                        on_result=self._on_result,
                        lane=lane,
                        lanes=lanes,
                    )
                )
        return forwarders

    def _ingest(self, config: Config) -> Ingest | ListenerPool:
        count = config.node.listener_processes
        if count > 1:
            return ListenerPool(
                config,
                count,
                on_received=self._on_received,
                on_refused=self._on_refused,
                on_connection_refused=lambda reason, n: self.metrics.connections_refused.labels(
                    reason
                ).inc(n),
                on_restart=self.metrics.listener_restarts.inc,
            )
        return Ingest(
            config.node,
            self.spool,
            on_received=self._on_received,
            on_refused=self._on_refused,
            # a metric only: a flood must not fill the audit trail
            on_connection_refused=lambda reason: self.metrics.connections_refused.labels(
                reason
            ).inc(),
            router=Router(config) if config.projects else None,
        )

    def _project(self, item_id: str) -> dict[str, str]:
        """The ``project`` field of an item's audit lines (none without projects)."""
        return {"project": project_of(item_id)} if self.per_project else {}

    def _describe(self, config: Config) -> None:
        projects = (
            {"projects": ",".join(p.name for p in config.projects)} if config.projects else {}
        )
        self.metrics.describe_config(
            {
                **projects,
                "ae_title": config.node.ae_title,
                "port": str(config.node.port),
                "options": ",".join(sorted(o.value for o in config.scrub.options)),
                "site_rules": str(config.scrub.site_rules or ""),
                "pixels": config.pixels.mode if config.pixels.enabled else "off",
                "remover": config.pixels.remover.method,
                "destinations": ",".join(d.name for d in config.destinations),
                "source": str(config.source or "embedded defaults"),
            }
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Recover the spool, bind the ports, start the workers and forwarders.

        Raises :class:`StartupError` (a port is taken, an address is not this host's) with
        nothing left running and the spool released. (The spool is taken when the node is
        made: a second node on it fails there.)
        """
        log.info("dicomnode %s starting; spool %s", __version__, self.spool.root)
        try:
            self._start()
        except BaseException:
            self._abandon()
            raise

    def _start(self) -> None:
        config = self.config
        self.spool.create([d.name for d in config.destinations], access=config.spool.mode)
        in_doubt = self.spool.work_ids()
        self.spool.recover()
        self._replay_journal(in_doubt)
        self._describe(config)
        self.metrics.watch_spool(self._spool_state)
        if config.metrics.enabled:
            try:
                self._metrics_server = serve_metrics(
                    config.metrics.port, config.metrics.bind, self.metrics.registry
                )
            except OSError as exc:
                raise _cannot_listen(
                    exc, "serve metrics", config.metrics.bind, config.metrics.port, "metrics"
                ) from None
            log.info("metrics on http://%s:%d/metrics", config.metrics.bind, self.metrics_port)
        if config.review.enabled:
            self._start_review(config)
        try:
            self.ingest.start()
        except OSError as exc:
            if isinstance(exc, ssl.SSLError) or exc.filename is not None:
                raise StartupError(
                    f"cannot load the node's TLS certificate or key (node.tls): {exc}"
                ) from None
            raise _cannot_listen(
                exc, "listen for DICOM", config.node.bind, config.node.port, "node"
            ) from None
        self.metrics.open_associations.set_function(lambda: float(self.ingest.open_associations))
        self.metrics.listeners.set_function(
            lambda: float(self.ingest.alive if isinstance(self.ingest, ListenerPool) else 1)
        )
        self.metrics.workers_ready.set_function(lambda: float(self.pool.ready))
        # Received items wait in incoming/ until the workers are up (they rescan it).
        self.pool.start()
        for forwarder in self.forwarders:
            forwarder.start()

    def _abandon(self) -> None:
        """Undo a start that failed half-way (the ports bound, the spool taken)."""
        self.ingest.stop()
        if isinstance(self.ingest, ListenerPool):
            self.ingest.join(time.monotonic() + 5)
        self.pool.stop(5.0)  # nothing to do when it had not started
        for forwarder in self.forwarders:
            forwarder.stop()
            if forwarder.is_alive():
                forwarder.join(5.0)
        if self._metrics_server is not None:
            self._metrics_server[0].shutdown()
            self._metrics_server[0].server_close()
            self._metrics_server = None
        self._stop_review()
        self.audit.close()
        self._release_spool()

    def _start_review(self, config: Config) -> None:
        """Bind the review page's port (one line when it cannot), then serve it."""
        from dicomnode.review.app import Backend
        from dicomnode.review.server import ReviewServer, session_key

        settings = config.review
        backend = Backend(
            spool=self.spool,
            config=lambda: self.config,
            audit=self.audit,
            secret=self.secret,
            key=session_key(settings, self.secret, demo=self.demo),
            destinations=self.destination_states,
            activity=self.activity,
            reload=self.reload,
            submit=lambda item_id: self.pool.submit(item_id),
            wake_forwarders=self._wake_forwarders,
        )
        self.review = ReviewServer(backend, settings)
        try:
            self.review.bind()
        except OSError as exc:
            self.review = None
            raise _cannot_listen(
                exc, "serve the review page", settings.bind, settings.port, "review"
            ) from None
        if self.demo:
            self.review.demo_reviewer()
        self.review.start()

    def _stop_review(self) -> None:
        if self.review is not None:
            self.review.stop()
            self.review = None

    @property
    def review_port(self) -> int:
        return self.review.port if self.review is not None else 0

    def destination_states(self) -> list[DestinationState]:
        """Each destination as its forwarders last saw it (the review page's overview)."""
        states = []
        for destination in self.config.destinations:
            lanes = [f for f in self.forwarders if f.sender.name == destination.name]
            errors = [f.last_error for f in lanes if f.last_error]
            states.append(
                DestinationState(
                    name=destination.name,
                    type=destination.type,
                    answering=not errors,
                    last_error=errors[0] if errors else None,
                    # its consecutive failures (the back-off), read-only
                    failures=max((int(getattr(f, "_failures", 0)) for f in lanes), default=0),
                    last_delivered=self._last_delivered.get(destination.name),
                )
            )
        return states

    def _wake_forwarders(self) -> None:
        for forwarder in self.forwarders:
            forwarder.wake()

    def _release_spool(self) -> None:
        if self._spool_lock is not None:
            self._spool_lock.release()
            self._spool_lock = None

    @property
    def metrics_port(self) -> int:
        if self._metrics_server is None:
            return 0
        return int(self._metrics_server[0].server_address[1])

    def stop(self, timeout: float | None = None) -> bool:
        """Stop listening; let open associations finish (then abort them) and workers finish
        the item in hand, all within ``timeout`` (``node.stop_timeout_s``). True if the
        workers and forwarders stopped in time (aborted associations are the senders' to
        resend, not work of ours that was interrupted)."""
        timeout = timeout if timeout is not None else self.config.node.stop_timeout_s
        log.info(
            "stopping: no new associations; open ones may finish and workers finish the "
            "instance in hand (up to %.0f s, node.stop_timeout_s)",
            timeout,
        )
        deadline = time.monotonic() + timeout
        self._stop_review()  # no more actions on the spool
        self.pool.close()  # its workers may have had the signal too: restart none of them
        listeners = [*self._retired, *_listener_of(self.ingest)]
        processes = self.ingest if isinstance(self.ingest, ListenerPool) else None
        self.ingest.stop()
        ended: list[bool] = []

        def drain_all() -> None:
            done = _drain(listeners, deadline, timeout)
            if processes is not None:  # each drains its own, then aborts within the grace
                done = processes.join(deadline + ABORT_GRACE_S + 2) and done
            ended.append(done)

        drain = threading.Thread(target=drain_all, name="dicomnode-drain", daemon=True)
        drain.start()
        clean = self.pool.stop(max(1.0, deadline - time.monotonic()))
        drain.join()
        for forwarder in self.forwarders:
            forwarder.stop()
        for forwarder in self.forwarders:
            forwarder.join(max(1.0, deadline - time.monotonic()))
            clean = clean and not forwarder.is_alive()
        if self._metrics_server is not None:
            self._metrics_server[0].shutdown()
            self._metrics_server[0].server_close()
            self._metrics_server = None
        self.audit.close()
        notes = []
        if not clean:
            notes.append("some work was interrupted; it resumes at the next start")
        if ended and not ended[0]:
            notes.append(
                f"associations still open {ABORT_GRACE_S:.0f} s after A-ABORT; "
                "they can no longer be acknowledged"
            )
        log.info("stopped%s", f" ({'; '.join(notes)})" if notes else "")
        self._release_spool()
        return clean

    def run(self) -> int:
        """Start, serve until SIGTERM or SIGINT (reload on SIGHUP), stop; the exit code."""

        signals = Signals((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        self.start()
        last_janitor = time.monotonic()
        while True:
            received = signals.wait(0.5)
            stops = [s for s in received if s != signal.SIGHUP]
            if stops:
                log.info("received %s", signal.Signals(stops[0]).name)
                break
            if received:
                self.reload()
            if time.monotonic() - last_janitor > 600:
                last_janitor = time.monotonic()
                self._janitor()
        return 0 if self.stop() else 1

    def reload(self, config: Config | None = None) -> bool:
        """Swap in a new configuration, or keep the old one if the new one is not valid."""
        try:
            new = config or self.loader()
            require_valid(new, secret=self.secret)  # what check-config and start-up check
        except DicomnodeError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return False
        except Exception as exc:  # a half-valid file must never take the node down
            log.error("reload refused (%s), the running configuration stays", type(exc).__name__)
            return False
        with self._lock:
            old = self.config
            if new.spool.path != old.spool.path:
                log.error("reload refused: spool.path cannot change while running; restart")
                return False
            if bool(new.projects) != bool(old.projects):
                log.error(
                    "reload refused: projects cannot be turned %s while running (spool names "
                    "and metric labels change); restart",
                    "on" if new.projects else "off",
                )
                return False
            self.spool.create([d.name for d in new.destinations], access=new.spool.mode)
            pool, self.pool = self.pool, self._pool(new)
            self.pool.start()
            pool.stop(old.node.stop_timeout_s)  # its items stay in incoming/ for the new one
            forwarders, self.forwarders = self.forwarders, self._forwarders(new)
            for forwarder in forwarders:
                forwarder.stop()
            for forwarder in forwarders:
                forwarder.join(old.node.stop_timeout_s)
            for forwarder in self.forwarders:
                forwarder.start()
            listener = ("ae_title", "bind", "port", "tls", "max_pdu", "max_associations")
            if isinstance(self.ingest, ListenerPool):
                self.ingest.reload(new)  # a new set beside the old, then the old one drains
            elif any(getattr(new.node, k) != getattr(old.node, k) for k in listener):
                # Its open associations carry on; a stop waits for them too.
                self._retired = [s for s in self._retired if s.associations]
                self._retired += _listener_of(self.ingest)
                self.ingest.stop()
                self.ingest = self._ingest(new)
                self.ingest.start()
            else:
                self.ingest.update(new.node)
                self.ingest.set_router(Router(new) if new.projects else None)
            self.config = new
            self._describe(new)
            if new.review != old.review:
                log.warning("review: settings changed; they apply at the next restart")
        log.info("configuration reloaded from %s", new.source or "embedded defaults")
        return True

    def _janitor(self) -> None:
        if self.config.spool.keep_forwarded_days > 0:
            self.spool.expire_sent(self.config.spool.keep_forwarded_days)
        # Originals full of PHI do not stay in quarantine forever (audited, one line each).
        quarantine.expire(self.spool.root, self.config.quarantine.keep_days, self.audit)
        # Receive files of associations that died mid-transfer (never acknowledged).
        limit = time.time() - max(3600, 4 * self.config.node.network_timeout_s)
        for path in self.spool.tmp.iterdir():
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
            except FileNotFoundError:
                pass

    def _spool_state(self) -> tuple[dict[str, Any], int, int]:
        return (
            self.spool.counts(),
            self.spool.free_bytes(),
            self.config.node.disk_floor_mb * 1024 * 1024,
        )

    # -- events between the parts ----------------------------------------------------------

    def _on_received(self, item_id: str, calling_ae: str, size: int, seconds: float) -> None:
        self.metrics.count_received(calling_ae, project_of(item_id), size)
        self.activity.add(Event.RECEIVED)
        self.metrics.observe_stages({"receive": seconds})
        self.pool.submit(item_id)

    def _on_refused(self, reason: str, calling_ae: str) -> None:
        self.metrics.refused.labels(reason).inc()
        self.audit.write("refused", calling_ae=calling_ae, reason=reason)

    def _on_outcome(self, outcome: Outcome) -> None:
        self.metrics.observe_stages(outcome.seconds)
        if outcome.gpu:
            self.metrics.gpu_memory.set(outcome.gpu.get("memory_bytes", 0))
            if "utilisation_ratio" in outcome.gpu:
                self.metrics.gpu_utilisation.set(outcome.gpu["utilisation_ratio"])
        if outcome.status == "clean":
            self.metrics.count_cleaned(outcome.project)
            self.activity.add(Event.CLEANED)
            self.metrics.text_regions.inc(outcome.done.get("pixels", {}).get("boxes", 0))
            self._audit_cleaned(outcome.id, outcome)
            for forwarder in self.forwarders:
                forwarder.wake()
        elif outcome.status == "dropped":
            self.metrics.count_dropped(outcome.project, outcome.reason or "unknown")
            self.audit.write(
                "dropped",
                id=outcome.id,
                calling_ae=outcome.calling_ae,
                project=outcome.project,
                reason=outcome.reason,
                rule=outcome.rule,
            )
        elif outcome.status == "quarantined":
            self.metrics.count_quarantined(outcome.reason or "unknown", outcome.project)
            self.activity.add(Event.QUARANTINED)
            # text-remains: the pixel stage's boxes per kind (counts, no coordinates or text)
            extra: dict[str, Any] = {"rule": outcome.rule} if outcome.rule else {}
            if outcome.done:
                extra["done"] = outcome.done
            self.audit.write(
                "quarantined",
                id=outcome.id,
                calling_ae=outcome.calling_ae,
                **self._project(outcome.id),
                stage=outcome.stage,
                reason=outcome.reason,
                **extra,
            )
            log.warning(
                "quarantined %s from %s: %s at stage %s",
                outcome.id,
                outcome.calling_ae,
                outcome.reason,
                outcome.stage,
            )

    # -- the cleaned line of each item, exactly once ----------------------------------------

    def _audit_cleaned(self, item_id: str, outcome: Outcome | None = None) -> None:
        """Write the ``cleaned`` line of ``item_id`` from its journal record (or from the
        worker's outcome when there is none), unless it is written already; then drop the
        record."""
        with self._audit_lock:
            record = self.spool.journal_record(item_id)
            if item_id not in self._cleaned_ids:
                if record is not None:
                    self.audit.write(
                        "cleaned",
                        when=record.get("time"),
                        id=item_id,
                        calling_ae=record.get("calling_ae", calling_ae_of(item_id)),
                        **self._project(item_id),
                        uids=record.get("uids", {}),
                        done=record.get("done", {}),
                        destinations=record.get("destinations", []),
                    )
                elif outcome is not None:
                    self.audit.write(
                        "cleaned",
                        id=item_id,
                        calling_ae=outcome.calling_ae,
                        **self._project(item_id),
                        uids=outcome.uids,
                        done=outcome.done,
                        destinations=self._destinations_of(outcome.project),
                    )
                else:
                    return  # not cleaned by this node since it started: written before
                self._remember_cleaned([item_id])
            if record is not None:
                self.spool.forget_record(item_id)

    def _destinations_of(self, project: str) -> list[str]:
        for configured in self.config.projects:
            if configured.name == project:
                return list(configured.destinations)
        return [d.name for d in self.config.destinations]

    def _remember_cleaned(self, ids: Iterable[str]) -> None:
        for item_id in ids:
            if item_id in self._cleaned_ids:
                continue
            self._cleaned_ids.add(item_id)
            self._cleaned_order.append(item_id)
            if len(self._cleaned_order) > 20_000:
                self._cleaned_ids.discard(self._cleaned_order.popleft())

    def _replay_journal(self, in_doubt: Iterable[str]) -> None:
        """After a crash: write the ``cleaned`` lines the journal holds and the trail lacks.

        ``in_doubt`` are the items that were in a worker's hands; they are cleaned again, and
        those whose line is already in the trail must not get a second one.
        """
        waiting = self.spool.journal_ids()
        candidates = set(waiting) | set(in_doubt)
        if not candidates:
            return
        with self._audit_lock:
            written = self.audit.written("cleaned", candidates)
            self._remember_cleaned(sorted(written))
        recovered = 0
        for item_id in waiting:
            if item_id not in written and self.spool.journal_record(item_id) is not None:
                recovered += 1
            self._audit_cleaned(item_id)
        if recovered:
            log.info(
                "audit: %d cleaned line(s) written from the journal after a restart", recovered
            )

    def _on_result(
        self, destination: str, path: Path, result: Result, seconds: float, size: int
    ) -> None:
        item_id = path.stem
        if result.status in (Delivery.DELIVERED, Delivery.REJECTED):
            self._audit_cleaned(item_id)  # before its delivery line, even if the worker is late
        project = project_of(item_id)
        if result.status is Delivery.DELIVERED:
            self.metrics.count_forwarded(destination, project, size)
            self.activity.add(Event.FORWARDED)
            self._last_delivered[destination] = time.time()
            self.metrics.observe_stages({"forward": seconds})
            self.audit.write(
                "delivered",
                id=item_id,
                calling_ae=calling_ae_of(item_id),
                **self._project(item_id),
                destination=destination,
            )
        elif result.status is Delivery.REJECTED:
            self.metrics.count_dead_lettered(destination, project)
            self.audit.write(
                "dead-lettered",
                id=item_id,
                calling_ae=calling_ae_of(item_id),
                **self._project(item_id),
                destination=destination,
                reason=result.reason,
            )
            log.warning("dead-lettered %s for %s: %s", item_id, destination, result.reason)
        else:
            self.metrics.retries.labels(destination).inc()
