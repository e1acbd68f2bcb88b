"""Destinations over the network with security: DICOM over TLS (against dcmtk's storescp) and
DICOMweb STOW-RS (against Orthanc's DICOMweb plugin, and a tiny in-process server that answers
exactly what a test needs)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydantic import ValidationError

from dicomnode.config import (
    ClientTLSConfig,
    DicomDestination,
    DicomwebDestination,
    RetryConfig,
    load_config,
)
from dicomnode.errors import ConfigError
from dicomnode.forward import Delivery, DicomSender, Forwarder, echo, sender_for
from dicomnode.scrub.pseudonym import Pseudonymizer
from dicomnode.spool import Spool
from dicomnode.stow import DicomwebSender, parse_stow_response, probe
from tests.conftest import SECRET, require_tool
from tests.peers import (
    NodeProcess,
    Orthanc,
    Storescp,
    make_study,
    running,
    storescu,
    wait_for,
)
from tests.phi import leaks
from tests.test_hostile_delivery import StoreSCP, large_object

# -- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for the name pacs.test only (not 127.0.0.1), a client
    certificate from the same CA, and an unrelated CA."""

    ca: Path
    other_ca: Path
    server_key: Path
    server_cert: Path
    client_key: Path
    client_cert: Path


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(
        [require_tool("openssl"), *args], cwd=folder, check=True, capture_output=True, timeout=60
    )


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )


