"""What the node tells the review page about itself: a read-only snapshot of each
destination and the instances of the last hour and day. No web imports: the node loads this
module whether or not the page is on."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Activity", "DestinationState", "Event"]


class Event(StrEnum):
    """What the overview counts."""

    RECEIVED = "received"
    CLEANED = "cleaned"
    FORWARDED = "forwarded"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class DestinationState:
    """One destination as its forwarders last saw it (no network call is made for it)."""

    name: str
    type: str
    answering: bool
    last_error: str | None
    failures: int  # consecutive failures of the destination (its back-off)
    last_delivered: float | None  # time.time() of the last delivery since the node started


class Activity:
    """Counts of events per minute over the last day, in memory (since the node started).

    ``add`` is called from the node's threads; ``totals`` from the review page.
    """

    MINUTES = 24 * 60

    def __init__(self, clock: object = None) -> None:
        self._clock = clock if callable(clock) else time.time
        self._lock = threading.Lock()
        self._minutes: deque[tuple[int, dict[Event, int]]] = deque()
        self.started = float(self._clock())

    def add(self, event: Event, count: int = 1) -> None:
        minute = int(self._clock() // 60)
        with self._lock:
            if not self._minutes or self._minutes[-1][0] != minute:
                self._minutes.append((minute, {}))
                while self._minutes and self._minutes[0][0] <= minute - self.MINUTES:
                    self._minutes.popleft()
            counts = self._minutes[-1][1]
            counts[event] = counts.get(event, 0) + count

    def totals(self, seconds: float) -> dict[Event, int]:
        """Events in the last ``seconds`` (to the minute), for every kind."""
        since = int((self._clock() - seconds) // 60)
        result = dict.fromkeys(Event, 0)
        with self._lock:
            for minute, counts in self._minutes:
                if minute > since:
                    for event, count in counts.items():
                        result[event] += count
        return result
