"""The listener in-process: statuses for every failure, TLS, nothing decoded, nothing lost."""

from __future__ import annotations

import errno
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE

from dicomnode.config import NodeConfig, TLSConfig
from dicomnode.ingest import Ingest
from dicomnode.spool import Spool
from tests.conftest import PYDICOM_FILES, require_tool

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Ingest, list[str]]]:
    spool = Spool(tmp_path / "spool").create(["a"])
    received: list[str] = []
    ingest = Ingest(
        NodeConfig(port=0, disk_floor_mb=1),
        spool,
        on_received=lambda item, ae, size, seconds: received.append(item),
    )
    ingest.start()
    try:
        yield ingest, received
    finally:
        ingest.stop()


def store(port: int, path: Path, ssl_context: ssl.SSLContext | None = None) -> int | None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT)
    tls_args = (ssl_context, None) if ssl_context else None
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


def test_store_is_durable_before_success(listener: tuple[Ingest, list[str]]) -> None:
    ingest, received = listener
    assert store(ingest.port, PYDICOM_FILES / "CT_small.dcm") == 0x0000
    (item,) = received
    path = ingest.spool.incoming / f"{item}.dcm"
    assert path.read_bytes()[128:132] == b"DICM" and item.split("_")[1] == "TESTSCU"
    assert list(ingest.spool.tmp.iterdir()) == []


@pytest.mark.parametrize(("error", "status"), [(errno.ENOSPC, 0xA700), (errno.EIO, 0xC211)])
def test_spool_failures_become_statuses(
    listener: tuple[Ingest, list[str]], monkeypatch: pytest.MonkeyPatch, error: int, status: int
) -> None:
    ingest, received = listener

    def fail(*args: object) -> str:
        raise OSError(error, "simulated")

    monkeypatch.setattr(ingest.spool, "accept", fail)
    assert store(ingest.port, PYDICOM_FILES / "CT_small.dcm") == status
    assert received == [] and ingest.spool.pending() == []
    assert list(ingest.spool.tmp.iterdir()) == []  # the partial receive is gone


def test_echo(listener: tuple[Ingest, list[str]]) -> None:
    ae = AE()
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", listener[0].port, ae_title="DICOMNODE")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()


def test_tls(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    spool = Spool(tmp_path / "spool").create(["a"])
    config = NodeConfig(port=0, disk_floor_mb=1, tls=TLSConfig(certificate=cert, private_key=key))
    ingest = Ingest(config, spool)
    ingest.start()
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        client.check_hostname = False
        assert store(ingest.port, PYDICOM_FILES / "CT_small.dcm", client) == 0x0000
        assert store(ingest.port, PYDICOM_FILES / "CT_small.dcm") is None  # plain TCP refused
        assert len(spool.pending()) == 1
    finally:
        ingest.stop()
