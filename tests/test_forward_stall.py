"""No stalls forwarding to a fast receiver: the association reactor never takes a C-STORE
response away from the sender (the cause: dicomnode/_scu.py's docstring)."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import logging
import queue
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pynetdicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import acse, ae, association, dimse, dul, evt, fsm, transport

from dicomnode import _scu, _wakeup, forward
from dicomnode.config import DicomDestination
from dicomnode.forward import Delivery, DicomSender, Result
from tests.conftest import require_tool
from tests.peers import PEER_ENV, free_port, wait_listening

BATCH = 100  # DicomDestination.batch_size's default: one association per 100 objects
# Every SOP Instance UID has the same length, so a template's bytes only need the UID swapped.
UID_ROOT = "1.2.826.0.1.3680043.8.498.7"
STOLEN = "Received unexpected C-STORE service message"
TIMED_OUT = "DIMSE timeout reached"


def _uid(round_: int, index: int) -> str:
    return f"{UID_ROOT}.1{round_:03d}{index:06d}"


class _Instances:
    """``count`` 64x64 CT objects in a folder, given fresh SOP Instance UIDs each round."""

    def __init__(self, folder: Path, count: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / f"{i:05d}.dcm" for i in range(count)]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = UID(_uid(0, 0))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.PatientName, ds.Modality = "STALL", "Stall^Test", "CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, 1
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.arange(64 * 64, dtype=np.uint16).tobytes()
        template = folder / "template.dcm"
        ds.save_as(template, enforce_file_format=True)
        self.template = template.read_bytes()
        template.unlink()
        assert self.template.count(_uid(0, 0).encode()) == 2  # file meta and dataset

    def write(self, round_: int) -> set[str]:
        """The objects of this round; their SOP Instance UIDs."""
        old = _uid(0, 0).encode()
        uids = set()
        for index, path in enumerate(self.paths):
            uid = _uid(round_, index)
            path.write_bytes(self.template.replace(old, uid.encode()))
            uids.add(uid)
        return uids


@contextlib.contextmanager
def _fast_storescp(workdir: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp writing the bytes as received (``+B``): it answers in well under a
    millisecond on loopback. Yields (port, output folder)."""
    exe = require_tool("storescp")  # under CI, a missing storescp fails
    out = workdir / "received"
    out.mkdir(parents=True)
    port = free_port()
    args = [exe, "-aet", "STORESCP", "-dhl", "+B", "-od", str(out), "-fe", ".dcm", str(port)]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV
    )
    try:
        wait_listening(proc, port, "storescp")
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _sender(port: int, timeout_s: float) -> DicomSender:
    config = DicomDestination(
        name="pacs", ae_title="STORESCP", host="127.0.0.1", port=port, timeout_s=timeout_s
    )
    return DicomSender(config, "DICOMNODE")


def _send(sender: DicomSender, paths: list[Path]) -> list[Result]:
    results: list[Result] = []
    for start in range(0, len(paths), BATCH):
        results += sender.send(paths[start : start + BATCH])
    return results


def _received(out: Path) -> set[str]:
    """SOP Instance UIDs storescp wrote (``CT.<uid>.dcm``), which are then removed."""
    uids = set()
    for path in out.iterdir():
        uids.add(path.name.split(".", 1)[1].removesuffix(".dcm"))
        path.unlink()
    return uids


def _stalls(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if STOLEN in r.getMessage() or TIMED_OUT in r.getMessage()
    ]


