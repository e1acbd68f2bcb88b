"""TLS for the connections the node opens to its destinations (``dicom`` and ``dicomweb``).

One context per destination: TLS 1.2 or later, the server's certificate checked against the
configured CAs (else the system's), its name against ``tls.server_name`` (else the host), and
our client certificate offered when one is configured. When a handshake fails, :func:`why`
says which setting to look at; the messages name settings, host names and OpenSSL's reason,
never anything from an instance.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicomnode.config import ClientTLSConfig

__all__ = ["client_context", "find_ssl_error", "load_error", "probe", "why"]

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


def client_context(tls: ClientTLSConfig) -> ssl.SSLContext:
    """The context for one destination; raises ``ssl.SSLError`` or ``OSError`` when a file
    cannot be loaded (the configuration loader turns those into a message naming it)."""
    context = ssl.create_default_context(
        cafile=str(tls.ca_certificates) if tls.ca_certificates else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.verify:
        context.check_hostname = tls.check_hostname
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.certificate is not None:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context


def load_error(exc: Exception) -> str:
    """:func:`client_context` failed after the configuration was loaded (a file changed)."""
    return (
        "TLS: cannot load tls.certificate, tls.private_key or tls.ca_certificates "
        f"({getattr(exc, 'reason', None) or type(exc).__name__})"
    )


def find_ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (HTTP clients wrap it in their own exceptions)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def why(exc: ssl.SSLError, name: str) -> str:
    """What a failed handshake means for the operator, and the setting to check; ``name`` is
    the server name that was checked."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return (
                f"TLS: the server's certificate is not valid for the name {name!r}: check "
                "host, or set tls.server_name to a name the certificate carries"
            )
        return (
            f"TLS: the server's certificate could not be verified ({exc.verify_message}): "
            "check tls.ca_certificates"
        )
    reason = str(exc.reason or type(exc).__name__)
    if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason or "ACCESS_DENIED" in reason:
        return (
            f"TLS: the server refused our client certificate ({reason}): check "
            "tls.certificate and tls.private_key, and that the server trusts their CA"
        )
    if "VERSION" in reason or "PROTOCOL" in reason or "RECORD" in reason:
        return (
            f"TLS: no TLS 1.2 or later on this port ({reason}): check the port, or whether "
            "the server speaks TLS at all"
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return (
            "TLS: the server closed the connection during the handshake: check the port, "
            "tls.certificate and tls.private_key"
        )
    return f"TLS: handshake failed ({reason})"


def probe(
    context: ssl.SSLContext, host: str, port: int, server_name: str, timeout: float
) -> str | None:
    """Shake hands once as an association would, to say why one failed: :func:`why`'s
    message, or None when TLS is not the problem (or the server cannot be reached at all).

    With TLS 1.3 a server that refuses our client certificate says so just after the
    handshake, so a short read follows it.
    """
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as sock,
        ):
            sock.settimeout(min(timeout, 1.0))
            with contextlib.suppress(TimeoutError):
                sock.recv(1)
    except ssl.SSLError as exc:
        return why(exc, server_name)
    except OSError:
        return None
    return None
