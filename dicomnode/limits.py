"""Memory limits: what one instance may cost a worker, and what a worker may cost the host.

A few kilobytes can declare gigabytes (a JPEG whose frame header says 60000 x 60000, a
deflated dataset of zeros). The stages check what is declared before they allocate
(``dicomio.read_instance`` for the file and its inflated size, against ``node.max_instance_mb``,
the limit ingest applies to what it receives; ``pixels.codec`` for the decoded pixels) and
refuse it as ``too-large``. Behind those checks, each worker process
runs under an address-space limit of its own (``pipeline.worker_memory_mb``), so that
anything the checks miss costs one item and, at worst, one worker, never the node.

The limit is RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7 it counts the private writable
memory a process maps (heap, anonymous mappings, thread stacks), which is what a decoder or
numpy allocates, but not the large PROT_NONE reservations ONNX Runtime, glibc's arenas and
GPU drivers make and never touch. A normal worker with the pixel stage maps about 0.9 GB of
address space but has 0.5 GB of data; under RLIMIT_AS the same limit would have to be set
far higher to leave room for what is never used. An allocation over the limit fails
(``MemoryError`` in Python), and the stages turn that into ``too-large``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dicomnode.errors import InstanceError

if TYPE_CHECKING:
    from dicomnode.config import Config

__all__ = [
    "DEFAULT_MAX_INSTANCE_MB",
    "MB",
    "TooLargeError",
    "apply_worker_limits",
    "instance_limit",
    "instance_limit_mb",
    "instance_limit_of",
    "out_of_memory",
]

log = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_MAX_INSTANCE_MB = 2048  # node.max_instance_mb

_instance_limit_mb = DEFAULT_MAX_INSTANCE_MB
_worker_memory_mb = 0


class TooLargeError(InstanceError):
    """The instance declares, or would need, more memory than the configured limits allow.

    The message gives the numbers and names the setting to raise; it never carries a value
    from the instance other than sizes.
    """

    reason = "too-large"


def instance_limit() -> int:
    """The largest dataset, in bytes, this process parses (file size and inflated size)."""
    return _instance_limit_mb * MB


def instance_limit_mb() -> int:
    """:func:`instance_limit` in MB, for messages."""
    return _instance_limit_mb


@contextlib.contextmanager
def instance_limit_of(mb: int) -> Iterator[None]:
    """Parse with another instance limit for a while (tests, the offline ``scrub``)."""
    global _instance_limit_mb
    before, _instance_limit_mb = _instance_limit_mb, mb
    try:
        yield
    finally:
        _instance_limit_mb = before


def apply_worker_limits(config: Config) -> None:
    """Put this worker process under the configured limits; called once at its start.

    Lowers its CPU priority by ``pipeline.nice`` and, with ``pipeline.cpu_priority: idle``,
    puts it in the idle scheduling class, sets the instance limit that ``read_instance``
    enforces (``node.max_instance_mb``, the size ingest accepts, applied here to what is
    spooled and to inflated datasets) and the process's data limit (``pipeline.worker_memory_mb``; 0 leaves it as it is). A
    hard limit already lower than the setting (systemd ``LimitDATA=``, ``ulimit -d``) wins,
    and the log says so.
    """
    global _instance_limit_mb, _worker_memory_mb
    _instance_limit_mb = config.node.max_instance_mb
    if config.pipeline.nice:
        # Receiving is what a sender waits for; the listeners keep the cores they need and
        # the workers take the rest (issue 12: renicing the workers gave receive +10-60%).
        os.nice(config.pipeline.nice)
    if config.pipeline.cpu_priority == "idle":
        # Stronger still: no share at all while the listeners and forwarders want the CPU
        # (receive of a CT series on 2 busy cores 0.66 -> 0.80 of a bare SCP; with the
        # workers stopped 0.91). Threads started later inherit it; those already running
        # (the interpreter's own) are set one by one.
        try:
            for thread in _threads():
                os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError) as exc:
            log.warning(
                "cannot put the worker in the idle CPU class (%s); it runs niced by pipeline.nice",
                exc,
            )
    wanted = config.pipeline.worker_memory_mb
    if not wanted:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = wanted * MB
    if hard != resource.RLIM_INFINITY and hard < limit:
        log.warning(
            "pipeline.worker_memory_mb is %d MB but the hard data limit of this process is "
            "%d MB (LimitDATA= or ulimit -d); the lower one applies",
            wanted,
            hard // MB,
        )
        limit = hard
    if soft != resource.RLIM_INFINITY and soft < limit:
        limit = soft  # never raise a limit someone set lower on purpose
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot limit the worker's memory to %d MB (%s)", wanted, exc)
        return
    _worker_memory_mb = limit // MB


def _threads(pid: int | str = "self") -> list[int]:
    """The threads of process ``pid`` (Linux), or just the calling one (0)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [0] if pid == "self" else []


def lift_from_idle(pid: int) -> bool:
    """Put a worker that runs in the idle CPU class back in the normal one (its nice value
    kept), so that it finishes the item in hand when the node stops even on a host whose
    other work would leave it no idle time. Linux allows this to a process with
    CAP_SYS_NICE, or whose RLIMIT_NICE covers the worker's nice value (systemd
    ``LimitNICE=``); False where it is not allowed (the worker then finishes on idle time, or
    is stopped after ``node.stop_timeout_s``)."""
    lifted = False
    for thread in _threads(pid):
        try:
            if os.sched_getscheduler(thread) == os.SCHED_IDLE:
                os.sched_setscheduler(thread, os.SCHED_OTHER, os.sched_param(0))
                lifted = True
        except (AttributeError, OSError):
            return False
    return lifted


def out_of_memory(doing: str) -> TooLargeError:
    """The error for a ``MemoryError`` met while ``doing`` something with one instance."""
    limit = (
        f"the worker's limit, pipeline.worker_memory_mb, is {_worker_memory_mb} MB"
        if _worker_memory_mb
        else "the host has no memory left"
    )
    return TooLargeError(
        f"the worker ran out of memory while {doing} ({limit}); if the instance is genuine, "
        "raise pipeline.worker_memory_mb (or give the host more memory) and retry it with "
        "'dicomnode retry --quarantine too-large'"
    )
