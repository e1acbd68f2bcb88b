"""STOW-RS to a DICOMweb server (PS3.18 10.5): the sender of ``dicomweb`` destinations.

A batch is one POST of ``multipart/related; type="application/dicom"`` to ``<url>/studies``,
each file streamed as it is on disk. The answer becomes one :class:`~dicomnode.forward.Delivery`
per instance, by the rules of every other sender (see :mod:`dicomnode.forward`)::

    HTTP 2xx, 400 or 409 with a STOW response  each instance in FailedSOPSequence by its
                                               FailureReason, read as a C-STORE status
                                               (0xC000 rejected, 0xA700 retry, 0x0110 failed;
                                               none given: rejected); in
                                               ReferencedSOPSequence: delivered. Instances
                                               it does not name: delivered on 200, else sent
                                               again in a request of their own
    400 or 409 naming no instance              the batch is split in halves and sent again;
    413 Payload Too Large                      an instance refused alone: rejected
    500 Internal Server Error                  split likewise; an instance alone: failed when
                                               others got in (set aside), else retry
    401, 403                                   retry: the whole destination backs off, the log
                                               says to check the credentials
    other 3xx, 4xx and 5xx, TLS refused,       retry (the destination), with the setting to
    unreachable, timeouts                      check where there is one

Credentials are read from their file or environment variable at each batch (a rotated token
is picked up), and never logged. Reasons carry HTTP status codes, failure reasons and setting
names, never the server's text (it may quote the object).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
from pydicom.filereader import read_file_meta_info

from dicomnode import _tls
from dicomnode.config import BasicAuth, ClientTLSConfig, DicomwebDestination
from dicomnode.forward import DELIVERED, Delivery, Result, classify_status

log = logging.getLogger(__name__)

__all__ = ["DicomwebSender", "StowResponse", "parse_stow_response", "probe"]

_DICOM_JSON = "application/dicom+json"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_MAX_RESPONSE = 32 * 1024 * 1024  # a STOW response is ~300 bytes per instance
_CHUNK = 1024 * 1024
_SERVER_ERRORS_ALONE = 3  # single-instance 500s, none delivered: the server, not the objects


class _Down(Exception):
    """The destination cannot take anything now; the message says what to check."""


@dataclass(frozen=True)
class StowResponse:
    """What a STOW-RS response says per SOP Instance UID: failed (with its FailureReason,
    None when none is given) or stored."""

    failed: dict[str, int | None] = field(default_factory=dict)
    stored: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Part:
    path: Path
    size: int
    sop_instance_uid: str


@dataclass
class _Round:
    """One ``send``: its results, and the single instances a 500 was answered for."""

    results: list[Result | None]
    server_errors: list[int] = field(default_factory=list)


class DicomwebSender:
    """STOW-RS client for one destination (one per lane; the HTTP connection is kept)."""

    def __init__(self, config: DicomwebDestination) -> None:
        self.name = config.name
        self.config = config
        self.stow_url = f"{config.url}/studies"
        self.server_name = (config.tls.server_name if config.tls else None) or (
            urlsplit(config.url).hostname or ""
        )
        self._client: httpx.Client | None = None
        if config.tls is not None and not config.tls.verify:
            log.warning(
                "%s: the server's certificate is not checked (tls.verify: false)", self.name
            )

    # -- plumbing --------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        if self._client is None:
            try:
                context = _tls.client_context(self.config.tls or ClientTLSConfig())
            except (ssl.SSLError, OSError) as exc:
                raise _Down(_tls.load_error(exc)) from None
            timeout = self.config.timeout_s
            self._client = httpx.Client(
                verify=context,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10)),
                follow_redirects=False,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header, its secret read now; raises _Down naming the setting."""
        auth = self.config.auth
        if auth is None:
            return {}
        if isinstance(auth, BasicAuth):
            password = _secret(auth.password_file, auth.password_env, "password")
            token = base64.b64encode(f"{auth.username}:{password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {token}"}
        return {"Authorization": f"Bearer {_secret(auth.token_file, auth.token_env, 'token')}"}

    def credentials_hint(self) -> str:
        auth = self.config.auth
        if auth is None:
            return "the destination needs auth (basic or bearer)"
        if isinstance(auth, BasicAuth):
            where = (
                f"password_file {auth.password_file}"
                if auth.password_file
                else (f"password_env {auth.password_env}")
            )
            return f"check the credentials (auth.username and auth.{where})"
        where = (
            f"token_file {auth.token_file}" if auth.token_file else f"token_env {auth.token_env}"
        )
        return f"check the credentials (auth.{where})"

    def transport_error(self, exc: Exception, url: str) -> _Down:
        """A request that got no HTTP answer: timeout, TLS refused, unreachable."""
        if isinstance(exc, httpx.TimeoutException):
            return _Down(
                f"{url}: no answer within {self.config.timeout_s:g} s "
                f"({type(exc).__name__}): raise timeout_s, or lower batch_size"
            )
        ssl_error = _tls.find_ssl_error(exc)
        if ssl_error is not None:
            return _Down(f"{url}: {_tls.why(ssl_error, self.server_name)}")
        return _Down(f"{url} could not be reached ({type(exc).__name__})")

    # -- sending ---------------------------------------------------------------------------

    def send(self, paths: list[Path]) -> list[Result]:
        run = _Round([None] * len(paths))
        parts: dict[int, _Part] = {}
        for index, path in enumerate(paths):
            try:
                uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
                size = path.stat().st_size
            except Exception:
                run.results[index] = Result(
                    Delivery.REJECTED, "the clean object's file meta is unreadable"
                )
                continue
            if not uid:
                run.results[index] = Result(
                    Delivery.REJECTED, "the clean object's file meta has no SOP Instance UID"
                )
                continue
            parts[index] = _Part(path, size, uid)
        if parts:
            try:
                client, headers = self.client(), self.auth_headers()
                self._post(client, headers, sorted(parts), parts, run)
            except _Down as exc:
                for index in parts:
                    run.results[index] = run.results[index] or Result(Delivery.RETRY, str(exc))
        took_others = any(r is not None and r.status is Delivery.DELIVERED for r in run.results)
        for index in run.server_errors:
            if took_others:
                why = f"{self.name} failed on this object alone (HTTP 500) while it took others"
                run.results[index] = Result(Delivery.FAILED, why)
            else:
                run.results[index] = Result(Delivery.RETRY, f"{self.stow_url}: HTTP 500")
        return [r or Result(Delivery.RETRY, "not sent") for r in run.results]

    def _post(
        self,
        client: httpx.Client,
        headers: dict[str, str],
        indices: list[int],
        parts: dict[int, _Part],
        run: _Round,
    ) -> None:
        """POST these instances and fill their results; halves sent again where the answer
        says nothing of single instances."""
        code, phrase, body, kind = self._request(client, headers, [parts[i] for i in indices])
        half = (len(indices) + 1) // 2
        if code in (401, 403):
            raise _Down(f"{self.stow_url}: HTTP {code} {phrase}: {self.credentials_hint()}")
        if code == 413 or (code == 500 and len(indices) > 1):
            if len(indices) > 1:
                self._post(client, headers, indices[:half], parts, run)
                self._post(client, headers, indices[half:], parts, run)
            else:
                size = parts[indices[0]].size
                run.results[indices[0]] = Result(
                    Delivery.REJECTED,
                    f"{self.name} refused this object alone as too large (HTTP 413, {size} bytes)",
                )
            return
        if code == 500:
            run.server_errors.append(indices[0])
            delivered = any(r is not None and r.status is Delivery.DELIVERED for r in run.results)
            if len(run.server_errors) >= _SERVER_ERRORS_ALONE and not delivered:
                raise _Down(f"{self.stow_url}: HTTP 500 {phrase}, for single objects too")
            return
        if not (200 <= code < 300 or code in (400, 409)):
            hint = {
                404: ": check url (the DICOMweb service root; STOW-RS is <url>/studies)",
                405: ": check url (the DICOMweb service root; STOW-RS is <url>/studies)",
                415: ": the server does not take application/dicom parts",
            }.get(code, ": the server asks for another url" if 300 <= code < 400 else "")
            raise _Down(f"{self.stow_url}: HTTP {code} {phrase}{hint}")
        stow = parse_stow_response(body, kind)
        unnamed = []
        for index in indices:
            uid = parts[index].sop_instance_uid
            if uid in stow.failed:
                run.results[index] = self._failure(stow.failed[uid], code)
            elif uid in stow.stored:
                run.results[index] = DELIVERED
            else:
                unnamed.append(index)
        if not unnamed:
            return
        if code == 200:
            for index in unnamed:
                run.results[index] = DELIVERED
        elif len(unnamed) < len(indices):  # it answered for the others: ask again for these
            self._post(client, headers, unnamed, parts, run)
        elif len(indices) > 1:
            self._post(client, headers, indices[:half], parts, run)
            self._post(client, headers, indices[half:], parts, run)
        elif code >= 400:
            run.results[indices[0]] = Result(
                Delivery.REJECTED, f"{self.name} refused the object (HTTP {code} {phrase})"
            )
        else:
            run.results[indices[0]] = Result(
                Delivery.FAILED,
                f"{self.name} answered HTTP {code} without saying whether it stored the object",
            )

    def _failure(self, reason: int | None, code: int) -> Result:
        if reason is None:
            return Result(
                Delivery.REJECTED,
                f"{self.name} refused the object (HTTP {code}, FailedSOPSequence, no reason)",
            )
        outcome = classify_status(reason)
        if outcome is Delivery.DELIVERED:
            return DELIVERED
        what = {
            Delivery.RETRY: "cannot take objects now",
            Delivery.FAILED: "failed on this object",
            Delivery.REJECTED: "refused the object",
        }[outcome]
        return Result(outcome, f"{self.name} {what} (HTTP {code}, FailureReason 0x{reason:04X})")

    def _request(
        self, client: httpx.Client, headers: dict[str, str], parts: list[_Part]
    ) -> tuple[int, str, bytes, str]:
        """One POST: status code, reason phrase, body (at most 32 MiB) and its content type."""
        boundary = secrets.token_hex(16)
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        tail = f"--{boundary}--\r\n".encode("ascii")
        length = sum(len(head) + part.size + 2 for part in parts) + len(tail)
        request_headers = {
            **headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),  # so the body is not sent chunked
            "Accept": _DICOM_JSON,
        }
        try:
            with client.stream(
                "POST",
                self.stow_url,
                content=_body(parts, head, tail),
                headers=request_headers,
                extensions={"sni_hostname": self.server_name},
            ) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_RESPONSE:
                        body = bytearray()  # unreadable as a STOW response; the code stays
                        break
                kind = response.headers.get("content-type", "")
                return response.status_code, response.reason_phrase, bytes(body), kind
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, self.stow_url) from None
        except OSError as exc:  # a spool file went away or changed while it was sent
            raise _Down(
                f"a clean object could not be read while sending ({exc.strerror})"
            ) from None


