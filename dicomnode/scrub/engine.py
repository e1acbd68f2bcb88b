"""Apply a compiled profile to a dataset, recursively, touching only what changes.

Elements are handled as pydicom left them: raw bytes. An element the profile keeps is never
decoded; one it replaces gets new bytes. Sequences are walked at every depth, with the mode
of the sequence's own action (PS3.15 E.1.1: "the action is applicable to the Sequence and all
of its contents"):

- ``K``/``U`` on a sequence: its items get the profile, as the top level does;
- ``D`` on a sequence: as ``K``, and in addition every free-text value in it becomes a dummy;
- ``C`` on a sequence: as ``K``, and every free-text value in it is cleaned.

In the last two, codes from standard coding schemes (DCM, SCT, LN...) are concepts, not
data about anyone, and are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.datadict import (  # type: ignore[attr-defined]
    DicomDictionary,
    dictionary_has_tag,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode import __version__
from dicomnode.dicomio import encode_items, raw, vr_of
from dicomnode.errors import InstanceError, ScrubError
from dicomnode.scrub.actions import Action, DateMode, Option
from dicomnode.scrub.profile import Profile, Rule, rules_dir
from dicomnode.scrub.pseudonym import Pseudonymizer
from dicomnode.scrub.values import (
    DUMMY_BY_VR,
    FREE_TEXT_VRS,
    MAX_LENGTH,
    TextCleaner,
    identity_terms,
    join_text,
    join_values,
    pad,
    shift_date,
    shift_datetime,
    split_values,
)

log = logging.getLogger(__name__)

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
SPECIFIC_CHARACTER_SET = 0x00080005
STUDY_INSTANCE_UID = 0x0020000D
CODING_SCHEME_DESIGNATOR = 0x00080102
_CODE_ELEMENTS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080119, 0x00080120})
# Coding schemes whose codes name concepts (PS3.16 Table 8-1); codes of local schemes
# ("99...", "L") may be anything, so they get the mode of their sequence.
STANDARD_SCHEMES = frozenset(
    "DCM SCT SRT SNM3 LN UCUM RADLEX FMA NCIt NCIT UMLS MSH I10 I9C ICD10 I10P ACR BI NEU MDC "
    "ITIS_TSN NCBI HGNC PUBCHEM_CID RXNORM NDC UNS IBSI ISO IEC61217 NCDR UBERON MA DCMUID".split()
)
DICOM_ROOT = "1.2.840.10008."
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_CODES = 0x00120064
TEMPORAL_MODIFIED = 0x00280303


class Mode(Enum):
    NORMAL = "normal"
    DUMMY = "dummy"
    CLEAN = "clean"


@dataclass
class ScrubReport:
    """What the scrubber did to one instance; counts only, never values."""

    removed: int = 0
    replaced: int = 0
    private_removed: int = 0
    private_kept: int = 0
    date_shift_days: int | None = None
    actions: dict[str, int] = field(default_factory=dict)


@dataclass
class _Instance:
    """Per-instance state: decided once from the original header, used at every depth."""

    encodings: list[str]
    implicit: bool
    little: bool
    patient_pseudonym: str
    shift_days: int
    banned: frozenset[str]
    report: ScrubReport


class Scrubber:
    """De-identifies datasets in place with one compiled profile and one secret.

    Build it once per process (compiling the profile takes ~50 ms); :meth:`scrub` is cheap.
    """

    def __init__(
        self,
        profile: Profile,
        pseudonymizer: Pseudonymizer,
        *,
        patient_id_prefix: str = "",
        patient_name: str = "{patient_id}",
        cleaner: TextCleaner | None = None,
    ) -> None:
        self.profile = profile
        self.pseudonyms = pseudonymizer
        self.patient_id_prefix = patient_id_prefix
        self.patient_name = patient_name
        self.cleaner = cleaner or TextCleaner.from_files(
            rules_dir() / "safe-words.txt", extra=profile.clean_words
        )
        self._retain_uids = Option.RETAIN_UIDS in profile.options
        self._provenance_cache: dict[tuple[Any, ...], dict[int, Any]] = {}
        self._appliers: dict[Action, Callable[..., Any]] = {
            Action.REMOVE: self._remove,
            Action.EMPTY: self._empty,
            Action.DUMMY: self._dummy,
            Action.CLEAN: self._clean,
            Action.UID: self._uid,
            Action.SET: self._set,
            Action.HASH: self._hash,
            Action.DATE: self._date,
        }

    # -- entry point -----------------------------------------------------------------------

    def scrub(self, ds: Dataset) -> ScrubReport:
        """De-identify ``ds`` in place and stamp how it was done.

        Raises :class:`InstanceError` (never passes data through) when a rule cannot be
        applied; the dataset is then in an undefined state and must not be used.
        """
        try:
            state = self._start(ds)
            self._walk(ds, state, Mode.NORMAL, trusted=False)
            self._stamp(ds, state)
        except InstanceError:
            raise
        except Exception as exc:
            raise ScrubError(
                f"the profile could not be applied ({type(exc).__name__}); the instance is "
                "quarantined untouched"
            ) from exc
        return state.report

    def _start(self, ds: Dataset) -> _Instance:
        elements = _elements(ds)
        charset = elements.get(SPECIFIC_CHARACTER_SET)
        encodings = convert_encodings(_text_values(charset) if charset is not None else None)
        first = next((e for e in elements.values() if isinstance(e, RawDataElement)), None)
        implicit = bool(first is not None and first.is_implicit_VR)
        little = first is None or bool(first.is_little_endian)
        patient_id = _first_text(elements.get(PATIENT_ID), encodings)
        if patient_id:
            key = patient_id
        else:
            # No Patient ID: group by study rather than merge every unknown patient into one.
            key = "study:" + (_first_text(elements.get(STUDY_INSTANCE_UID), encodings) or "")
        report = ScrubReport()
        shift = 0
        if self.profile.date_mode is DateMode.MODIFIED:
            shift = self.pseudonyms.date_shift_days(key)
            report.date_shift_days = shift
        terms = self._identity(elements, encodings)
        return _Instance(
            encodings=encodings,
            implicit=implicit,
            little=little,
            patient_pseudonym=self.pseudonyms.patient_id(key, self.patient_id_prefix),
            shift_days=shift,
            banned=identity_terms(terms),
            report=report,
        )

    def identity_values(self, ds: Dataset) -> tuple[str, ...]:
        """The values of the identity attributes (names, IDs, institution...) as received:
        PHI, for stages that look for it elsewhere (burned-in text). Never log them."""
        elements = _elements(ds)
        charset = elements.get(SPECIFIC_CHARACTER_SET)
        encodings = convert_encodings(_text_values(charset) if charset is not None else None)
        return tuple(self._identity(elements, encodings))

    def _identity(self, elements: dict[int, Any], encodings: list[str]) -> list[str]:
        terms: list[str] = []
        for tag in self.profile.identity:
            elem = elements.get(tag)
            if elem is not None and not _is_sequence(elem):
                terms.extend(_text_values(elem, encodings))
        return terms

    # -- the walk --------------------------------------------------------------------------

    def _walk(self, ds: Dataset, state: _Instance, mode: Mode, *, trusted: bool) -> None:
        elements = _elements(ds)
        profile = self.profile
        public = profile.public
        normal = mode is Mode.NORMAL
        keep_codes = not normal and _standard_code_item(elements)
        private: list[int] = []
        for tag in list(elements):
            group = tag >> 16
            if group & 1:
                private.append(tag)
                continue
            if not tag & 0xFFFF or group in (0x0002, 0x0000, 0x0004, 0xFFFE):
                # Group lengths are stale once anything changes; command, meta and directory
                # elements have no place in a dataset.
                del elements[tag]
                state.report.removed += 1
                continue
            elem = elements[tag]
            rule = public.get(tag)
            if normal and rule is not None and rule.action is Action.KEEP:
                # The common case, kept short: most of a header is kept as it is.
                vr = elem.VR
                if vr == "SQ" or (vr in (None, "UN") and tag in _SQ_TAGS):
                    self._recurse(ds, tag, state, mode, trusted=trusted)
                continue
            base = group & 0xFF00
            if base in (0x5000, 0x6000) and self._whole_group_removed(base):
                del elements[tag]
                state.report.removed += 1
                continue
            if rule is None:
                rule = profile.lookup(tag)
            if rule is None:
                if not dictionary_has_tag(tag):
                    del elements[tag]  # neither in the table nor in the dictionary
                    state.report.removed += 1
                    continue
                rule = profile.unlisted_by_vr.get(vr_of(elem)) or _KEEP_DICTIONARY
            action = rule.action
            if mode is not Mode.NORMAL and rule.source in _UNLISTED_SOURCES:
                action = self._mode_action(tag, elem, mode, keep_codes)
            if action is Action.KEEP:
                if _is_sequence(elem):
                    self._recurse(ds, tag, state, mode, trusted=trusted)
                continue
            state.report.actions[action.value] = state.report.actions.get(action.value, 0) + 1
            self._appliers[action](ds, tag, elem, rule, state, mode)
        if private:
            self._private(ds, private, state, mode, trusted=trusted)

    def _whole_group_removed(self, base: int) -> bool:
        """Overlays (60xx) go as a whole when Overlay Data goes, curves (50xx) likewise.

        Removing only Overlay Data (Type 1 in the Overlay Plane Module) would leave an
        invalid overlay; a bitmap cannot be cleaned with certainty, so C removes it too.
        """
        key = (base, 0x3000) if base == 0x6000 else (base, -1)
        rule = self.profile.repeating.get(key)
        return rule is not None and rule.action is not Action.KEEP

    def _mode_action(
        self, tag: int, elem: DataElement | RawDataElement, mode: Mode, code_item: bool
    ) -> Action:
        """Inside a D or C sequence, unlisted values are dummied or cleaned by VR."""
        if tag in self.profile.keep_unlisted or (code_item and tag in _CODE_ELEMENTS):
            return Action.KEEP
        vr = vr_of(elem)
        if vr in ("UI", "SQ"):
            rule = self.profile.unlisted_by_vr.get(vr)
            return rule.action if rule else Action.KEEP
        if vr in FREE_TEXT_VRS:
            return Action.DUMMY if mode is Mode.DUMMY else Action.CLEAN
        if vr == "PN":
            return Action.DUMMY
        if vr in ("DA", "DT"):
            return Action.DATE
        return Action.KEEP

    def _recurse(
        self, ds: Dataset, tag: int, state: _Instance, mode: Mode, *, trusted: bool
    ) -> None:
        elem = ds[tag]  # decodes the sequence; its items' elements stay raw
        if elem.VR != "SQ":
            return
        for item in elem.value:
            self._walk(item, state, mode, trusted=trusted)

    # -- private attributes ----------------------------------------------------------------

    def _private(
        self, ds: Dataset, tags: list[int], state: _Instance, mode: Mode, *, trusted: bool
    ) -> None:
        elements = _elements(ds)
        creators: dict[tuple[int, int], str] = {}
        for tag in tags:
            if 0x0010 <= tag & 0xFFFF <= 0x00FF:
                values = _text_values(elements[tag], state.encodings)
                creators[(tag >> 16, tag & 0xFF)] = values[0] if values else ""
        kept_blocks: set[tuple[int, int]] = set()
        for tag in tags:
            group, element = tag >> 16, tag & 0xFFFF
            if 0x0010 <= element <= 0x00FF:
                continue
            block = (group, element >> 8)
            creator = creators.get(block) if element > 0x00FF else None
            rule = None
            if creator is not None:
                rule = self.profile.private.get((group, creator, element & 0xFF))
                if rule is None and trusted:
                    rule = _KEEP_TRUSTED
            if rule is None or rule.action is Action.REMOVE:
                del elements[tag]
                state.report.private_removed += 1
                continue
            elem = elements[tag]
            if rule.action is Action.KEEP:
                if _is_sequence(elem) and elem.VR != "UN":
                    self._recurse(ds, tag, state, mode, trusted=True)
            elif rule.action is Action.UID and self._retain_uids:
                pass
            else:
                self._appliers[rule.action](ds, tag, elem, rule, state, mode)
            if tag in elements:
                kept_blocks.add(block)
                state.report.private_kept += 1
        for (group, low), _creator in creators.items():
            if (group, low) not in kept_blocks:
                del elements[(group << 16) | low]

    # -- actions ---------------------------------------------------------------------------

    def _put(self, ds: Dataset, tag: int, vr: str, value: bytes, state: _Instance) -> None:
        _elements(ds)[tag] = raw(tag, vr, value, implicit=state.implicit, little=state.little)
        state.report.replaced += 1

    def _remove(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        del _elements(ds)[tag]
        state.report.removed += 1

    def _empty(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        vr = vr_of(elem)
        if vr == "SQ":
            _elements(ds)[tag] = DataElement(tag, "SQ", Sequence())
            state.report.replaced += 1
        else:
            self._put(ds, tag, vr, b"", state)

    def _dummy(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        vr = vr_of(elem)
        if vr == "SQ":
            self._recurse(ds, tag, state, Mode.DUMMY, trusted=False)
        elif vr == "UI":
            self._uid(ds, tag, elem, rule, state, mode)
        else:
            self._put(ds, tag, vr, DUMMY_BY_VR.get(vr, b""), state)

    def _clean(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        vr = vr_of(elem)
        if vr == "SQ":
            self._recurse(ds, tag, state, Mode.CLEAN, trusted=False)
        elif vr in ("DA", "DT", "TM"):
            self._date(ds, tag, elem, rule, state, mode)
        elif vr == "UI":
            self._uid(ds, tag, elem, rule, state, mode)
        elif vr in ("PN", "AE"):
            self._put(ds, tag, vr, DUMMY_BY_VR[vr], state)
        elif vr in FREE_TEXT_VRS:
            values = _text_values(elem, state.encodings)
            cleaned = [self.cleaner.clean(v, state.banned) for v in values]
            text = "\\".join(cleaned) if vr in ("LO", "SH", "UC") else "".join(cleaned)
            if values and not text.strip("\\ "):
                # Nothing known-safe was left; a dummy keeps a Type 1 attribute valid.
                self._put(ds, tag, vr, DUMMY_BY_VR[vr], state)
                return
            self._put(ds, tag, vr, pad(encode_string(text, state.encodings), vr), state)
        elif vr in ("CS", "AS", "DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "AT"):
            return  # codes and numbers carry no identity
        else:
            self._remove(ds, tag, elem, rule, state, mode)

    def _uid(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        vr = vr_of(elem)
        if vr == "SQ":
            self._recurse(ds, tag, state, mode, trusted=False)
            return
        if vr not in ("UI", "UN"):
            self._dummy(ds, tag, elem, rule, state, mode)
            return
        if self._retain_uids and rule.source.startswith("local"):
            return
        values = split_values(_raw_bytes(elem))
        if not values and rule.action is Action.DUMMY:
            values = [f"dummy:{tag:08X}:{state.patient_pseudonym}"]
        mapped = [self._map_uid(v) for v in values]
        self._put(ds, tag, "UI", join_values(mapped, "UI"), state)

    def _map_uid(self, uid: str) -> str:
        if not uid or uid.startswith(DICOM_ROOT):
            return uid
        return self.pseudonyms.uid(uid)

    def _date(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        vr = vr_of(elem)
        date_mode = self.profile.date_mode
        if date_mode is DateMode.UNMODIFIED or vr == "TM":
            return  # whole-day shifts leave times of day as they are
        if date_mode is DateMode.REMOVED:
            self._remove(ds, tag, elem, rule, state, mode)
            return
        values = split_values(_raw_bytes(elem))
        shift = shift_date if vr == "DA" else shift_datetime
        try:
            shifted = [shift(v, state.shift_days) if v else v for v in values]
        except ValueError:
            # A malformed date cannot be shifted with certainty; a dummy leaks nothing.
            self._put(ds, tag, vr, DUMMY_BY_VR.get(vr, b""), state)
            return
        self._put(ds, tag, vr, join_values(shifted, vr), state)

    def _set(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        vr = vr_of(elem)
        template = (
            self.patient_name if tag == PATIENT_NAME and rule.source == "local" else rule.value
        )
        text = (template or "").replace("{patient_id}", state.patient_pseudonym)
        if vr == "SQ":
            raise ScrubError(
                "action 'set' cannot give a value to a sequence; use keep, remove or empty"
            )
        self._put(ds, tag, vr, pad(encode_string(text, state.encodings), vr), state)

    def _hash(
        self, ds: Dataset, tag: int, elem: Any, rule: Rule, state: _Instance, mode: Mode
    ) -> None:
        vr = vr_of(elem)
        if vr in ("UI", "SQ"):
            self._uid(ds, tag, elem, rule, state, mode)
            return
        values = _text_values(elem, state.encodings)
        if tag == PATIENT_ID and rule.source == "local":
            out = [
                self.pseudonyms.patient_id(v, self.patient_id_prefix)
                if v
                else state.patient_pseudonym
                for v in values
            ] or [state.patient_pseudonym]
        else:
            label = f"{tag:08X}"
            length = min(16, MAX_LENGTH.get(vr, 64) - len(rule.prefix))
            out = [
                rule.prefix + self.pseudonyms.code(v, label=label, length=length) for v in values
            ]
        self._put(ds, tag, vr, pad("\\".join(out).encode("ascii"), vr), state)

    # -- provenance ------------------------------------------------------------------------

    def _stamp(self, ds: Dataset, state: _Instance) -> None:
        """PatientIdentityRemoved, DeidentificationMethod (+ code sequence), dates flag.

        The elements are the same for every instance of a profile, so they are encoded once
        per profile and encoding; only a dataset that already carries a method (it was
        de-identified before) gets the existing values merged with ours.
        """
        elements = _elements(ds)
        prior = DEIDENTIFICATION_METHOD in elements or DEIDENTIFICATION_CODES in elements
        if prior:
            existing = [str(v) for v in _as_list(ds.get("DeidentificationMethod"))]
            seq = ds.get("DeidentificationMethodCodeSequence")
            items = list(seq) if seq is not None else []
        else:
            existing, items = [], []
        provenance = self._provenance(state.implicit, state.little, tuple(existing), tuple(items))
        for tag, elem in provenance.items():
            elements[tag] = elem

    def _provenance(
        self, implicit: bool, little: bool, existing: tuple[str, ...], items: tuple[Dataset, ...]
    ) -> dict[int, RawDataElement | DataElement]:
        key = (implicit, little, existing, len(items))
        cached = self._provenance_cache.get(key) if not items else None
        if cached is not None:
            return cached
        methods = [f"dicomnode {__version__}", *self.profile.methods]
        values = [m[:64] for m in dict.fromkeys(existing + tuple(methods))]
        present = {str(item.get("CodeValue", "")) for item in items}
        out_items = list(items)
        for code, meaning in self.profile.codes:
            if code not in present:
                item = Dataset()
                item.CodeValue = code
                item.CodingSchemeDesignator = "DCM"
                item.CodeMeaning = meaning[:64]
                out_items.append(item)
        flags = {"implicit": implicit, "little": little}
        result: dict[int, RawDataElement | DataElement] = {
            PATIENT_IDENTITY_REMOVED: raw(PATIENT_IDENTITY_REMOVED, "CS", b"YES ", **flags),
            DEIDENTIFICATION_METHOD: raw(
                DEIDENTIFICATION_METHOD, "LO", join_text(values, "LO"), **flags
            ),
            DEIDENTIFICATION_CODES: raw(
                DEIDENTIFICATION_CODES, "SQ", encode_items(out_items, implicit, little), **flags
            ),
            TEMPORAL_MODIFIED: raw(
                TEMPORAL_MODIFIED, "CS", pad(self.profile.date_mode.value.encode(), "CS"), **flags
            ),
        }
        if not items:
            self._provenance_cache[key] = result
        return result


_KEEP_DICTIONARY = Rule(Action.KEEP, "dictionary")
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
_UNLISTED_SOURCES = frozenset(
    {"dictionary"} | {f"local: unlisted {vr}" for vr in ("PN", "DA", "DT", "LT", "ST", "UT", "UI")}
)
_KEEP_TRUSTED = Rule(Action.KEEP, "safe private sequence")


def _elements(ds: Dataset) -> dict[int, Any]:
    """The dataset's element map, keyed by plain ints (pydicom's BaseTag is an int)."""
    return cast(dict[int, Any], ds._dict)


def _is_sequence(elem: DataElement | RawDataElement) -> bool:
    return vr_of(elem) == "SQ"


def _raw_bytes(elem: DataElement | RawDataElement) -> bytes:
    if isinstance(elem, RawDataElement):
        return elem.value or b""
    return "\\".join(_text_values(elem)).encode("ascii", "replace")


def _text_values(
    elem: DataElement | RawDataElement | None, encodings: list[str] | None = None
) -> list[str]:
    """Decode a text element's values (raw or not) with the dataset's character sets."""
    if elem is None:
        return []
    if isinstance(elem, RawDataElement):
        data = elem.value or b""
        if not data:
            return []
        text = decode_bytes(
            data, encodings or ["iso8859"], {0x5C} if vr_of(elem) != "LT" else set()
        )
        return (
            [v.strip(" \x00") for v in text.split("\\")]
            if vr_of(elem) not in ("LT", "ST", "UT")
            else [text.rstrip(" \x00")]
        )
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [str(value)]
    return [str(v) for v in value]


def _first_text(elem: DataElement | RawDataElement | None, encodings: list[str]) -> str:
    values = _text_values(elem, encodings)
    return values[0] if values else ""


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _standard_code_item(elements: dict[int, Any]) -> bool:
    scheme = _first_text(elements.get(CODING_SCHEME_DESIGNATOR), ["iso8859"])
    return scheme in STANDARD_SCHEMES
