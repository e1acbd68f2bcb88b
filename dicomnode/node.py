"""The node: spool, workers, forwarders and listener, started and stopped together.

Start-up order makes sure nothing is lost: the spool is recovered first (half-done work back
to ``incoming/``), then workers and forwarders start, then the listener. Stopping goes the
other way: no new associations, workers finish the item in hand, forwarders the batch in hand.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from dicomnode import __version__
from dicomnode.config import Config
from dicomnode.forward import Forwarder, Result, sender_for
from dicomnode.ingest import Ingest
from dicomnode.pipeline import Outcome, WorkerPool
from dicomnode.scrub import load_profile
from dicomnode.spool import Spool

log = logging.getLogger(__name__)

__all__ = ["Node"]


class Node:
    """One running dicomnode."""

    def __init__(self, config: Config, secret: bytes) -> None:
        # Fail before anything starts if the profile or site rules are wrong.
        load_profile(config.scrub.options, config.scrub.site_rules)
        self.config = config
        self.spool = Spool(config.spool.path)
        self.pool = WorkerPool(config, secret, self.spool, on_outcome=self._on_outcome)
        self.forwarders = [
            Forwarder(
                self.spool,
                sender_for(destination, config.node.ae_title),
                retry=getattr(destination, "retry", None),
                batch_size=getattr(destination, "batch_size", 100),
                keep_days=config.spool.keep_forwarded_days,
                on_result=self._on_result,
            )
            for destination in config.destinations
        ]
        self.ingest = Ingest(config.node, self.spool, on_received=self._on_received)
        self._stop = threading.Event()

    def start(self) -> None:
        log.info("dicomnode %s starting; spool %s", __version__, self.spool.root)
        self.spool.create([d.name for d in self.config.destinations])
        self.spool.recover()
        self.pool.start()
        for forwarder in self.forwarders:
            forwarder.start()
        self.ingest.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop listening, let work in hand finish; True if everything stopped in time."""
        log.info("stopping: no new associations; finishing work in hand")
        self.ingest.stop()
        clean = self.pool.stop(timeout)
        for forwarder in self.forwarders:
            forwarder.stop()
        for forwarder in self.forwarders:
            forwarder.join(timeout)
        log.info("stopped%s", "" if clean else " (some work was interrupted; it resumes at start)")
        return clean

    def run(self) -> int:
        """Start, serve until SIGTERM or SIGINT, stop. Returns the exit code."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        last_janitor = time.monotonic()
        while not self._stop.wait(1.0):
            if time.monotonic() - last_janitor > 600:
                last_janitor = time.monotonic()
                self._janitor()
        return 0 if self.stop() else 1

    def _janitor(self) -> None:
        if self.config.spool.keep_forwarded_days > 0:
            self.spool.expire_sent(self.config.spool.keep_forwarded_days)
        # Receive files of associations that died mid-transfer (never acknowledged).
        limit = time.time() - max(3600, 4 * self.config.node.network_timeout_s)
        for path in self.spool.tmp.iterdir():
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
            except FileNotFoundError:
                pass

    # -- events between the parts ----------------------------------------------------------

    def _on_received(self, item_id: str, calling_ae: str, size: int) -> None:
        self.pool.submit(item_id)

    def _on_outcome(self, outcome: Outcome) -> None:
        if outcome.status == "clean":
            for forwarder in self.forwarders:
                forwarder.wake()
        elif outcome.status == "quarantined":
            log.warning(
                "quarantined %s from %s: %s at stage %s",
                outcome.id,
                outcome.calling_ae,
                outcome.reason,
                outcome.stage,
            )

    def _on_result(self, destination: str, path: Path, result: Result) -> None:
        if result.status == "rejected":
            log.warning("dead-lettered %s for %s: %s", path.name, destination, result.reason)
