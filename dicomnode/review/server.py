"""The review page served by uvicorn in a thread of the node, with its own event loop.

The socket is bound by :meth:`ReviewServer.bind` in the node's start-up (a port in use is one
line and exit code 2, like the DICOM and metrics ports); :meth:`start` serves on it and
:meth:`stop` ends it with the node. No access log: what matters (logins, every view of an
original, every action) is in the audit trail, and URLs carry spool ids only.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from pathlib import Path

import uvicorn

from dicomnode.config import ReviewConfig
from dicomnode.review.app import Backend, ReviewApp
from dicomnode.review.auth import derive_key
from dicomnode.review.users import Role, UserStore, generate_password

__all__ = ["ReviewServer", "session_key"]

log = logging.getLogger(__name__)


def session_key(settings: ReviewConfig, secret: bytes, *, demo: bool) -> bytes:
    """The key that signs session cookies: ``review.secret_key_file``, else derived from the
    site secret; in demo mode (a public secret) a random one for this run."""
    if settings.secret_key_file is not None:
        return Path(settings.secret_key_file).read_bytes().strip()
    if demo:
        return secrets.token_bytes(32)
    return derive_key(secret)


class ReviewServer:
    """The page of one node: bind, start, stop."""

    def __init__(self, backend: Backend, settings: ReviewConfig) -> None:
        self.settings = settings
        self.app = ReviewApp(backend)
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1]) if self._socket is not None else 0

    def bind(self) -> None:
        """Take the port now (raises OSError: the node turns it into its one-line error)."""
        host = self.settings.bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.settings.port))
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        sock.set_inheritable(False)
        self._socket = sock

    def start(self) -> None:
        if self._socket is None:
            self.bind()
        proxies = list(self.settings.trusted_proxies)
        config = uvicorn.Config(
            self.app.asgi,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            proxy_headers=bool(proxies),
            forwarded_allow_ips=proxies or None,
            timeout_graceful_shutdown=2,
            limit_concurrency=64,
        )
        self._server = uvicorn.Server(config)
        sockets = [self._socket] if self._socket is not None else []
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": sockets},
            name="dicomnode-review",
            daemon=True,
        )
        self._thread.start()
        host = self.settings.bind
        shown = f"[{host}]" if ":" in host else host
        users = self.app.users.users()
        log.info(
            "review page on http://%s:%d/ (%s)",
            shown,
            self.port,
            f"{len(users)} user(s)"
            if users
            else "no users yet: dicomnode user add NAME --role reviewer",
        )

    def demo_reviewer(self) -> None:
        """Demo mode: a ``reviewer`` with a new random password, logged once."""
        password = generate_password()
        UserStore(self.settings.users_file).add("reviewer", Role.REVIEWER, password, replace=True)
        self.app.sessions.end_user("reviewer")
        log.warning(
            "DEMO MODE: review page user 'reviewer', password %s (shown once; a new one at "
            "every start)",
            password,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.app.close()
