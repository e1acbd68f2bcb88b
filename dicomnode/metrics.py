"""Every Prometheus metric of the node, in one place, with the registry passed in.

Counters per outcome (received by calling AE, forwarded by destination, quarantined by
reason, dead-lettered, refused), latency histograms per stage, gauges read at scrape time
(spool depth and oldest age per state, open associations, free disk), build and config info,
and GPU memory and utilisation when a GPU stage runs. Labels never carry PHI: AE titles,
destination names, stage names and quarantine reasons only.

Every label has a bounded set of values, whatever senders declare: a calling AE title is a
label only if it is configured (``node.allowed_callers``, a project's ``calling_ae_titles``)
or among the first ``MAX_CALLER_LABELS`` others seen; later ones count as ``other``. With
projects, the instance counters (received, cleaned, quarantined, dropped, forwarded,
dead-lettered) also carry ``project`` (a configured name, or ``none``); without projects
they are as they always were.
"""

from __future__ import annotations

import platform
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicomnode import __version__

__all__ = ["MAX_CALLER_LABELS", "STAGES", "Metrics", "serve_metrics"]

MAX_CALLER_LABELS = 32
OTHER_CALLERS = "other"

STAGES = ("receive", "read", "scrub", "pixels", "detect", "remove", "verify", "encode", "forward")
# From a few milliseconds (a header) to minutes (a diffusion-inpainted cine loop).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the node's exit


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line every few seconds says nothing."""


def serve_metrics(
    port: int, addr: str, registry: CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """prometheus_client's HTTP exposition on a daemon thread, like its
    ``start_http_server``, but looking for a stop every 0.1 s instead of 0.5 s: a node's stop
    waited for that poll (a restart, and every node a test stops)."""
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = _MetricsServer6 if family == socket.AF_INET6 else _MetricsServer
    server = make_server(addr, port, make_wsgi_app(registry), server_class, _QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics", daemon=True
    )
    thread.start()
    return server, thread


class _SpoolCollector(Collector):
    """Spool depth, oldest age and free disk, computed when Prometheus scrapes."""

    def __init__(self, read: Callable[[], tuple[dict[str, Any], int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts, free, floor = self._read()
        items = GaugeMetricFamily(
            "dicomnode_spool_items", "Items in each spool state", labels=["state"]
        )
        oldest = GaugeMetricFamily(
            "dicomnode_spool_oldest_age_seconds",
            "Age of the oldest item in each spool state",
            labels=["state"],
        )
        for state, value in sorted(counts.items()):
            items.add_metric([state], value.count)
            oldest.add_metric([state], value.oldest_age_s or 0.0)
        yield items
        yield oldest
        yield GaugeMetricFamily(
            "dicomnode_spool_free_bytes", "Free disk space of the spool", value=free
        )
        yield GaugeMetricFamily(
            "dicomnode_disk_floor_bytes", "Free space below which C-STORE is refused", value=floor
        )


class Metrics:
    """The node's metrics, registered in ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        per_project: bool = False,
        known_callers: Iterable[str] = (),
    ) -> None:
        """``per_project``: the configuration has projects (the instance counters get a
        ``project`` label); ``known_callers``: calling AE titles always given their own label."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.per_project = per_project
        p = ["project"] if per_project else []
        self._known_callers = frozenset(known_callers)
        self._other_callers: set[str] = set()
        self.received = Counter(
            "dicomnode_instances_received_total",
            "Instances received and made durable",
            ["calling_ae", *p],
            registry=r,
        )
        self.received_bytes = Counter(
            "dicomnode_received_bytes_total",
            "Bytes of instances received",
            ["calling_ae", *p],
            registry=r,
        )
        self.refused = Counter(
            "dicomnode_stores_refused_total",
            "C-STOREs and associations refused",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "dicomnode_connections_refused_total",
            "Connections turned away or cut before or outside an association (by the gate)",
            ["reason"],
            registry=r,
        )
        self.cleaned = Counter(
            "dicomnode_instances_cleaned_total",
            "Instances that passed every stage",
            p,
            registry=r,
        )
        self.dropped = Counter(
            "dicomnode_instances_dropped_total",
            "Instances a project's filter dropped (acknowledged, never forwarded)",
            ["project", "reason"],
            registry=r,
        )
        self.forwarded = Counter(
            "dicomnode_instances_forwarded_total",
            "Instances a destination confirmed",
            ["destination", *p],
            registry=r,
        )
        self.forwarded_bytes = Counter(
            "dicomnode_forwarded_bytes_total",
            "Bytes a destination confirmed",
            ["destination", *p],
            registry=r,
        )
        self.retries = Counter(
            "dicomnode_forward_retries_total",
            "Deliveries postponed to retry",
            ["destination"],
            registry=r,
        )
        self.quarantined = Counter(
            "dicomnode_instances_quarantined_total",
            "Instances sent to quarantine",
            ["reason", *p],
            registry=r,
        )
        self.dead_lettered = Counter(
            "dicomnode_instances_dead_lettered_total",
            "Clean instances given up on",
            ["destination", *p],
            registry=r,
        )
        self.text_regions = Counter(
            "dicomnode_text_regions_total", "Burned-in text regions removed", registry=r
        )
        self.stage_seconds = Histogram(
            "dicomnode_stage_seconds",
            "Time per instance in a stage",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.open_associations = Gauge(
            "dicomnode_open_associations", "Associations open now", registry=r
        )
        self.listeners = Gauge(
            "dicomnode_listeners",
            "Listener processes accepting on the DICOM port (node.listeners)",
            registry=r,
        )
        self.workers_ready = Gauge(
            "dicomnode_workers_ready",
            "Worker processes whose pipeline (models included) is loaded (pipeline.workers)",
            registry=r,
        )
        self.listener_restarts = Counter(
            "dicomnode_listener_restarts",
            "Listener processes that ended unasked and were started again",
            registry=r,
        )
        self.gpu_memory = Gauge(
            "dicomnode_gpu_memory_bytes", "GPU memory in use by a GPU stage", registry=r
        )
        self.gpu_utilisation = Gauge(
            "dicomnode_gpu_utilisation_ratio",
            "GPU utilisation while a GPU stage runs (0-1)",
            registry=r,
        )
        self.build = Info("dicomnode_build", "Version of dicomnode and its runtime", registry=r)
        self.config = Info("dicomnode_config", "The configuration in force", registry=r)
        import pydicom
        import pynetdicom

        self.build.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "pydicom": pydicom.__version__,
                "pynetdicom": pynetdicom.__version__,
            }
        )
        for stage in STAGES:  # every series exists from the start, at zero
            self.stage_seconds.labels(stage)
        self._lock = threading.Lock()

    def watch_spool(self, read: Callable[[], tuple[dict[str, Any], int, int]]) -> None:
        self.registry.register(_SpoolCollector(read))

    def describe_config(self, values: dict[str, str]) -> None:
        self.config.info(values)

    # -- instance counters (with the project label when there are projects) ----------------

    def caller(self, calling_ae: str) -> str:
        """The label of a calling AE title (bounded: see the module docstring)."""
        if calling_ae in self._known_callers:
            return calling_ae
        with self._lock:
            if calling_ae in self._other_callers:
                return calling_ae
            if len(self._other_callers) < MAX_CALLER_LABELS:
                self._other_callers.add(calling_ae)
                return calling_ae
        return OTHER_CALLERS

    def _count(self, counter: Counter, labels: tuple[str, ...], project: str, n: float) -> None:
        values = (*labels, project) if self.per_project else labels
        (counter.labels(*values) if values else counter).inc(n)

    def count_received(self, calling_ae: str, project: str, size: int) -> None:
        caller = self.caller(calling_ae)
        self._count(self.received, (caller,), project, 1)
        self._count(self.received_bytes, (caller,), project, size)

    def count_cleaned(self, project: str) -> None:
        self._count(self.cleaned, (), project, 1)

    def count_quarantined(self, reason: str, project: str) -> None:
        self._count(self.quarantined, (reason,), project, 1)

    def count_dropped(self, project: str, reason: str) -> None:
        self.dropped.labels(project, reason).inc()

    def count_forwarded(self, destination: str, project: str, size: int) -> None:
        self._count(self.forwarded, (destination,), project, 1)
        self._count(self.forwarded_bytes, (destination,), project, size)

    def count_dead_lettered(self, destination: str, project: str) -> None:
        self._count(self.dead_lettered, (destination,), project, 1)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            if stage in STAGES:
                self.stage_seconds.labels(stage).observe(value)