def _body(parts: list[_Part], head: bytes, tail: bytes) -> Iterator[bytes]:
    """The multipart body, read from disk as it goes: exactly the sizes announced."""
    for part in parts:
        yield head
        left = part.size
        with open(part.path, "rb") as handle:
            while left > 0:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(0, "the file is shorter than when the request began")
                left -= len(chunk)
                yield chunk
        yield b"\r\n"
    yield tail


def _secret(file: Path | None, env: str | None, what: str) -> str:
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Down(
                f"auth.{what}_file: cannot read {file} ({getattr(exc, 'strerror', None) or exc})"
            ) from None
        where = f"auth.{what}_file {file}"
    else:
        value = os.environ.get(env or "", "").strip()
        where = f"auth.{what}_env: the environment variable {env}"
    if not value:
        raise _Down(f"{where} is empty or not set")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _Down(f"{where} holds control characters (one line, no line breaks inside)")
    return value


# -- the STOW response ---------------------------------------------------------------------


def parse_stow_response(body: bytes, content_type: str = _DICOM_JSON) -> StowResponse:
    """The failed and stored instances a STOW-RS response names (PS3.18 10.5.3), from its
    DICOM JSON or XML form; anything else (or nothing) names none."""
    if not body.strip():
        return StowResponse()
    try:
        if "xml" in content_type.lower():
            return _parse_xml(body)
        return _parse_json(json.loads(body))
    except (ValueError, ElementTree.ParseError, TypeError, AttributeError):
        return StowResponse()


