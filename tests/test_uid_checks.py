"""UID checks of association negotiation (``dicomnode._uid_checks``): pynetdicom's validator
answers from memory with the same answers, and listener processes, where pydicom's reading
validation is off, still negotiate hostile UIDs as before and keep them out of the log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom._validators import validate_ui
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode import _uid_checks
from dicomnode._uid_checks import CACHED, LONGEST, cache_validator
from tests.peers import NodeProcess, make_study, wait_for

ROOT = Path(__file__).resolve().parents[1]
VALUES: list[object] = [
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1 ",  # padded as on the wire
    "",
    "1" * 64,
    "1" * 65,
    "1.2.abc",
    "1..2",
    "01.2",
    "1.2.\x00",
    "1.2.Smith^John",
    b"1.2.3",
    None,
    3,
]


@pytest.mark.parametrize("enforce", [False, True])
def test_the_cached_validator_answers_as_pynetdicoms(
    monkeypatch: pytest.MonkeyPatch, enforce: bool
) -> None:
    cache_validator()  # dicomnode.ingest did it at import; once more changes nothing
    cached = _config.VALIDATORS["UI"]
    assert isinstance(cached, _uid_checks._CachedValidator)
    assert cached.validator is validate_ui
    cache_validator()
    assert _config.VALIDATORS["UI"] is cached
    monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", enforce)
    for _ in range(2):  # asked, then answered from memory
        for value in VALUES:
            assert cached(value) == validate_ui(value), repr(value)  # type: ignore[arg-type]
    # The conformance setting is part of the question: switching it is answered anew.
    monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", not enforce)
    assert cached("1.2.abc") == validate_ui("1.2.abc")  # type: ignore[arg-type]


def test_the_cache_is_bounded() -> None:
    cached = _uid_checks._CachedValidator(validate_ui)
    for n in range(CACHED + 500):
        assert cached(f"1.2.{n}") == (True, "")
    assert cached._answer.cache_info().currsize == CACHED
    # A huge "UID" (a request may be 64 KiB) is answered, and not kept.
    cached._answer.cache_clear()
    for n in range(50):
        huge = f"1.2.{n}." + "9" * 60_000
        assert cached(huge) == validate_ui(huge) == (False, "must not exceed 64 characters")  # type: ignore[arg-type]
    assert cached(" " + "1" * (LONGEST - 1)) == validate_ui(" " + "1" * (LONGEST - 1))  # type: ignore[arg-type]
    assert cached._answer.cache_info().currsize == 1


def test_pydicom_warnings_are_skipped_only_where_asked() -> None:
    """The setting is the process's: set in a fresh interpreter, pydicom no longer warns of
    a non-conformant UID; without it, it does (so the listener processes differ only there)."""
    code = (
        "import warnings, pydicom.uid\n"
        "from dicomnode import _uid_checks\n"
        "with warnings.catch_warnings(record=True) as before:\n"
        "    warnings.simplefilter('always'); pydicom.uid.UID('1.2.abc')\n"
        "_uid_checks.skip_pydicom_warnings()\n"
        "with warnings.catch_warnings(record=True) as after:\n"
        "    warnings.simplefilter('always'); pydicom.uid.UID('1.2.abc')\n"
        "print(len(before), len(after))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.split() == ["1", "0"]


HOSTILE = "1.2.840.10008.5.1.4.1.1.2.Smith^John"  # a name where a SOP class should be


@pytest.mark.peers
def test_listener_processes_negotiate_hostile_uids_as_before(tmp_path: Path) -> None:
    """A proposal with a non-conformant abstract syntax beside CT Image Storage, to a node with
    two listener processes: both contexts accepted (``dicomnode.ingest``: a sender that gives
    up on a refused context goes on with the rest), an instance declaring that class refused
    with 0x0122, the CT instances stored and delivered, and the name not in the node's log."""
    node = NodeProcess(tmp_path / "node", node={"listeners": 2})
    node.start()
    try:
        wait_for(lambda: node.metrics().get("dicomnode_listeners") == 2, 60, "two listeners")
        folder = tmp_path / "study"
        make_study(folder, series=1, per_series=3)
        instances = sorted(p for p in folder.rglob("*") if p.is_file())
        hostile = pydicom.dcmread(instances[0])
        hostile.SOPClassUID = hostile.file_meta.MediaStorageSOPClassUID = HOSTILE
        ae = AE(ae_title="TESTSCU")
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
        ae.add_requested_context(HOSTILE, ExplicitVRLittleEndian)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        for instance in instances:  # the answers come from memory after the first
            assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
            assert assoc.is_established
            accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
            assert accepted == {HOSTILE, str(CTImageStorage)}
            assert assoc.send_c_store(hostile).Status == 0x0122
            assert assoc.send_c_store(instance).Status == 0x0000
            assoc.release()
        node.wait_idle(120)
        assert sum(1 for _ in node.out.rglob("*.dcm")) == 3
    finally:
        node.stop()
    log = node.log.read_text()
    assert "Smith" not in log
    # pydicom's reading validation is off in the listener processes: its warning (redacted,
    # saying no more than pynetdicom's own, which is quiet here as with one listener: the
    # node's own line says what was refused) is not there.
    assert "sop-class-not-supported" in log
    assert "Invalid value for VR UI" not in log and "Non-conformant" not in log


def test_with_pydicom_warnings_skipped_the_listener_reads_the_same_values(tmp_path: Path) -> None:
    """What the listener reads of a data set (``read_header``: the projects' conditions) is the
    same with pydicom's reading validation off as on, for an instance full of malformed
    values (tests/test_hostile_logs.py's), and so is every value pydicom decodes of it."""
    import io
    import warnings

    import pydicom.config

    from dicomnode.dicomio import read_header
    from tests.test_hostile_logs import _malformed_instance

    data = _malformed_instance()
    path = tmp_path / "malformed.dcm"
    path.write_bytes(data)
    keywords = sorted(
        {pydicom.datadict.keyword_for_tag(e.tag) for e in pydicom.dcmread(io.BytesIO(data))} - {""}
    )
    assert len(keywords) > 50

    def read() -> tuple[object, list[tuple[str, str]]]:
        ds = pydicom.dcmread(io.BytesIO(data))
        values = []
        for element in ds.iterall():
            try:
                values.append((str(element.tag), repr(element.value)))
            except Exception as exc:  # the same failure either way counts as the same
                values.append((str(element.tag), type(exc).__name__))
        return read_header(path, keywords, max_bytes=1 << 20), values

    before = pydicom.config.settings.reading_validation_mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
            warned = read()
            pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
            ignored = read()
    finally:
        pydicom.config.settings.reading_validation_mode = before
    assert warned == ignored
    assert warned[0] is not None and len(warned[1]) > 50
