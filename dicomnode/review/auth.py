"""Sessions, CSRF tokens and login rate limits of the review page.

- **Sessions** live in the node's memory; the cookie carries a random id (256 bits) with an
  HMAC-SHA256 signature under the page's key, HttpOnly, SameSite=Strict, Secure when the page
  is served over https (or a trusted proxy says so). A session ends after ``idle_s`` without a
  request, after ``max_s`` in all, at logout, when its user is removed, and when the node
  stops. Logging in always makes a new id (no session fixation).
- **CSRF**: every form carries a token; a session's token is random and compared in constant
  time. The login form, before there is a session, carries a token bound to a random nonce in
  a short-lived cookie of its own.
- **Login rate limit**: failures are counted per user name and per client address over a
  sliding window; past the limit, attempts are refused without checking the password (which
  also bounds the CPU and memory argon2 can be made to spend).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["LoginGuard", "Session", "Sessions", "derive_key"]

KEY_LABEL = b"dicomnode review session key v1"


def derive_key(secret: bytes) -> bytes:
    """The page's signing key from the site secret (HMAC-SHA256 with its own label)."""
    return hmac.new(secret, KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    created: float
    seen: float
    notes: dict[str, float] = field(default_factory=dict)  # what was audited when


class Sessions:
    """Server-side sessions behind signed cookies."""

    def __init__(
        self, key: bytes, *, idle_s: float = 1800, max_s: float = 12 * 3600, limit: int = 10000
    ) -> None:
        self.key = key
        self.idle_s = idle_s
        self.max_s = max_s
        self.limit = limit
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def _cookie(self, sid: str) -> str:
        return f"{sid}.{_mac(self.key, 'session', sid)}"

    def _unsign(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 200:
            return None
        sid, _, mac = cookie.partition(".")
        if not sid or not hmac.compare_digest(mac, _mac(self.key, "session", sid)):
            return None
        return sid

    def start(self, user: str) -> tuple[str, Session]:
        """A new session for ``user``: its cookie value and the session."""
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.limit:
                self._sessions.popitem(last=False)
        return self._cookie(session.id), session

    def get(self, cookie: str | None) -> Session | None:
        sid = self._unsign(cookie)
        if sid is None:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.seen > self.idle_s or now - session.created > self.max_s:
                del self._sessions[sid]
                return None
            session.seen = now
            self._sessions.move_to_end(sid)
            return session

    def end(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def end_user(self, user: str) -> None:
        with self._lock:
            for sid in [s.id for s in self._sessions.values() if s.user == user]:
                del self._sessions[sid]

    # -- the login form's CSRF token -----------------------------------------------------

    def login_nonce(self) -> tuple[str, str]:
        """A nonce for the login cookie and the token its form carries."""
        nonce = secrets.token_urlsafe(24)
        stamp = str(int(time.time()))
        cookie = f"{nonce}.{stamp}"
        return cookie, _mac(self.key, "login", cookie)

    def login_token_ok(
        self, cookie: str | None, token: str | None, max_age_s: float = 3600
    ) -> bool:
        if not cookie or not token or len(cookie) > 100 or len(token) > 100:
            return False
        _, _, stamp = cookie.partition(".")
        if not stamp.isdigit() or time.time() - int(stamp) > max_age_s:
            return False
        return hmac.compare_digest(token, _mac(self.key, "login", cookie))


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf, str(token))


class LoginGuard:
    """Failed logins per user name and per address, over a sliding window."""

    def __init__(
        self,
        *,
        per_user: int = 5,
        per_address: int = 20,
        window_s: float = 900,
        limit: int = 10000,
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window_s = window_s
        self.limit = limit
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def wait_s(self, user: str, address: str) -> float:
        """Seconds until this user name and address may try again (0: now)."""
        now = time.monotonic()
        waits = [0.0]
        with self._lock:
            for key, most in ((f"u:{user}", self.per_user), (f"a:{address}", self.per_address)):
                times = self._recent(key, now)
                if len(times) >= most:
                    waits.append(times[len(times) - most] + self.window_s - now)
        return max(waits)

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"u:{user}", f"a:{address}"):
                times = self._failures.setdefault(key, deque())
                times.append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > self.limit:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(f"u:{user}", None)
