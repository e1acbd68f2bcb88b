"""The vocabularies of the profile: action codes and options.

PS3.15 Table E.1-1 gives each attribute an action code. The combined codes (X/Z, X/D, ...)
mean "the weakest action the IOD allows": which one applies depends on the attribute's Type
in the IOD of the instance's SOP class. The engine asks the PS3.3 tables (``scrub/iod.py``)
for that Type when it meets the attribute; the compiled action below is what it falls back
to for a class the tables do not know, chosen to be conformant whatever the Type:

==========  ===========================================================================
code        Type 3 (or absent from the IOD) / Type 2 / Type 1 -- and without IOD facts
==========  ===========================================================================
X/Z         X / Z / Z (an empty Type 1 value is still better than a kept one) -- Z
X/D, Z/D    X (Z/D: Z) / D / D -- D: a dummy consistent with the VR
X/Z/D       X / Z / D -- D
X/Z/U*      U at every Type: the sequence stays and every UID inside it is replaced
==========  ===========================================================================

X/Z/U* is our one reading beyond the letter of the table: the standard would remove a Type 3
sequence of references, but once its UIDs are replaced it carries nothing identifying, and
references between objects (localizers, source images, the study) are what research needs
(DESIGN: "It keeps what research needs"). Retain UIDs keeps them unreplaced.

An attribute that is absent stays absent: nothing is added by these rules.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """What happens to one attribute."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    CLEAN = "C"
    UID = "U"
    # Not in the standard; from site rules and the local policy (rules/profile/local.yaml).
    SET = "set"
    HASH = "hash"
    # An unlisted date or time: removed, shifted or kept according to the date option.
    DATE = "date"

    @classmethod
    def from_code(cls, code: str) -> Action:
        """Resolve a code of Table E.1-1, combined codes included (see the module docstring)."""
        try:
            return _COMBINED.get(code) or cls(code)
        except ValueError:
            raise ValueError(f"unknown action code {code!r}") from None


_COMBINED = {
    "X/Z": Action.EMPTY,
    "X/D": Action.DUMMY,
    "Z/D": Action.DUMMY,
    "X/Z/D": Action.DUMMY,
    "X/Z/U*": Action.UID,
    "X/Z/U": Action.UID,
}

# Site rule words -> actions.
SITE_ACTIONS: dict[str, Action] = {
    "keep": Action.KEEP,
    "remove": Action.REMOVE,
    "empty": Action.EMPTY,
    "dummy": Action.DUMMY,
    "clean": Action.CLEAN,
    "uid": Action.UID,
    "set": Action.SET,
    "hash": Action.HASH,
}

# When several options in force give an attribute different actions, the most protective wins
# (for example Retain Device Identity says K and Modified Dates says C for a calibration date).
PROTECTION = {
    Action.REMOVE: 6,
    Action.EMPTY: 5,
    Action.DUMMY: 4,
    Action.CLEAN: 3,
    Action.DATE: 3,
    Action.UID: 2,
    Action.HASH: 2,
    Action.SET: 1,
    Action.KEEP: 0,
}


class Option(StrEnum):
    """The options of the Basic Profile (PS3.15 E.3), by the names used in configuration."""

    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONG_FULL_DATES = "retain-long-full-dates"
    RETAIN_LONG_MODIFIED_DATES = "retain-long-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"


class DateMode(StrEnum):
    """How dates and times come out, by the date option in force."""

    REMOVED = "REMOVED"  # Basic Profile: dates removed or replaced by dummies
    MODIFIED = "MODIFIED"  # shifted by a per-patient number of days
    UNMODIFIED = "UNMODIFIED"  # kept as they are