def _parse_json(doc: Any) -> StowResponse:
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict):
        return StowResponse()

    def items(tag: str) -> list[dict[str, Any]]:
        element = doc.get(tag)
        values = element.get("Value") if isinstance(element, dict) else None
        return [v for v in values or [] if isinstance(v, dict)]

    def first(item: dict[str, Any], tag: str) -> Any:
        element = item.get(tag)
        values = element.get("Value") if isinstance(element, dict) else None
        return values[0] if isinstance(values, list) and values else None

    failed = {}
    for item in items(_FAILED_SOP_SEQUENCE):
        uid = first(item, _REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            failed[uid] = _code(first(item, _FAILURE_REASON))
    stored = {first(item, _REFERENCED_SOP_INSTANCE_UID) for item in items(_REFERENCED_SOP_SEQUENCE)}
    return StowResponse(failed, frozenset(u for u in stored if isinstance(u, str)))


def _parse_xml(body: bytes) -> StowResponse:
    root = ElementTree.fromstring(body)

    def local(element: ElementTree.Element) -> str:
        return element.tag.rpartition("}")[2]

    def attribute(parent: ElementTree.Element, tag: str) -> ElementTree.Element | None:
        return next(
            (e for e in parent if local(e) == "DicomAttribute" and e.get("tag") == tag), None
        )

    def value(item: ElementTree.Element, tag: str) -> str | None:
        element = attribute(item, tag)
        found = next((v for v in element or [] if local(v) == "Value"), None)
        return (found.text or "").strip() if found is not None else None

    def items(tag: str) -> list[ElementTree.Element]:
        element = attribute(root, tag)
        return [i for i in element or [] if local(i) == "Item"]

    failed = {}
    for item in items(_FAILED_SOP_SEQUENCE):
        uid = value(item, _REFERENCED_SOP_INSTANCE_UID)
        if uid:
            failed[uid] = _code(value(item, _FAILURE_REASON))
    stored = {value(item, _REFERENCED_SOP_INSTANCE_UID) for item in items(_REFERENCED_SOP_SEQUENCE)}
    return StowResponse(failed, frozenset(u for u in stored if u))


def _code(value: Any) -> int | None:
    """A FailureReason (US): a number, or its text in decimal or 0x hex."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0xFFFF else None
    if isinstance(value, str):
        try:
            number = int(value.strip(), 0)
        except ValueError:
            return None
        return number if 0 <= number <= 0xFFFF else None
    return None


# -- status --------------------------------------------------------------------------------


def probe(destination: DicomwebDestination, timeout: float = 5) -> str | None:
    """``dicomnode status``: a QIDO-RS query for one study, authenticated as the sender is.
    None when the server answers it, else why not (the setting to check where there is one)."""
    sender = DicomwebSender(destination.model_copy(update={"timeout_s": timeout}))
    url = f"{destination.url}/studies"
    try:
        client, headers = sender.client(), sender.auth_headers()
        with client.stream(
            "GET",
            url,
            params={"limit": "1"},
            headers={**headers, "Accept": _DICOM_JSON},
            extensions={"sni_hostname": sender.server_name},
        ) as response:
            code, phrase = response.status_code, response.reason_phrase
    except _Down as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        return str(sender.transport_error(exc, url))
    finally:
        sender.close()
    if 200 <= code < 300:
        return None
    if code in (401, 403):
        return f"{url}: HTTP {code} {phrase}: {sender.credentials_hint()}"
    return f"QIDO-RS {url}?limit=1: HTTP {code} {phrase}"
