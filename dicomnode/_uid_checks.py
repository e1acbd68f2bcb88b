"""UID checks of association negotiation, done once per distinct UID instead of ~3 times per use.

Accepting an association from a modality that proposes the usual 128 presentation contexts
builds ~1,800 pydicom UIDs in pynetdicom 3.0 (the A-ASSOCIATE-RQ decoded, turned into
primitives, negotiated, the A-ASSOCIATE-AC built and encoded: each step sets every UID again),
and each is checked by regular expression up to three times: pydicom's reading validation in
``UID()``, pynetdicom's ``_config.VALIDATORS["UI"]`` (which builds the UID again) and
``UID.is_valid``. Listener CPU per association (storescu, one small instance each, two
listener processes; ``/proc``, means of two runs of 150): 19.3 ms, 16.5 with
:func:`cache_validator`, 14.0 with :func:`skip_pydicom_warnings` too. pynetdicom's own
``UID.is_valid`` check (a warning of non-conformance) still runs on every use.

- :func:`cache_validator`: pynetdicom's UI validator, a documented customisation point
  (``_config.VALIDATORS``), memoised by value and by ``ENFORCE_UID_CONFORMANCE``, the only
  setting it reads (its source is pinned in tests/test_hostile_network.py). The same answers;
  at most ``CACHED`` values of ``LONGEST`` characters or fewer are kept, so a sender inventing
  new UIDs costs what it did, and one sending huge ones is answered without memory.
- :func:`skip_pydicom_warnings`: pydicom's reading validation off (``IGNORE``). In its default
  mode (``WARN``) it only warns, never refuses, so nothing is decided differently: what the
  listener refuses, the gate and pynetdicom's validator decide. Only for a process that does
  nothing else (the listener processes, ``dicomnode.listeners``): the setting is the process's.
"""

from __future__ import annotations

import functools
from typing import Any

import pydicom.config
from pynetdicom import _config

__all__ = ["CACHED", "LONGEST", "cache_validator", "skip_pydicom_warnings"]

#: Distinct (UID, conformance setting) answers kept, each of a value of at most ``LONGEST``
#: characters (a UID's longest, with room for the padding of the wire): ~0.5 MB at most.
CACHED = 4096
LONGEST = 80


class _CachedValidator:
    """pynetdicom's UI validator, answering again from memory for a value seen before."""

    def __init__(self, validator: Any) -> None:
        self.validator = validator
        self._answer = functools.lru_cache(maxsize=CACHED)(self._ask)

    def _ask(self, value: str, _enforce: bool) -> tuple[bool, str]:
        return self.validator(value)  # type: ignore[no-any-return]

    def __call__(self, value: Any) -> tuple[bool, str]:
        if not isinstance(value, str) or len(value) > LONGEST:
            # Not kept: a request of 64 KiB may hold a "UID" of nearly that; 4,096 of them
            # would be 256 MB. (The validator refuses such a value anyway.)
            return self.validator(value)  # type: ignore[no-any-return]
        return self._answer(str(value), bool(_config.ENFORCE_UID_CONFORMANCE))


def cache_validator() -> None:
    """Memoise ``_config.VALIDATORS["UI"]`` (once: a cached one is left as it is)."""
    current = _config.VALIDATORS["UI"]
    if not isinstance(current, _CachedValidator):
        _config.VALIDATORS["UI"] = _CachedValidator(current)


def skip_pydicom_warnings() -> None:
    """pydicom's reading validation off for this process (see the module docstring)."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
