"""Review page accounts: a name, a role, an argon2id hash; one JSON file, mode 0600.

A site creates its users with ``dicomnode user add NAME --role reviewer|viewer``; the demo
(``serve --demo``) makes a ``reviewer`` with a random password it logs once. The running node
reads the file again when it changes: a removed user's sessions end at their next request,
and a changed role applies at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from dicomnode.durable import write_atomic
from dicomnode.errors import ConfigError

__all__ = ["MIN_PASSWORD", "NAME_PATTERN", "Role", "User", "UserStore", "generate_password"]

NAME_PATTERN = re.compile(r"[a-z][a-z0-9._-]{0,31}")
MIN_PASSWORD = 12
_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory parameters (64 MiB, 3 passes)
# Verified against when the user does not exist, so that the time taken does not say which
# names exist.
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


class Role(StrEnum):
    """What a user may see and do."""

    VIEWER = "viewer"  # counts, reasons, the cleaned output
    REVIEWER = "reviewer"  # also original values and pixels, and every action


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created: str


def generate_password() -> str:
    """A random password (20 characters, about 120 bits)."""
    return secrets.token_urlsafe(15)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a user name: 1 to 32 of a-z, 0-9, '.', '_', '-', starting with a "
            "letter"
        )
    return name


class UserStore:
    """The users file (``review.users_file``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, dict[str, Any]] = {}

    # -- reading -------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        """The users, read again only when the file changed (one stat per request)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return self._users
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_bytes())
                users = data.get("users", {}) if isinstance(data, dict) else {}
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot read the review users file {self.path} ({type(exc).__name__}); "
                    "fix or remove it, then add the users again (dicomnode user add)"
                ) from None
            self._users = {
                name: entry
                for name, entry in users.items()
                if isinstance(entry, dict)
                and NAME_PATTERN.fullmatch(str(name))
                and entry.get("role") in Role._value2member_map_
                and isinstance(entry.get("hash"), str)
            }
            self._stamp = stamp
        return self._users

    def get(self, name: str) -> User | None:
        with self._lock:
            entry = self._load().get(name)
        if entry is None:
            return None
        return User(name, Role(entry["role"]), str(entry.get("created", "")))

    def users(self) -> list[User]:
        with self._lock:
            names = sorted(self._load())
        return [u for u in (self.get(n) for n in names) if u is not None]

    def verify(self, name: str, password: str) -> User | None:
        """The user, if the password is theirs; None otherwise (in about the same time)."""
        with self._lock:
            entry = self._load().get(name)
        stored = entry["hash"] if entry is not None else _DUMMY
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        return self.get(name)

    # -- writing -------------------------------------------------------------------------

    def add(self, name: str, role: Role, password: str, *, replace: bool = False) -> User:
        check_name(name)
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"a password needs at least {MIN_PASSWORD} characters")
        hashed = _HASHER.hash(password)
        with self._lock:
            users = dict(self._load())
            if name in users and not replace:
                raise ConfigError(
                    f"user {name} exists already; remove it first, or give --replace to set a "
                    "new password and role"
                )
            users[name] = {
                "role": role.value,
                "hash": hashed,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self._write(users)
        return User(name, role, users[name]["created"])

    def remove(self, name: str) -> bool:
        with self._lock:
            users = dict(self._load())
            if users.pop(name, None) is None:
                return False
            self._write(users)
        return True

    def _write(self, users: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"version": 1, "users": users}, indent=1, sort_keys=True).encode()
        write_atomic(self.path, data, mode=0o600, dir_mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        self._stamp = None  # read back at the next use