@pytest.mark.peers
@pytest.mark.slow
def test_ten_rounds_of_a_thousand_small_objects_to_a_fast_receiver_never_stall(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case, bigger: before the fix, 2 rounds of 3 (200 objects each) stalled
    30 s on a busy node; here the race needs other threads to hold the GIL, which the staged
    tests below make certain. Also the speed: 5 to 10 ms an object (pynetdicom's polling
    loops and CPU, more on a loaded machine); Nagle left on, on either side, would be 40 ms
    or more."""
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    instances = _Instances(tmp_path / "in", 1000)
    expected = instances.write(1)  # the same objects each round; storescp's folder emptied
    timings = []
    with _fast_storescp(tmp_path) as (port, out):
        sender = _sender(port, timeout_s=10)
        for round_ in range(1, 11):
            started = time.perf_counter()
            results = _send(sender, instances.paths)
            timings.append(time.perf_counter() - started)
            undelivered = [(i, r) for i, r in enumerate(results) if r.status != "delivered"]
            assert not undelivered, (round_, undelivered[:3], _stalls(caplog)[:3])
            assert _received(out) == expected, round_
            assert not _stalls(caplog), (round_, _stalls(caplog)[:3])
    print("seconds per round of 1,000:", " ".join(f"{t:.1f}" for t in timings))
    # Nagle slows every round (40 s or more); a loaded machine only some of them.
    assert min(timings) < 25, timings


class _LateReactor(threading.Event):
    """An association's ``_reactor_checkpoint`` whose waiter, once woken, goes on only when a
    message is in the DIMSE queue (or after 0.5 s): the reactor late by one round trip, as
    when other threads hold the GIL."""

    def __init__(self, messages: queue.Queue[Any]) -> None:
        super().__init__()
        self.messages = messages

    def wait(self, timeout: float | None = None) -> bool:
        blocked = not self.is_set()
        woken = super().wait(timeout)
        deadline = time.monotonic() + 0.5
        while blocked and self.messages.empty() and time.monotonic() < deadline:
            time.sleep(0.0002)
        return woken


class _LateSender(queue.Queue[Any]):
    """The DIMSE message queue, whose blocking reader (the sender) is 10 ms late."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            time.sleep(0.01)
        return super().get(block, timeout)


def _staged(guard: bool) -> Any:
    """An ``EVT_CONN_OPEN`` handler for DicomSender, in place of the guard, that stages the
    race of dicomnode/_scu.py's docstring (only timing changes), then binds the guard or not.
    The reactor thread is not started yet."""

    def handler(event: evt.Event) -> None:
        messages = event.assoc.dimse.msg_queue = _LateSender()
        event.assoc._reactor_checkpoint = _LateReactor(messages)
        event.assoc._reactor_checkpoint.set()
        if guard:
            _scu.responses_to_sender(event)

    return handler


@pytest.mark.peers
def test_a_late_reactor_takes_responses_without_the_guard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: with the race staged, pynetdicom's own pause lets the late reactor take
    the second response, and the sender times out."""
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    monkeypatch.setattr(forward, "responses_to_sender", _staged(guard=False))
    instances = _Instances(tmp_path / "in", 20)
    instances.write(1)
    with _fast_storescp(tmp_path) as (port, _out):
        results = _sender(port, timeout_s=1).send(instances.paths)
    assert any(r.status is not Delivery.DELIVERED for r in results)
    messages = [r.getMessage() for r in caplog.records]
    assert any(STOLEN in m for m in messages), messages
    assert any(TIMED_OUT in m for m in messages), messages


@pytest.mark.peers
def test_a_late_reactor_takes_nothing_with_the_guard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    monkeypatch.setattr(forward, "responses_to_sender", _staged(guard=True))
    instances = _Instances(tmp_path / "in", 100)
    expected = instances.write(1)
    with _fast_storescp(tmp_path) as (port, out):
        results = _send(_sender(port, timeout_s=5), instances.paths)
        assert {r.status for r in results} == {"delivered"}, _stalls(caplog)[:3]
        assert _received(out) == expected
    assert not _stalls(caplog)


def test_echo_guards_its_association_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """echo() binds the guard as well (C-ECHO has the same race, once per association)."""
    seen: list[Any] = []

    def associate(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(kwargs["evt_handlers"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(ae.ApplicationEntity, "associate", associate)
    config = DicomDestination(name="pacs", ae_title="X", host="127.0.0.1", port=free_port())
    with pytest.raises(RuntimeError, match="stop here"):
        forward.echo(config, "DICOMNODE")
    assert (evt.EVT_CONN_OPEN, _scu.responses_to_sender) in seen


# -- the request race: a rejection that arrives before pynetdicom looks -------------------------


_REJECT = bytes([0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02])  # transient, local limit exceeded
_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-ABORT, service user


@contextlib.contextmanager
def _fast_rejecter(answer: bytes = _REJECT) -> Iterator[int]:
    """A peer that answers every A-ASSOCIATE-RQ at once with ``answer`` (an A-ASSOCIATE-RJ,
    as the node's gate does when its slots are full, or an A-ABORT) and closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                header = conn.recv(6, socket.MSG_WAITALL)
                length = struct.unpack(">L", header[2:6])[0]
                conn.recv(length, socket.MSG_WAITALL)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        server.close()


def _late_acse(event: evt.Event) -> None:
    """EVT_REQUESTED runs in the requesting thread just before it looks at the socket: a late
    look lets the DUL thread take the rejection and close the socket first."""
    time.sleep(0.3)


def test_pynetdicom_reads_a_fast_rejection_as_an_abort_and_leaves_it_queued() -> None:
    """Pins the race (dicomnode/_scu.py): the A-ASSOCIATE-RJ is in the DUL's queue, unread."""
    requestor = ae.ApplicationEntity(ae_title="LATE")
    requestor.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    with _fast_rejecter() as port:
        assoc = requestor.associate(
            "127.0.0.1", port, ae_title="ANY", evt_handlers=[(evt.EVT_REQUESTED, _late_acse)]
        )
    assert not assoc.is_established and not assoc.is_rejected and assoc.is_aborted
    rejection = _scu.unread_rejection(assoc)
    assert rejection is not None
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)


def test_a_fast_rejection_is_told_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """echo() and the sender say "rejected", whichever thread wins the race."""
    associate = ae.ApplicationEntity.associate

    def late(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["evt_handlers"] = [*kwargs.get("evt_handlers", []), (evt.EVT_REQUESTED, _late_acse)]
        return associate(self, *args, **kwargs)

    monkeypatch.setattr(ae.ApplicationEntity, "associate", late)
    with _fast_rejecter() as port:
        config = DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
        assert forward.echo(config, "DICOMNODE") == (
            f"PACS at 127.0.0.1:{port} rejected the association (transient): local limit "
            "exceeded: all its association slots are busy, try again later"
        )
        sender = DicomSender(config, "DICOMNODE")
        assoc, why = sender._associate(frozenset(), frozenset({str(CTImageStorage)}))
        assert assoc is None and why is not None
        assert why.reason == f"PACS at 127.0.0.1:{port} rejected the association"


def test_a_fast_abort_is_told_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race with a peer that aborts the request at once: its A-ABORT is queued for
    the user and the socket closed before pynetdicom looks; echo() says "aborted", not "no
    answer" (a CI run failed so in tests/test_refusals.py)."""
    associate = ae.ApplicationEntity.associate

    def late(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["evt_handlers"] = [*kwargs.get("evt_handlers", []), (evt.EVT_REQUESTED, _late_acse)]
        return associate(self, *args, **kwargs)

    monkeypatch.setattr(ae.ApplicationEntity, "associate", late)
    with _fast_rejecter(_ABORT) as port:
        config = DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
        assert forward.echo(config, "DICOMNODE", timeout=2) == (
            f"PACS at 127.0.0.1:{port} aborted the association request (A-ABORT)"
        )


# -- what this relies on in pynetdicom ----------------------------------------------------------

# dicomnode._scu makes DIMSEServiceProvider.get_msg(block=False) answer "nothing" on the
# associations we request: Association._run_reactor is its only caller so, the send_* methods
# take their responses with get_msg(block=True), and AE.associate binds our EVT_CONN_OPEN
# handler (fired in AssociationSocket.connect) before it starts the reactor thread. When one
# of these changes, read the new source, check that still holds, update the hash.
PINNED = {
    "association.Association._run_reactor": "f28838c5559e462a",
    "association.Association.send_c_store": "fa5a8127f349f8e7",
    "association.Association.send_c_echo": "664d0e9b0ab20c53",
    "dimse.DIMSEServiceProvider.get_msg": "890e3e04283f5aeb",
    "ae.ApplicationEntity.associate": "dbc8cf47090386b2",
    "transport.AssociationSocket.connect": "aeeeae413bd339dc",
    # dicomnode._scu.unread_rejection: the rejection is queued for the user before the socket
    # is closed, and a requestor that finds the socket closed aborts without reading it
    "fsm.AE_4": "9174bacb68ff4db4",
    "acse.ACSE._negotiate_as_requestor": "507959152c5896c6",
    # dicomnode._scu.woken (dicomnode._wakeup): send_* and release pause the reactor by
    # clearing _reactor_checkpoint and spinning until it is paused; request starts the DUL
    # thread, which fires EVT_CONN_OPEN, before the association thread exists
    "association.Association.release": "c7d713502b77d702",
    "association.Association.request": "928cd0e3013c9ab9",
    # dicomnode._commands._writer: a P-DATA request in Sta6 is one P-DATA-TF PDU sent as it is
    # and leaves the state machine in Sta6 (so a message written by the sender's thread skips
    # nothing); every PDU of the DUL thread goes through AssociationSocket.send (which
    # _scu._WokenSocket serialises with that writer), and a failed send is Evt17
    "fsm.DT_1": "82e5c5d4114534fa",
    "dul.DULServiceProvider._send": "a850a7919e68484e",
    "transport.AssociationSocket.send": "1ea8158c0b51faca",
}
_MODULES = {
    "association": association,
    "dimse": dimse,
    "ae": ae,
    "transport": transport,
    "fsm": fsm,
    "acse": acse,
    "dul": dul,
}


def _source_hash(dotted: str) -> str:
    module, *names = dotted.split(".")
    obj: object = _MODULES[module]
    for name in names:
        obj = getattr(obj, name)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def test_the_pynetdicom_code_the_sender_relies_on_is_unchanged() -> None:
    assert pynetdicom.__version__.startswith("3.0."), pynetdicom.__version__
    now = {name: _source_hash(name) for name in PINNED}
    changed = sorted(name for name, digest in now.items() if digest != PINNED[name])
    assert not changed, f"pynetdicom changed under dicomnode._scu: {changed} (now {now})"


@pytest.mark.peers
def test_an_open_forward_association_waits_for_work_instead_of_polling(tmp_path: Path) -> None:
    """With ``_scu.woken`` the forwarder's association neither sleeps 1 ms between looks in
    its DUL thread nor in its reactor: open and idle, both look about every REACTOR_TICK_S
    (pynetdicom's own loops look ~1,000 times a second), and sending still works."""
    instances = _Instances(tmp_path / "objects", 20)
    uids = instances.write(1)
    with _fast_storescp(tmp_path) as (port, out):
        looks: dict[str, int] = {}
        idle = 0.5

        def count(event: evt.Event) -> None:
            assoc = event.assoc
            transport_: Any = assoc.dul.socket
            cls: Any = type(transport_)
            ready = cls.ready.fget
            get_msg = assoc.dimse.get_msg

            class Counted(cls):  # type: ignore[misc]
                @property
                def ready(self) -> bool:
                    looks["dul"] = looks.get("dul", 0) + 1
                    return bool(ready(self))

            def counted_get_msg(block: bool = False) -> Any:
                if not block:
                    looks["reactor"] = looks.get("reactor", 0) + 1
                return get_msg(block=block)

            transport_.__class__ = Counted
            assoc.dimse.get_msg = counted_get_msg  # type: ignore[method-assign]

        results: list[Any] = []
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _scu.responses_to_sender),
            (evt.EVT_CONN_OPEN, _scu.woken),
            (evt.EVT_CONN_OPEN, count),
        ]
        local = ae.ApplicationEntity("DICOMNODE")
        local.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = local.associate("127.0.0.1", port, ae_title="STORESCP", evt_handlers=handlers)
        try:
            assert assoc.is_established
            assert assoc.dul._run_loop_delay == 0
            looks.clear()
            time.sleep(idle)
            quiet = dict(looks)
            for path in instances.paths:
                results.append(assoc.send_c_store(path))
        finally:
            assoc.release()
    assert [r.Status for r in results] == [0] * len(instances.paths)
    assert _received(out) == uids
    tick = _wakeup.REACTOR_TICK_S
    for thread in ("dul", "reactor"):
        # a look per tick, and a few more for the wake-ups; polling would be ~500 here
        assert 0 < quiet.get(thread, 0) <= 3 * idle / tick + 10, (thread, quiet)


def test_only_the_reactor_polls_the_dimse_queue() -> None:
    """Every get_msg call in pynetdicom blocks, but the reactor's: a new non-blocking caller
    would be starved by dicomnode._scu's guard."""
    calls: dict[tuple[str, int, int], tuple[str, bool]] = {}  # -> (innermost function, blocks)
    root = Path(pynetdicom.__file__).parent
    for path in sorted(p for p in root.rglob("*.py") if "tests" not in p.relative_to(root).parts):
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):  # outer functions first: inner ones overwrite
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get_msg"
                ):
                    block = {k.arg: k.value for k in node.keywords}.get("block")
                    blocks = isinstance(block, ast.Constant) and block.value is True
                    calls[path.name, node.lineno, node.col_offset] = (
                        f"{path.name}:{function.name}",
                        blocks,
                    )
    polls = sorted(where for where, blocks in calls.values() if not blocks)
    waits = {where for where, blocks in calls.values() if blocks}
    assert polls == ["association.py:_run_reactor"], polls
    assert "association.py:send_c_store" in waits and "association.py:send_c_echo" in waits