def _leaf(folder: Path, name: str, usage: str, san: str | None) -> None:
    _openssl(
        folder,
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key"),
        *("-out", f"{name}.csr", "-subj", f"/CN={name}"),
    )
    ext = folder / f"{name}.ext"
    lines = [
        "basicConstraints=CA:FALSE",
        f"extendedKeyUsage={usage}",
        "authorityKeyIdentifier=keyid",
        "subjectKeyIdentifier=hash",
    ]
    ext.write_text("\n".join(lines + ([f"subjectAltName={san}"] if san else [])) + "\n")
    _openssl(
        folder,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    _leaf(folder, "server", "serverAuth", "DNS:pacs.test")
    _leaf(folder, "client", "clientAuth", None)
    return Pki(
        ca=folder / "ca.crt",
        other_ca=folder / "other-ca.crt",
        server_key=folder / "server.key",
        server_cert=folder / "server.crt",
        client_key=folder / "client.key",
        client_cert=folder / "client.crt",
    )


def _one_file(tmp_path: Path) -> Path:
    make_study(tmp_path / "one", series=1, per_series=1)
    return next((tmp_path / "one").glob("*.dcm"))


# -- DICOM over TLS against storescp +tls --------------------------------------------------


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[Storescp]:
    scp = Storescp(tmp_path, tls=(pki.server_key, pki.server_cert), peer_ca=pki.ca).start()
    try:
        yield scp
    finally:
        scp.stop()


def _tls_destination(scp: Storescp, pki: Pki, **tls: Any) -> DicomDestination:
    settings = {
        "ca_certificates": pki.ca,
        "certificate": pki.client_cert,
        "private_key": pki.client_key,
        "server_name": "pacs.test",
        **tls,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    return DicomDestination.model_validate(
        {**scp.destination(timeout_s=5), "tls": ClientTLSConfig.model_validate(settings)}
    )


@pytest.mark.peers
def test_dicom_over_tls_delivers_and_echoes(
    tmp_path: Path, pki: Pki, tls_storescp: Storescp
) -> None:
    make_study(tmp_path / "study", series=1, per_series=3)
    files = sorted((tmp_path / "study").glob("*.dcm"))
    config = _tls_destination(tls_storescp, pki)
    assert [r.status for r in DicomSender(config, "DICOMNODE").send(files)] == ["delivered"] * 3
    assert len(tls_storescp.files()) == 3
    assert echo(config, "DICOMNODE") is None
    plain = DicomDestination.model_validate(tls_storescp.destination(timeout_s=3))
    assert echo(plain, "DICOMNODE", timeout=3) is not None  # TLS only


def _server_context(pki: Pki) -> ssl.SSLContext:
    """A TLS server for a pynetdicom SCP in this process: pacs.test, client certificates."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server.load_cert_chain(pki.server_cert, pki.server_key)
    server.verify_mode = ssl.CERT_REQUIRED
    return server


def _client_tls(pki: Pki) -> dict[str, Any]:
    return {
        "ca_certificates": pki.ca,
        "certificate": pki.client_cert,
        "private_key": pki.client_key,
        "server_name": "pacs.test",
    }


def test_a_tls_peer_that_stops_reading_mid_object_is_given_up_on(tmp_path: Path, pki: Pki) -> None:
    """Over TLS too (where pynetdicom's own thread writes, not the forwarder's): a destination
    that stops reading in the middle of a 48 MB object fails it after its timeout without
    progress, instead of holding the forwarder for ever."""
    path = tmp_path / "large.dcm"
    ds = large_object(path, 4096, 4096)
    server, tls = _server_context(pki), _client_tls(pki)
    with StoreSCP(stall=True, ssl_context=server) as scp:
        sender = DicomSender(scp.destination(timeout_s=1, tls=tls), "DICOMNODE")
        started = time.monotonic()
        results = sender.send([path])
        took = time.monotonic() - started
        sender.close()
    assert [r.status for r in results] == [Delivery.FAILED], results
    assert took < 15
    with StoreSCP(ssl_context=server) as scp:  # and a peer that reads gets it whole
        results = DicomSender(scp.destination(timeout_s=10, tls=tls), "DICOMNODE").send([path])
        assert [r.status for r in results] == [Delivery.DELIVERED], results
        assert len(scp.stored[str(ds.SOPInstanceUID)].PixelData) == 4096 * 4096 * 2


class SlowLink:
    """A TCP relay on 127.0.0.1 that carries what the client sends at ``rate`` bytes per
    second (a slow network that keeps moving), and the answers at full speed."""

    def __init__(self, port: int, rate: int) -> None:
        self.target, self.rate = port, rate
        self.server = socket.socket()
        # a small window, so that the sender's data waits in its own buffers, not in ours
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                threading.Thread(
                    target=self._pipe, args=(client, upstream, True), daemon=True
                ).start()
                threading.Thread(
                    target=self._pipe, args=(upstream, client, False), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if slow:
                    time.sleep(len(data) / self.rate)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize(
    ("tls", "max_pdu"),
    [(False, 16384), (True, 16384), (True, 0)],
    ids=["tcp", "tls", "tls-one-pdu"],
)
def test_a_large_object_over_a_slow_link_is_not_a_timeout(
    tmp_path: Path, pki: Pki, tls: bool, max_pdu: int
) -> None:
    """A link that moves 8 MB a second: a 32 MB object takes 4 s, twice the destination's
    timeout, and is delivered: the timeout is for a link that stops, not for one that is
    slow. Plain TCP (the forwarder's own writer), TLS (pynetdicom's thread writes), and TLS
    to a destination with no PDU limit (the data set in one PDU, one write of 32 MB)."""
    path = tmp_path / "large.dcm"
    ds = large_object(path, 4096, 4096, pattern=True)
    scp = StoreSCP(ssl_context=_server_context(pki) if tls else None)
    scp.ae.maximum_pdu_size = max_pdu
    with scp:
        link = SlowLink(scp.port, rate=8 << 20)
        try:
            extra = {"tls": _client_tls(pki)} if tls else {}
            destination = scp.destination(timeout_s=2, port=link.port, **extra)
            started = time.monotonic()
            results = DicomSender(destination, "DICOMNODE").send([path])
            took = time.monotonic() - started
        finally:
            link.close()
        assert [r.status for r in results] == [Delivery.DELIVERED], results
        assert scp.stored[str(ds.SOPInstanceUID)].PixelData == ds.PixelData
    assert took > 3  # it did go through the slow link


@pytest.mark.peers
def test_dicom_tls_wrong_ca_is_a_destination_failure(
    tmp_path: Path, pki: Pki, tls_storescp: Storescp, caplog: pytest.LogCaptureFixture
) -> None:
    """Backs the destination off with a log line naming the setting; the object waits."""
    config = _tls_destination(tls_storescp, pki, ca_certificates=pki.other_ca)
    spool = Spool(tmp_path / "spool").create(["pacs"])
    item = spool.outgoing / "pacs" / "x.dcm"
    shutil.copy(_one_file(tmp_path), item)
    forwarder = Forwarder(
        spool, DicomSender(config, "DICOMNODE"), retry=RetryConfig(initial_delay_s=30)
    )
    with caplog.at_level(logging.WARNING, logger="dicomnode.forward"):
        forwarder.start()
        try:
            wait_for(lambda: forwarder.last_error is not None, 20, "a failed delivery")
        finally:
            forwarder.stop()
            forwarder.join(5)
    assert "tls.ca_certificates" in str(forwarder.last_error)
    assert "could not be verified" in str(forwarder.last_error)
    assert item.exists() and not list((spool.dead_letter / "pacs").glob("*"))
    assert any("tls.ca_certificates" in r.getMessage() for r in caplog.records)
    assert "tls.ca_certificates" in str(echo(config, "DICOMNODE", timeout=5))


@pytest.mark.peers
def test_dicom_tls_wrong_host_name_is_a_destination_failure(
    tmp_path: Path, pki: Pki, tls_storescp: Storescp
) -> None:
    # The certificate is for pacs.test; without server_name, 127.0.0.1 (host) is checked.
    config = _tls_destination(tls_storescp, pki, server_name=None)
    (result,) = DicomSender(config, "DICOMNODE").send([_one_file(tmp_path)])
    assert result.status == "retry"
    assert "not valid for the name '127.0.0.1'" in result.reason
    assert "tls.server_name" in result.reason
    unchecked = _tls_destination(tls_storescp, pki, server_name=None, check_hostname=False)
    assert DicomSender(unchecked, "DICOMNODE").send([_one_file(tmp_path)])[0].status == "delivered"


@pytest.mark.peers
def test_dicom_tls_without_the_client_certificate_it_requires(
    tmp_path: Path, pki: Pki, tls_storescp: Storescp
) -> None:
    config = _tls_destination(tls_storescp, pki, certificate=None, private_key=None)
    (result,) = DicomSender(config, "DICOMNODE").send([_one_file(tmp_path)])
    assert result.status == "retry"
    assert "tls.certificate" in result.reason, result.reason


def test_tls_settings_are_checked_when_the_configuration_loads(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValidationError, match=r"tls\.ca_certificates: no such file"):
        ClientTLSConfig(ca_certificates=tmp_path / "nope.pem")
    with pytest.raises(ValidationError, match="certificate and private_key together"):
        ClientTLSConfig(certificate=pki.client_cert)
    with pytest.raises(ValidationError, match="cannot load certificate and private_key"):
        ClientTLSConfig(certificate=pki.client_cert, private_key=pki.server_key)  # not its key
    with pytest.raises(ValidationError, match="cannot load ca_certificates"):
        ClientTLSConfig(ca_certificates=pki.client_key)  # not a certificate
    path = tmp_path / "dicomnode.yaml"
    path.write_text(
        "destinations:\n"
        "  - {name: pacs, type: dicom, ae_title: PACS, host: pacs.test, port: 2762,\n"
        f"     tls: {{ca_certificates: {pki.ca}, certificat: {pki.client_cert}}}}}\n"
    )
    with pytest.raises(ConfigError, match=r"tls\.certificat: unknown setting"):
        load_config(path)


# -- DICOMweb: a tiny server ---------------------------------------------------------------


@dataclass
class Request:
    headers: dict[str, str]
    uids: list[str]


@dataclass
class StowServer:
    """Answers each STOW-RS POST with ``answer(request) -> (status, JSON body or None)``."""

    answer: Callable[[Request], tuple[int, Any]]
    context: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._reply(*server.answer(Request(dict(self.headers), [])))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                boundary = re.search(r"boundary=([^;]+)", self.headers["Content-Type"])
                assert boundary is not None
                assert 'type="application/dicom"' in self.headers["Content-Type"]
                uids = []
                for part in body.split(b"--" + boundary.group(1).encode())[1:-1]:
                    head, _, data = part.partition(b"\r\n\r\n")
                    assert b"Content-Type: application/dicom" in head
                    ds = pydicom.dcmread(io.BytesIO(data[:-2]), stop_before_pixels=True)
                    uids.append(str(ds.SOPInstanceUID))
                request = Request(dict(self.headers), uids)
                server.requests.append(request)
                self._reply(*server.answer(request))

            def _reply(self, status: int, document: Any) -> None:
                data = b"" if document is None else json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.context is not None:
            self.httpd.socket = self.context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.context else "http"
        return f"{scheme}://127.0.0.1:{self.httpd.server_port}/dicom-web"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stow_server() -> Iterator[Callable[..., StowServer]]:
    servers: list[StowServer] = []

    def start(answer: Callable[[Request], tuple[int, Any]], **kwargs: Any) -> StowServer:
        servers.append(StowServer(answer, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _sequence(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": items}


def stow_response(stored: Sequence[str] = (), failed: dict[str, int] | None = None) -> Any:
    """A STOW-RS response in DICOM JSON (PS3.18 10.5.3)."""

    def item(uid: str, reason: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        if reason is not None:
            out["00081197"] = {"vr": "US", "Value": [reason]}
        return out

    document: dict[str, Any] = {}
    if failed:
        document["00081198"] = _sequence([item(u, r) for u, r in failed.items()])
    if stored:
        document["00081199"] = _sequence([item(u) for u in stored])
    return document


def _files(tmp_path: Path, count: int) -> tuple[list[Path], list[str]]:
    datasets = make_study(tmp_path / "files", series=1, per_series=count)
    return sorted((tmp_path / "files").glob("*.dcm")), [str(d.SOPInstanceUID) for d in datasets]


def _web(url: str, **extra: Any) -> DicomwebDestination:
    return DicomwebDestination.model_validate({"name": "web", "url": url, **extra})


def test_stow_failed_instances_are_dead_lettered_with_their_reason(
    tmp_path: Path, stow_server: Callable[..., StowServer]
) -> None:
    """200 with a FailedSOPSequence: 0xC000 is refused for good (dead-letter, with the
    reason), 0xA700 is out of resources (kept; set aside since a later one got in), the
    others delivered."""
    files, uids = _files(tmp_path, 4)
    refused, busy = uids[1], uids[2]
    seen_busy: list[int] = []

    def answer(request: Request) -> tuple[int, Any]:
        failed = {refused: 0xC000} if refused in request.uids else {}
        if busy in request.uids and not seen_busy:
            seen_busy.append(1)
            failed[busy] = 0xA700
        return 200, stow_response([u for u in request.uids if u not in failed], failed)

    server = stow_server(answer)
    sender = DicomwebSender(_web(server.url))
    assert [r.status for r in sender.send(files)] == ["delivered", "rejected", "retry", "delivered"]
    assert "FailureReason 0xC000" in sender.send([files[1]])[0].reason

    spool = Spool(tmp_path / "spool").create(["web"])
    for path in files:
        shutil.copy(path, spool.outgoing / "web" / path.name)
    seen_busy.clear()
    events: list[tuple[str, str]] = []
    forwarder = Forwarder(
        spool,
        sender,
        retry=RetryConfig(initial_delay_s=0.05, max_delay_s=0.1),
        on_result=lambda d, p, r, seconds, size: events.append((p.name, r.status)),
    )
    forwarder.start()
    try:
        wait_for(lambda: not spool.outgoing_items("web"), 20, "the queue to empty")
    finally:
        forwarder.stop()
        forwarder.join(5)
    (dead,) = (spool.dead_letter / "web").glob("*.dcm")
    assert dead.name == files[1].name
    sidecar = json.loads(dead.with_suffix(".json").read_text())
    assert sidecar["outcome"] == "rejected" and "0xC000" in sidecar["reason"]
    assert (files[2].name, "retry") in events and (files[2].name, "delivered") in events


def test_stow_413_splits_the_batch_and_refuses_an_instance_too_large_alone(
    tmp_path: Path, stow_server: Callable[..., StowServer]
) -> None:
    files, uids = _files(tmp_path, 5)
    big = uids[3]
    server = stow_server(
        lambda r: (413, None) if len(r.uids) > 2 or big in r.uids else (200, stow_response(r.uids))
    )
    results = DicomwebSender(_web(server.url)).send(files)
    assert [r.status for r in results] == ["delivered"] * 3 + ["rejected", "delivered"]
    assert "too large" in results[3].reason and "413" in results[3].reason
    delivered = [
        u for r in server.requests if len(r.uids) <= 2 and big not in r.uids for u in r.uids
    ]
    assert sorted(delivered) == sorted(u for u in uids if u != big)


def test_stow_400_and_409_without_details_find_the_instance_by_halves(
    tmp_path: Path, stow_server: Callable[..., StowServer]
) -> None:
    files, uids = _files(tmp_path, 4)

    def answer(request: Request) -> tuple[int, Any]:
        if uids[0] in request.uids:
            return 409, None
        stored = [u for u in request.uids if u != uids[2]]
        return (400, stow_response(stored)) if uids[2] in request.uids else (200, None)

    results = DicomwebSender(_web(stow_server(answer).url)).send(files)
    assert [r.status for r in results] == ["rejected", "delivered", "rejected", "delivered"]
    assert "HTTP 409" in results[0].reason and "HTTP 400" in results[2].reason


def test_stow_401_is_a_destination_failure_that_says_check_credentials(
    tmp_path: Path, stow_server: Callable[..., StowServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = stow_server(lambda r: (401, None))
    secret = tmp_path / "token"
    secret.write_text("not-the-token\n")
    destination = _web(server.url, auth={"type": "bearer", "token_file": str(secret)})
    spool = Spool(tmp_path / "spool").create(["web"])
    item = spool.outgoing / "web" / "x.dcm"
    shutil.copy(_one_file(tmp_path), item)
    forwarder = Forwarder(spool, sender_for(destination, "DICOMNODE"), retry=RetryConfig())
    with caplog.at_level(logging.WARNING, logger="dicomnode.forward"):
        forwarder.start()
        try:
            wait_for(lambda: forwarder.last_error is not None, 20, "a failed delivery")
        finally:
            forwarder.stop()
            forwarder.join(5)
    assert item.exists() and not list((spool.dead_letter / "web").glob("*"))
    (line,) = [r.getMessage() for r in caplog.records if "HTTP 401" in r.getMessage()]
    assert "check the credentials (auth.token_file" in line
    assert "not-the-token" not in caplog.text
    assert "check the credentials" in str(probe(destination))


def test_stow_server_errors_one_object_or_the_server(
    tmp_path: Path, stow_server: Callable[..., StowServer]
) -> None:
    files, uids = _files(tmp_path, 4)
    poison = stow_server(lambda r: (500, None) if uids[1] in r.uids else (200, None))
    results = DicomwebSender(_web(poison.url)).send(files)
    assert [r.status for r in results] == ["delivered", "failed", "delivered", "delivered"]
    broken = stow_server(lambda r: (500, None))
    results = DicomwebSender(_web(broken.url)).send(files)
    assert {r.status for r in results} == {"retry"}
    assert len(broken.requests) <= 6  # gives up splitting when nothing gets in
    down = stow_server(lambda r: (503, None))
    assert {r.status for r in DicomwebSender(_web(down.url)).send(files)} == {"retry"}
    assert len(down.requests) == 1


def test_stow_credentials_come_from_a_file_or_the_environment(
    tmp_path: Path, stow_server: Callable[..., StowServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    def answer(request: Request) -> tuple[int, Any]:
        allowed = {"Bearer t0k3n", "Basic " + base64.b64encode(b"node:pa55").decode()}
        return (200, None) if request.headers.get("Authorization") in allowed else (401, None)

    server = stow_server(answer)
    files, _ = _files(tmp_path, 2)
    monkeypatch.setenv("STOW_TOKEN", "t0k3n")
    bearer = _web(server.url, auth={"type": "bearer", "token_env": "STOW_TOKEN"}, batch_size=1)
    assert [r.status for r in DicomwebSender(bearer).send(files)] == ["delivered"] * 2
    password = tmp_path / "password"
    password.write_text("pa55\n")
    auth = {"type": "basic", "username": "node", "password_file": str(password)}
    basic = _web(server.url, auth=auth)
    assert [r.status for r in DicomwebSender(basic).send(files)] == ["delivered"] * 2
    assert probe(basic) is None
    monkeypatch.delenv("STOW_TOKEN")
    (result,) = DicomwebSender(bearer).send(files[:1])
    assert result.status == "retry" and "auth.token_env" in result.reason


def test_stow_over_https_checks_the_server(
    tmp_path: Path, pki: Pki, stow_server: Callable[..., StowServer]
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server = stow_server(lambda r: (200, None), context=context)
    files, _ = _files(tmp_path, 1)
    good = {"ca_certificates": str(pki.ca), "server_name": "pacs.test"}
    assert DicomwebSender(_web(server.url, tls=good)).send(files)[0].status == "delivered"
    for tls, setting in (
        ({**good, "ca_certificates": str(pki.other_ca)}, "tls.ca_certificates"),
        ({"ca_certificates": str(pki.ca)}, "tls.server_name"),
        ({}, "tls.ca_certificates"),  # the system's CAs do not know ours
    ):
        (result,) = DicomwebSender(_web(server.url, tls=tls)).send(files)
        assert result.status == "retry" and setting in result.reason, result.reason
    assert "tls.ca_certificates" in str(probe(_web(server.url)))
    unchecked = _web(server.url, tls={"verify": False})
    assert DicomwebSender(unchecked).send(files)[0].status == "delivered"


def test_dicomweb_settings_are_checked(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    for settings, message in (
        ({"url": "ftp://pacs/dicom-web"}, "use http"),
        ({"url": "https://user:pw@pacs/dicom-web"}, "no credentials in the URL"),
        ({"auth": {"type": "bearer"}}, "exactly one of token_file and token_env"),
        (
            {"auth": {"type": "bearer", "token_file": str(token), "token_env": "T"}},
            "exactly one of token_file and token_env",
        ),
        ({"auth": {"type": "basic", "username": "u", "password_env": "1X"}}, "not an environment"),
        ({"auth": {"type": "bearer", "token": "secret"}}, "Extra inputs"),
        (
            {"url": "http://pacs.example/dicom-web", "auth": {"type": "bearer", "token_env": "T"}},
            "in clear",
        ),
        ({"url": "http://pacs.example/dicom-web", "tls": {}}, "use https"),
    ):
        with pytest.raises(ValidationError, match=message):
            DicomwebDestination.model_validate(
                {"name": "web", "url": "https://pacs.example/dicom-web", **settings}
            )
    web = _web("https://pacs.example/dicom-web/", auth={"type": "bearer", "token_env": "T"})
    assert web.url == "https://pacs.example/dicom-web" and web.batch_size == 100


def test_stow_responses_in_json_and_xml() -> None:
    response = parse_stow_response(
        json.dumps(stow_response(["1.2.3"], {"1.2.4": 0xC000, "1.2.5": 0xA700})).encode()
    )
    assert response.stored == {"1.2.3"} and response.failed == {"1.2.4": 0xC000, "1.2.5": 0xA700}
    xml = b"""<?xml version="1.0"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
 <DicomAttribute tag="00081198" vr="SQ"><Item number="1">
  <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.4</Value></DicomAttribute>
  <DicomAttribute tag="00081197" vr="US"><Value number="1">49152</Value></DicomAttribute>
 </Item></DicomAttribute>
 <DicomAttribute tag="00081199" vr="SQ"><Item number="1">
  <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3</Value></DicomAttribute>
 </Item></DicomAttribute>
</NativeDicomModel>"""
    response = parse_stow_response(xml, "application/dicom+xml")
    assert response.stored == {"1.2.3"} and response.failed == {"1.2.4": 0xC000}
    for junk in (b"", b"[1, 2]", b"{not json", b'{"00081198": {"Value": [7]}}'):
        assert parse_stow_response(junk) == parse_stow_response(b"")


# -- DICOMweb: Orthanc ---------------------------------------------------------------------


def _qido_instances(orthanc: Orthanc) -> list[dict[str, Any]]:
    return list(orthanc.get("/dicom-web/instances?includefield=all"))


@pytest.mark.peers
def test_stow_to_orthanc_in_batches(tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path, dicomweb=True).start()
    try:
        files, uids = _files(tmp_path, 5)
        truncated = tmp_path / "truncated.dcm"
        truncated.write_bytes(files[0].read_bytes()[:1500])  # readable meta, broken data set
        destination = _web(orthanc.dicomweb_url, batch_size=2)
        sender = sender_for(destination, "DICOMNODE")
        results = [r for i in range(0, 6, 2) for r in sender.send([*files, truncated][i : i + 2])]
        assert [r.status for r in results] == ["delivered"] * 5 + ["rejected"]
        assert "HTTP 400" in results[5].reason
        found = {i["00080018"]["Value"][0] for i in _qido_instances(orthanc)}
        assert found == set(uids)
        assert probe(destination) is None
    finally:
        orthanc.stop()


@pytest.mark.peers
def test_node_to_orthanc_over_dicomweb_with_basic_auth(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", series=2, per_series=3)
    orthanc = Orthanc(tmp_path, dicomweb=True, users={"dicomnode": "s3cret-pw"}).start()
    password = tmp_path / "stow-password"
    password.write_text("s3cret-pw\n")
    try:
        destination = {
            "name": "research-web",
            "type": "dicomweb",
            "url": orthanc.dicomweb_url,
            "auth": {"type": "basic", "username": "dicomnode", "password_file": str(password)},
            "batch_size": 4,
        }
        node = NodeProcess(tmp_path / "node", destinations=[destination])
        with running(node):
            assert storescu(node.port, tmp_path / "study").returncode == 0
            wait_for(lambda: len(orthanc.instances()) == len(study), 90, "Orthanc to list all")
            node.wait_idle()
        log = node.log.read_text()
        assert "s3cret-pw" not in log
        instances = _qido_instances(orthanc)
        assert not leaks(json.dumps(instances).encode())
        pseudo = Pseudonymizer(SECRET)
        assert {i["00080018"]["Value"][0] for i in instances} == {
            pseudo.uid(str(ds.SOPInstanceUID)) for ds in study
        }
        assert len({i["00100020"]["Value"][0] for i in instances}) == 1
        for instance in orthanc.instances():
            assert leaks(orthanc.file(instance)) == []
    finally:
        orthanc.stop()


def test_the_http_client_is_loaded_only_for_dicomweb_destinations() -> None:
    code = "import sys, dicomnode.forward; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
