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

Nothing a sender declares is trusted: a public element is handled by the VR of the DICOM
dictionary, not the one it arrived with; a UID is kept only when it is a registered DICOM UID
(or, under Retain UIDs, at least a well-formed one); a private element is kept only when PS3.15
lists it as safe for its creator, at its own VR, whatever sequence it sits in. The identifying
values of an instance are gathered during the walk, at every depth and before anything is
removed, so that free text cleaned afterwards loses every mention of them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.datadict import (  # type: ignore[attr-defined]
    DicomDictionary,
    dictionary_has_tag,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_sequence
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from dicomnode import __version__
from dicomnode.dicomio import READ_ERRORS, encode_items, raw, vr_of
from dicomnode.errors import (
    InstanceError,
    ScrubError,
    UnreadableInstanceError,
    UnsupportedInstanceError,
)
from dicomnode.scrub import iod
from dicomnode.scrub.actions import Action, DateMode, Option
from dicomnode.scrub.freetext import Identity, Kind, TextCleaner
from dicomnode.scrub.profile import Profile, Rule
from dicomnode.scrub.pseudonym import Pseudonymizer
from dicomnode.scrub.timeshift import (
    DATE_TIME_PAIRS,
    Shift,
    shift_da,
    shift_dt,
    shift_pair,
    shift_tm,
)
from dicomnode.scrub.values import (
    DUMMY_BY_VR,
    FREE_TEXT_VRS,
    MAX_LENGTH,
    TEXT_VRS,
    join_text,
    join_values,
    pad,
    split_values,
)

if TYPE_CHECKING:
    from dicomnode.crosswalk import CrosswalkWriter
    from dicomnode.scrub.lookup import LookupTable

log = logging.getLogger(__name__)

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
ISSUER_OF_PATIENT_ID = 0x00100021
ACCESSION_NUMBER = 0x00080050
SOP_CLASS_UID = 0x00080016
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
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_CODES = 0x00120064
TEMPORAL_MODIFIED = 0x00280303
PIXEL_REPRESENTATION = 0x00280103

# UIDs DICOM itself defines (SOP classes, transfer syntaxes, coding schemes, well-known
# instances): the only UIDs kept as they are, whatever they look like.
REGISTERED_UIDS = frozenset(UID_dictionary)
_UID_FORM = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_AGE = re.compile(r"^(\d{3})([DWMY])$")
# The smallest age, per unit, that PS3.15 and HIPAA say must not be given exactly (90 years).
_AGE_LIMIT = {"Y": 90, "M": 1080, "W": 4693, "D": 32873}
# Sequences nest a few levels in images and 10-20 in deep SR trees; beyond the configured
# depth (scrub.max_depth) an instance is refused.
MAX_DEPTH = 64
_BINARY_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "SV": 8, "UV": 8}
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_NUMBER_VRS = frozenset({"DS", "IS"})


def well_formed_uid(value: str) -> bool:
    """A UID by PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters."""
    return len(value) <= 64 and _UID_FORM.match(value) is not None


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
    time_shift_seconds: int | None = None
    vr_corrected: int = 0
    invalid_emptied: int = 0
    text_cleaned: int = 0
    actions: dict[str, int] = field(default_factory=dict)


@dataclass
class _Text:
    """A value to clean once every identifying value of the instance is known."""

    ds: Dataset
    tag: int
    vr: str
    keep_unknown: bool  # a safe private text: only identifiers go, other words stay
    # a kept value: cleaned (as keep_unknown) only when it mentions the instance's identity
    mentions_only: bool = False


@dataclass
class _Instance:
    """Per-instance state: decided once from the original header, used at every depth."""

    encodings: list[str]
    implicit: bool
    little: bool
    sop_class: str
    knows_iod: bool
    patient_id: str  # as received: PHI, in memory only
    patient_pseudonym: str
    shift: Shift | None
    report: ScrubReport
    identity: Identity = field(default_factory=Identity)
    texts: list[_Text] = field(default_factory=list)
    # Items still to walk: (item, the mode of its sequence, the path of sequence tags).
    items: list[tuple[Dataset, Mode, tuple[int, ...]]] = field(default_factory=list)
    # Sequences removed unread: their identifying values are read only when text is cleaned.
    unread: list[RawDataElement | DataElement] = field(default_factory=list)


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
        lookup: LookupTable | None = None,
        unmapped: str = "quarantine",
        crosswalk: CrosswalkWriter | None = None,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.profile = profile
        self.pseudonyms = pseudonymizer
        self.patient_id_prefix = patient_id_prefix
        self.patient_name = patient_name
        self.cleaner = cleaner or TextCleaner.default(extra=profile.clean_words)
        self.lookup = lookup
        self.unmapped = unmapped
        self.crosswalk = crosswalk
        self.max_depth = max_depth
        self._codes: dict[bytes, bool] = {}
        self._retain_uids = Option.RETAIN_UIDS in profile.options
        self._identity_kinds = {tag: Kind(kind) for tag, kind in profile.identity.items()}
        # One lookup per element: its rule, its dictionary VR and what identity it holds.
        self._table: dict[int, tuple[Rule, str | None, Kind | None]] = {
            tag: (rule, _DICTIONARY_VR.get(tag), self._identity_kinds.get(tag))
            for tag, rule in profile.public.items()
        }
        # Kept text checked for mentions of the instance's identity: not the identifying
        # attributes themselves (an option keeps them on purpose), nor what a site rule keeps.
        self._site_kept = frozenset(
            tag
            for tag, rule in profile.public.items()
            if rule.action is Action.KEEP and rule.source.startswith("site ")
        )
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
            state, originals = self._start(ds)
            # Items are walked from a stack, not by recursion: depth costs no Python frames.
            state.items.append((ds, Mode.NORMAL, ()))
            while state.items:
                self._walk(*state.items.pop(), state)
            self._clean_texts(state)
            self._stamp(ds, state)
            if self.crosswalk is not None:
                self._record(ds, originals)
        except InstanceError:
            raise
        except Exception as exc:
            raise ScrubError(
                f"the profile could not be applied ({type(exc).__name__}); the instance is "
                "quarantined untouched"
            ) from exc
        return state.report

    def _start(self, ds: Dataset) -> tuple[_Instance, dict[str, str]]:
        elements = _elements(ds)
        charset = elements.get(SPECIFIC_CHARACTER_SET)
        encodings = convert_encodings(_text_values(charset) if charset is not None else None)
        first = next((e for e in elements.values() if isinstance(e, RawDataElement)), None)
        implicit = bool(first is not None and first.is_implicit_VR)
        little = first is None or bool(first.is_little_endian)
        sop_class = _first_text(elements.get(SOP_CLASS_UID), encodings)
        if sop_class not in REGISTERED_UIDS:
            raise UnsupportedInstanceError(
                "the SOP Class UID is not a DICOM-registered class (a private or malformed "
                "class cannot be de-identified with certainty); ask the sender for a standard "
                "object, or clean it by hand",
                reason="unknown-sop-class",
            )
        patient_id = _first_text(elements.get(PATIENT_ID), encodings)
        if patient_id:
            key = patient_id
        else:
            # No Patient ID: group by study rather than merge every unknown patient into one.
            key = "study:" + (_first_text(elements.get(STUDY_INSTANCE_UID), encodings) or "")
        report = ScrubReport()
        shift = None
        if self.profile.date_mode is DateMode.MODIFIED:
            shift = self.pseudonyms.shift(key)
            report.date_shift_days = shift.days
            report.time_shift_seconds = shift.seconds
        pseudonym = self._patient_pseudonym(patient_id, key, elements, encodings)
        originals = {}
        if self.crosswalk is not None:
            originals = {
                "PatientID": patient_id,
                "AccessionNumber": _first_text(elements.get(ACCESSION_NUMBER), encodings),
                "StudyInstanceUID": _first_text(elements.get(STUDY_INSTANCE_UID), encodings),
            }
        state = _Instance(
            encodings=encodings,
            implicit=implicit,
            little=little,
            sop_class=sop_class,
            knows_iod=iod.knows(sop_class),
            patient_id=patient_id,
            patient_pseudonym=pseudonym,
            shift=shift,
            report=report,
        )
        return state, originals

    def _patient_pseudonym(
        self, patient_id: str, key: str, elements: dict[int, Any], encodings: list[str]
    ) -> str:
        """The study's own subject ID from the lookup table, or the keyed pseudonym."""
        if self.lookup is not None:
            issuer = _first_text(elements.get(ISSUER_OF_PATIENT_ID), encodings) or None
            subject = self.lookup.subject_id(patient_id, issuer) if patient_id else None
            if subject is not None:
                return subject
            if self.unmapped == "quarantine":
                raise ScrubError(
                    "the patient is not in the lookup table; add the patient to the table "
                    "(then SIGHUP the node and 'dicomnode retry --quarantine unmapped-patient'),"
                    " or set scrub.lookup.unmapped: pseudonym",
                    reason="unmapped-patient",
                )
        return self.pseudonyms.patient_id(key, self.patient_id_prefix)

    def identity_values(self, ds: Dataset) -> tuple[str, ...]:
        """The values of the identity attributes (names, IDs, institution...) as received:
        PHI, for stages that look for it elsewhere (burned-in text). Never log them."""
        elements = _elements(ds)
        charset = elements.get(SPECIFIC_CHARACTER_SET)
        encodings = convert_encodings(_text_values(charset) if charset is not None else None)
        terms: list[str] = []
        for tag in self.profile.identity:
            elem = elements.get(tag)
            if elem is not None and not _is_sequence(elem):
                terms.extend(_text_values(elem, encodings))
        return tuple(terms)

    # -- the walk --------------------------------------------------------------------------

    def _walk(self, ds: Dataset, mode: Mode, path: tuple[int, ...], state: _Instance) -> None:
        elements = _elements(ds)
        profile = self.profile
        table = self._table
        normal = mode is Mode.NORMAL
        keep_codes = not normal and _standard_code_item(elements)
        private: list[int] = []
        times: list[tuple[int, str]] = []
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
            if group == 0x7FE0 and path:
                # Pixel data belongs at the top of an instance (the Icon Image Sequence's
                # aside, removed whole): in an item, it is an image the pixel stage never
                # looks at, and it went out as it came (a name in a referenced image's item).
                del elements[tag]
                state.report.removed += 1
                continue
            elem = elements[tag]
            entry = table.get(tag)
            if entry is None:
                rule, expected, kind = None, _DICTIONARY_VR.get(tag), None
            else:
                rule, expected, kind = entry
            declared = elem.VR
            if declared is not None and declared != expected:
                elem = self._trust_vr(ds, tag, elem, expected, state)
            if normal and rule is not None and rule.action is Action.KEEP:
                # The common case, kept short: most of a header is kept as it is.
                if expected in _CHECKED_VRS or (expected is None and declared == "SQ"):
                    self._keep(ds, tag, elem, state, mode, path)
                elif expected in _GRAMMAR and type(elem) is RawDataElement:
                    value = elem.value
                    if value and not _GRAMMAR[expected].match(value):
                        self._invalid(ds, tag, expected, state)
                elif (
                    expected in _SHAPED_VRS
                    and type(elem) is RawDataElement
                    and elem.value
                    and _not_its_vr(tag, expected, elem.value)
                ):
                    self._invalid(ds, tag, expected, state)
                elif expected in FREE_TEXT_VRS and kind is None and tag not in self._site_kept:
                    state.texts.append(_Text(ds, tag, expected, True, mentions_only=True))
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
            vr = expected or vr_of(elem)
            if kind is not None or vr == "PN":
                self._gather(elem, kind or Kind.NAME, state)
            action = rule.action
            if not normal and rule.source in _UNLISTED_SOURCES:
                action = self._mode_action(tag, vr, mode, keep_codes)
            if rule.code is not None:
                action = self._by_iod(rule.code, action, (*path, tag), state)
            if (
                tag == ACCESSION_NUMBER
                and self.lookup is not None
                and self._research_accession(ds, elem, state)
            ):
                continue
            if action is Action.KEEP:
                self._keep(ds, tag, elem, state, mode, path)
                continue
            state.report.actions[action.value] = state.report.actions.get(action.value, 0) + 1
            if vr in _DATE_VRS and (action is Action.DATE or action is Action.CLEAN):
                self._date_or_time(ds, tag, elem, vr, times, state, path)
                continue
            self._appliers[action](ds, tag, elem, rule, state, mode, (*path, tag))
        if times:
            self._shift_times(ds, times, state)
        if private:
            self._private(ds, private, state, mode, path, times)

    def _trust_vr(
        self, ds: Dataset, tag: int, elem: Any, expected: str | None, state: _Instance
    ) -> Any:
        """Make an element carry its dictionary VR, or refuse the instance.

        The action and the cleaning of an attribute follow from its VR; a sender that
        declares StudyDescription as DS must not get it kept as "a number", nor Rows as LO.
        """
        if not isinstance(elem, RawDataElement):
            return elem  # decoded by pydicom, which already resolved the VR
        declared = elem.VR
        allowed = _AMBIGUOUS.get(tag)
        if expected is None:
            if allowed is None or declared in allowed or declared == "UN":
                return elem  # not in the dictionary (removed anyway), or one of its VRs
        elif expected == "SQ" and declared == "UN":
            return elem  # pydicom reads an SQ sent as UN as a sequence
        elif (expected in TEXT_VRS and declared != "SQ") or declared == "UN":
            # Text is text whatever the sender called it: clean it as what it is.
            fixed = raw(
                tag, expected, elem.value or b"", implicit=state.implicit, little=state.little
            )
            _elements(ds)[tag] = fixed
            state.report.vr_corrected += 1
            return fixed
        elif expected != "SQ" and declared in _BINARY_VRS:
            return elem  # two binary encodings: nothing to read as text either way
        raise ScrubError(
            f"element {_tag_text(tag)} arrived as {declared}, but the DICOM dictionary says "
            f"{expected or (allowed or ('?',))[-1]}; such a value cannot be cleaned with "
            "certainty. Ask the sender to fix the VR",
            reason="vr-mismatch",
        )

    def _keep(
        self, ds: Dataset, tag: int, elem: Any, state: _Instance, mode: Mode, path: tuple[int, ...]
    ) -> None:
        """Keep, with the checks a kept value still needs: sequences are walked, UIDs must
        be registered (or well formed under Retain UIDs), ages over 89 are given as 90, a
        code must not be one of the instance's names or IDs, and a value that is not what its
        VR says ("Smith" as an Instance Number, text with control characters, a binary value
        of the wrong length: :func:`_not_its_vr`) is emptied: it is not the attribute it
        claims to be, and it may be anything."""
        vr = _DICTIONARY_VR.get(tag) or vr_of(elem)
        if isinstance(elem, RawDataElement) and elem.value and _not_its_vr(tag, vr, elem.value):
            self._invalid(ds, tag, vr, state)
            return
        if vr in _GRAMMAR and (isinstance(elem, RawDataElement) or vr in _STRING_GRAMMARS):
            value = elem.value if isinstance(elem, RawDataElement) else _raw_bytes(elem)
            if value and not _GRAMMAR[vr].match(value):
                self._invalid(ds, tag, vr, state)
                return
            if vr == "CS" and value and not self._code_of_words(value):
                state.texts.append(_Text(ds, tag, vr, keep_unknown=True))
        elif vr in FREE_TEXT_VRS and tag not in self._identity_kinds and tag not in self._site_kept:
            # Kept text that names the patient (a Frame Label holding the family name): the
            # mention goes, the rest stays (see _clean_texts). A site rule's keep is the
            # site's decision.
            state.texts.append(_Text(ds, tag, vr, keep_unknown=True, mentions_only=True))
        if vr == "SQ" or (vr == "UN" and tag in _SQ_TAGS):
            self._recurse(ds, tag, state, mode, (*path, tag))
        elif vr == "UI":
            values = split_values(_raw_bytes(elem))
            checked = [v if self._keeps_uid(v) else self._map_uid(v) for v in values]
            if checked != values:
                self._put(ds, tag, "UI", join_values(checked, "UI"), state)
        elif vr == "AS":
            values = split_values(_raw_bytes(elem))
            capped = [_cap_age(v) for v in values]
            if capped != values:
                self._put(ds, tag, "AS", join_values(capped, "AS"), state)

    def _code_of_words(self, value: bytes) -> bool:
        """Whether a CS value is made of known words ("ORIGINAL\\PRIMARY", "HFS"): such a code
        is no name. Cached: a series repeats its codes."""
        known = self._codes.get(value)
        if known is None:
            if len(self._codes) >= 4096:
                self._codes.clear()
            text = value.decode("ascii", "replace").replace("\\", " ")
            known = self._codes[value] = self.cleaner.all_known(text)
        return known

    def _invalid(self, ds: Dataset, tag: int, vr: str, state: _Instance) -> None:
        """A kept value that is not what its VR says is emptied, unless it describes the
        pixel data (Rows, NumberOfFrames...): then nothing can say what the pixels are."""
        if tag >> 16 == 0x0028:
            raise ScrubError(
                f"{_keyword(tag)} {_tag_text(tag)} is not a valid {vr} value, so the pixel "
                "data cannot be read with certainty; ask the sender to fix the image header",
                reason="pixel-decode-failed",
            )
        self._put(ds, tag, vr, b"", state)
        state.report.invalid_emptied += 1

    def _whole_group_removed(self, base: int) -> bool:
        """Overlays (60xx) go as a whole when Overlay Data goes, curves (50xx) likewise.

        Removing only Overlay Data (Type 1 in the Overlay Plane Module) would leave an
        invalid overlay; a bitmap cannot be cleaned with certainty, so C removes it too.
        """
        key = (base, 0x3000) if base == 0x6000 else (base, -1)
        rule = self.profile.repeating.get(key)
        return rule is not None and rule.action is not Action.KEEP

    def _mode_action(self, tag: int, vr: str, mode: Mode, code_item: bool) -> Action:
        """Inside a D or C sequence, unlisted values are dummied or cleaned by VR."""
        if tag in self.profile.keep_unlisted or (code_item and tag in _CODE_ELEMENTS):
            return Action.KEEP
        if vr in ("UI", "SQ"):
            rule = self.profile.unlisted_by_vr.get(vr)
            return rule.action if rule else Action.KEEP
        if vr in FREE_TEXT_VRS:
            return Action.DUMMY if mode is Mode.DUMMY else Action.CLEAN
        if vr == "PN":
            return Action.DUMMY
        if vr in _DATE_VRS:
            return Action.DATE
        return Action.KEEP

    def _by_iod(self, code: str, action: Action, path: tuple[int, ...], state: _Instance) -> Action:
        """A combined code (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) by the attribute's Type in the IOD.

        Type 3, or not in the IOD at that place at all, is removed where X is allowed; Type 1
        (and 1C, which may be required here) gets a dummy where D is allowed; Type 2 (and 2C)
        is emptied. X/Z/U* keeps its references with new UIDs at every Type (actions.py).
        Without IOD facts (a class the tables do not know) the compiled action stands.
        """
        if code.endswith(("U*", "/U")):
            return Action.UID  # references, their UIDs replaced (see actions.py)
        kind = iod.attribute_type(state.sop_class, path)
        removable = "X" in code
        if kind is None:
            return Action.REMOVE if state.knows_iod and removable else action
        if kind is iod.AttributeType.TYPE3 and removable:
            return Action.REMOVE
        if kind in _REQUIRED_VALUE and "D" in code:
            return Action.DUMMY
        if "Z" in code:
            return Action.EMPTY
        return action

    def _type_of(self, state: _Instance, path: tuple[int, ...]) -> iod.AttributeType | None:
        return iod.attribute_type(state.sop_class, path)

    def _recurse(
        self, ds: Dataset, tag: int, state: _Instance, mode: Mode, path: tuple[int, ...]
    ) -> None:
        """Queue the items of a sequence for the walk (see :meth:`scrub`)."""
        if len(path) > self.max_depth:
            raise ScrubError(
                f"sequences are nested more than {self.max_depth} deep (scrub.max_depth); "
                "no real object needs that, and it cannot be cleaned with certainty",
                reason="too-deep",
            )
        self._pixel_representation_first(ds, state)
        try:
            elem = ds[tag]  # decodes the sequence; its items' elements stay raw
        except READ_ERRORS as exc:
            raise UnreadableInstanceError(
                f"the items of {_keyword(tag)} {_tag_text(tag)} cannot be read "
                f"({type(exc).__name__}): the sequence is malformed or cut short; resend the "
                "instance from the source"
            ) from None
        if elem.VR != "SQ":
            return
        state.items.extend((item, mode, path) for item in reversed(elem.value))

    def _pixel_representation_first(self, ds: Dataset, state: _Instance) -> None:
        """Check Pixel Representation before a sequence of its data set is decoded.

        pydicom reads it then, in place, to resolve US or SS in the items: a value declared
        with a VR that does not exist failed there with pydicom's error, and one declared as
        text was decoded before :meth:`_trust_vr` saw it and kept (found by the mutation
        campaign). So it gets the checks its own turn in the walk gives it, first.
        """
        elem = _elements(ds).get(PIXEL_REPRESENTATION)
        if not isinstance(elem, RawDataElement):
            return
        if elem.VR is not None and elem.VR != "US":
            elem = self._trust_vr(ds, PIXEL_REPRESENTATION, elem, "US", state)
        if elem.value and _not_its_vr(PIXEL_REPRESENTATION, "US", elem.value):
            self._invalid(ds, PIXEL_REPRESENTATION, "US", state)

    # -- identity --------------------------------------------------------------------------

    def _gather(self, elem: Any, kind: Kind, state: _Instance) -> None:
        """Remember an identifying value (for cleaning text later), before it is replaced."""
        if _is_sequence(elem):
            state.unread.append(elem)
            return
        for value in _text_values(elem, state.encodings):
            if value:
                state.identity.add(kind, value)

    def _gather_unread(self, state: _Instance) -> None:
        """Read the identifying values of sequences that were removed without a walk."""
        pending = state.unread
        state.unread = []
        for elem in pending:
            try:
                items = _items_of(elem, state)
            except Exception:
                continue  # unparseable: removed anyway, and nothing could be read from it
            stack = [(item, 1) for item in items]
            while stack:
                item, depth = stack.pop()
                for inner in self._gather_item(item, state):
                    if depth < self.max_depth:
                        stack.append((inner, depth + 1))

    def _gather_item(self, ds: Dataset, state: _Instance) -> list[Dataset]:
        """Read one item's identifying values; returns the items of its sequences."""
        nested: list[Dataset] = []
        for tag, elem in list(_elements(ds).items()):
            vr = elem.VR if tag >> 16 & 1 else (_DICTIONARY_VR.get(tag) or vr_of(elem))
            kind = self._identity_kinds.get(tag)
            if vr == "SQ" or (vr in (None, "UN") and tag in _SQ_TAGS):
                with contextlib.suppress(Exception):  # unreadable: nothing to learn from it
                    nested += _items_of(elem, state)
            elif kind is not None or vr == "PN":
                for value in _text_values(elem, state.encodings):
                    if value:
                        state.identity.add(kind or Kind.NAME, value)
        return nested

    # -- private attributes ----------------------------------------------------------------

    def _private(
        self,
        ds: Dataset,
        tags: list[int],
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
        times: list[tuple[int, str]],
    ) -> None:
        """Private elements: kept only where a rule keeps them for their creator (the safe
        table, or the site), at any depth; everything else goes, its names remembered."""
        elements = _elements(ds)
        creators: dict[tuple[int, int], str] = {}
        for tag in tags:
            if 0x0010 <= tag & 0xFFFF <= 0x00FF:
                values = _text_values(elements[tag], state.encodings)
                creators[(tag >> 16, tag & 0xFF)] = values[0] if values else ""
        kept_blocks: set[tuple[int, int]] = set()
        private_times: list[tuple[int, str]] = []
        for tag in tags:
            group, element = tag >> 16, tag & 0xFFFF
            if 0x0010 <= element <= 0x00FF:
                continue
            block = (group, element >> 8)
            creator = creators.get(block) if element > 0x00FF else None
            rule = None
            if creator is not None:
                rule = self.profile.private.get((group, creator, element & 0xFF))
            elem = elements[tag]
            if rule is None or rule.action is Action.REMOVE:
                declared = elem.VR
                if declared == "PN" or declared == "SQ" or declared in (None, "UN"):
                    self._forget_private(elem, state)
                del elements[tag]
                state.report.private_removed += 1
                continue
            if rule.vr is not None:
                self._safe_private(ds, tag, elem, rule, state, mode, path, private_times)
            elif rule.action is Action.KEEP:
                if _is_sequence(elem) and elem.VR != "UN":
                    self._recurse(ds, tag, state, mode, (*path, tag))
            elif rule.action is Action.UID and self._retain_uids:
                pass
            else:
                self._appliers[rule.action](ds, tag, elem, rule, state, mode, (*path, tag))
            if tag in elements:
                kept_blocks.add(block)
                state.report.private_kept += 1
            else:
                state.report.private_removed += 1
        if private_times:
            self._shift_times(ds, private_times, state)
        for (group, low), _creator in creators.items():
            if (group, low) not in kept_blocks:
                del elements[(group << 16) | low]

    def _forget_private(self, elem: Any, state: _Instance) -> None:
        """A private element about to be removed: a person's name or a sequence in it may
        be written in free text elsewhere."""
        declared = elem.VR
        if declared == "PN":
            self._gather(elem, Kind.NAME, state)
        elif declared == "SQ" or (declared in (None, "UN") and _looks_like_items(elem)):
            state.unread.append(elem)

    def _safe_private(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
        times: list[tuple[int, str]],
    ) -> None:
        """A private element PS3.15 lists as safe: kept at the VR the table gives it, and
        only when its value is what that VR says; its text is still searched for names."""
        expected = rule.vr or "UN"
        declared = elem.VR
        elements = _elements(ds)
        if declared not in (None, "UN", expected):
            self._forget_private(elem, state)
            del elements[tag]  # a safe slot used for something else
            return
        if declared != expected and isinstance(elem, RawDataElement):
            if expected == "SQ":
                try:
                    items = _items_of(elem, state)
                except Exception:
                    del elements[tag]
                    return
                elem = DataElement(tag, "SQ", Sequence(items))
            else:
                elem = raw(
                    tag, expected, elem.value or b"", implicit=state.implicit, little=state.little
                )
            elements[tag] = elem
        value = elem.value if isinstance(elem, RawDataElement) else None
        if value and _not_its_vr(tag, expected, value):
            self._forget_private(elem, state)
            del elements[tag]  # not what the table says this slot holds
            return
        if expected == "SQ":
            self._recurse(ds, tag, state, mode, (*path, tag))
        elif expected == "UI":
            if not self._retain_uids:
                self._uid(ds, tag, elem, rule, state, mode, (*path, tag))
        elif expected in _NUMBER_VRS:
            if value is not None and not _GRAMMAR[expected].match(value):
                del elements[tag]
        elif expected in _BINARY_SIZE:
            if value is not None and len(value) % _BINARY_SIZE[expected]:
                del elements[tag]
        elif expected in _DATE_VRS:
            if self.profile.date_mode is DateMode.MODIFIED:
                times.append((tag, expected))
            elif self.profile.date_mode is DateMode.REMOVED:
                del elements[tag]
        elif expected in TEXT_VRS:
            state.texts.append(_Text(ds, tag, expected, keep_unknown=True))

    # -- dates and times -------------------------------------------------------------------

    def _date_or_time(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        vr: str,
        times: list[tuple[int, str]],
        state: _Instance,
        path: tuple[int, ...],
    ) -> None:
        """A DA, DT or TM to clean: shifted later with its partner (modified dates), kept
        (full dates) or taken out as the IOD allows (no date option)."""
        date_mode = self.profile.date_mode
        if date_mode is DateMode.MODIFIED:
            times.append((tag, vr))
        elif date_mode is DateMode.REMOVED:
            self._remove_as_allowed(ds, tag, vr, state, (*path, tag))

    def _remove_as_allowed(
        self, ds: Dataset, tag: int, vr: str, state: _Instance, path: tuple[int, ...]
    ) -> None:
        kind = self._type_of(state, path)
        if kind in _REQUIRED_VALUE:
            self._put(ds, tag, vr, DUMMY_BY_VR.get(vr, b""), state)
        elif kind in _REQUIRED:
            self._put(ds, tag, vr, b"", state)
        else:
            del _elements(ds)[tag]
            state.report.removed += 1

    def _shift_times(self, ds: Dataset, times: list[tuple[int, str]], state: _Instance) -> None:
        """Shift the dates and times of one item, a date and its time as one instant."""
        shift = state.shift
        assert shift is not None, "only the modified-dates option queues dates to shift"
        elements = _elements(ds)
        vrs = dict(times)
        done: set[int] = set()
        # Dates first: a date takes its time along, whichever comes first in the item.
        for tag, vr in sorted(times, key=lambda entry: entry[1] != "DA"):
            if tag in done or tag not in elements:
                continue
            values = split_values(_raw_bytes(elements[tag]))
            partner = DATE_TIME_PAIRS.get(tag) if vr == "DA" else None
            if partner is not None and vrs.get(partner) == "TM" and partner in elements:
                partner_values = split_values(_raw_bytes(elements[partner]))
                if len(values) == len(partner_values) and all(values) and all(partner_values):
                    try:
                        pairs = [
                            shift_pair(d, t, shift)
                            for d, t in zip(values, partner_values, strict=True)
                        ]
                    except ValueError:
                        pass
                    else:
                        self._put(ds, tag, "DA", join_values([p[0] for p in pairs], "DA"), state)
                        self._put(
                            ds, partner, "TM", join_values([p[1] for p in pairs], "TM"), state
                        )
                        done.update((tag, partner))
                        continue
            move = _SHIFTERS[vr]
            try:
                shifted = [move(v, shift) if v else v for v in values]
            except ValueError:
                # A malformed date or time cannot be shifted with certainty; a dummy leaks nothing.
                self._put(ds, tag, vr, DUMMY_BY_VR.get(vr, b""), state)
            else:
                self._put(ds, tag, vr, join_values(shifted, vr), state)
            done.add(tag)

    # -- free text -------------------------------------------------------------------------

    def _clean_texts(self, state: _Instance) -> None:
        """Clean every queued text now that every identifying value of the instance is known."""
        if not state.texts:
            return
        if state.unread:
            self._gather_unread(state)
        for text in state.texts:
            elements = _elements(text.ds)
            elem = elements.get(text.tag)
            if elem is None:
                continue
            vr = text.vr
            if vr == "CS" and self._code_of_words(_raw_bytes(elem)):
                continue  # a code made of words, not a name (see _keep)
            values = _text_values(elem, state.encodings)
            if text.mentions_only and not any(
                self.cleaner.mentions(v, state.identity) for v in values
            ):
                continue
            cleaned = [
                self.cleaner.clean(v, state.identity, keep_unknown=text.keep_unknown)
                for v in values
            ]
            state.report.text_cleaned += 1
            if cleaned == values:
                continue
            if vr not in FREE_TEXT_VRS:
                # A code or other constrained value with an identifier in it: no placeholder
                # fits its grammar. A private one is optional; a public one gets a dummy.
                if text.tag >> 16 & 1 or vr not in DUMMY_BY_VR:
                    del elements[text.tag]
                    state.report.removed += 1
                else:
                    self._put(text.ds, text.tag, vr, DUMMY_BY_VR[vr], state)
                continue
            limit = MAX_LENGTH.get(vr, 64)
            cleaned = [v[:limit] for v in cleaned]
            joined = "\\".join(cleaned) if vr in ("LO", "SH", "UC") else "".join(cleaned)
            if values and not joined.strip("\\ "):
                # Nothing known-safe was left; a dummy keeps a Type 1 attribute valid.
                self._put(text.ds, text.tag, vr, DUMMY_BY_VR[vr], state)
                continue
            encoded = encode_string(joined, state.encodings)
            self._put(text.ds, text.tag, vr, pad(encoded, vr), state)

    # -- actions ---------------------------------------------------------------------------

    def _put(self, ds: Dataset, tag: int, vr: str, value: bytes, state: _Instance) -> None:
        _elements(ds)[tag] = raw(tag, vr, value, implicit=state.implicit, little=state.little)
        state.report.replaced += 1

    def _remove(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        if _is_sequence(elem):
            state.unread.append(elem)
        del _elements(ds)[tag]
        state.report.removed += 1

    def _empty(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        vr = _DICTIONARY_VR.get(tag) or vr_of(elem)
        if vr == "SQ":
            state.unread.append(elem)
            kind = self._type_of(state, path)
            if kind in _REQUIRED or not state.knows_iod:
                _elements(ds)[tag] = DataElement(tag, "SQ", Sequence())
                state.report.replaced += 1
            else:
                # An empty Type 3 sequence is a conformance error; removing it leaks nothing.
                del _elements(ds)[tag]
                state.report.removed += 1
        else:
            self._put(ds, tag, vr, b"", state)

    def _dummy(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        vr = _DICTIONARY_VR.get(tag) or vr_of(elem)
        if vr == "SQ":
            self._recurse(ds, tag, state, Mode.DUMMY, path)
        elif vr == "UI":
            self._uid(ds, tag, elem, rule, state, mode, path)
        else:
            self._put(ds, tag, vr, DUMMY_BY_VR.get(vr, b""), state)

    def _clean(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        vr = _DICTIONARY_VR.get(tag) or vr_of(elem)
        if vr == "SQ":
            self._recurse(ds, tag, state, Mode.CLEAN, path)
        elif vr in _DATE_VRS:
            # Reached only from a site rule on a private date: shift it alone.
            if state.shift is None:
                self._remove(ds, tag, elem, rule, state, mode, path)
            else:
                self._shift_times(ds, [(tag, vr)], state)
        elif vr == "UI":
            self._uid(ds, tag, elem, rule, state, mode, path)
        elif vr in ("PN", "AE"):
            self._put(ds, tag, vr, DUMMY_BY_VR[vr], state)
        elif vr in FREE_TEXT_VRS:
            state.texts.append(_Text(ds, tag, vr, keep_unknown=False))
        elif vr in ("CS", "UR"):
            # Codes carry no identity, unless someone wrote one into them.
            state.texts.append(_Text(ds, tag, vr, keep_unknown=True))
        elif vr in _NUMBER_VRS or vr == "AS":
            data = _raw_bytes(elem)
            if vr == "AS" or not _GRAMMAR[vr].match(data):
                values = split_values(data)
                if vr == "AS":
                    fixed = [_cap_age(v) if _AGE.match(v) else "" for v in values]
                    if fixed != values:
                        self._put(ds, tag, vr, join_values(fixed, vr), state)
                else:
                    self._put(ds, tag, vr, DUMMY_BY_VR[vr], state)
        elif vr in _BINARY_SIZE or vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
            if vr == "UN" and not isinstance(elem, DataElement):
                self._remove(ds, tag, elem, rule, state, mode, path)  # unknown bytes
            return  # numbers carry no identity
        else:
            self._remove(ds, tag, elem, rule, state, mode, path)

    def _uid(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        vr = _DICTIONARY_VR.get(tag) or vr_of(elem)
        if vr == "SQ":
            self._recurse(ds, tag, state, mode, path)
            return
        if vr not in ("UI", "UN"):
            self._dummy(ds, tag, elem, rule, state, mode, path)
            return
        values = split_values(_raw_bytes(elem))
        if (
            self._retain_uids
            and rule.source.startswith("local")
            and all(map(well_formed_uid, values))
        ):
            return
        if not values and rule.action is Action.DUMMY:
            values = [f"dummy:{tag:08X}:{state.patient_pseudonym}"]
        mapped = [self._map_uid(v) for v in values]
        self._put(ds, tag, "UI", join_values(mapped, "UI"), state)

    def _keeps_uid(self, uid: str) -> bool:
        return uid in REGISTERED_UIDS or (self._retain_uids and well_formed_uid(uid))

    def _map_uid(self, uid: str) -> str:
        """A registered DICOM UID is kept; any other value, UID-shaped or not, is remapped."""
        if not uid or uid in REGISTERED_UIDS:
            return uid
        return self.pseudonyms.uid(uid)

    def _date(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        """An unlisted value whose VR is not a date after all (site rules, private)."""
        self._remove(ds, tag, elem, rule, state, mode, path)

    def _set(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        vr = _DICTIONARY_VR.get(tag) or vr_of(elem)
        template = (
            self.patient_name if tag == PATIENT_NAME and rule.source == "local" else rule.value
        )
        text = (template or "").replace("{patient_id}", state.patient_pseudonym)
        text = text[: MAX_LENGTH.get(vr, len(text))]  # a long subject ID in a name template
        if vr == "SQ":
            raise ScrubError(
                "action 'set' cannot give a value to a sequence; use keep, remove or empty"
            )
        self._put(ds, tag, vr, pad(encode_string(text, state.encodings), vr), state)

    def _hash(
        self,
        ds: Dataset,
        tag: int,
        elem: Any,
        rule: Rule,
        state: _Instance,
        mode: Mode,
        path: tuple[int, ...],
    ) -> None:
        vr = _DICTIONARY_VR.get(tag) or vr_of(elem)
        if vr in ("UI", "SQ"):
            self._uid(ds, tag, elem, rule, state, mode, path)
            return
        values = _text_values(elem, state.encodings)
        if tag == PATIENT_ID and rule.source == "local":
            # The patient's own ID (at any depth) becomes the patient's pseudonym, which is
            # the study's subject ID when the lookup table has one; other IDs are hashed.
            out = [
                state.patient_pseudonym
                if not v or v == state.patient_id
                else self.pseudonyms.patient_id(v, self.patient_id_prefix)
                for v in values
            ] or [state.patient_pseudonym]
        else:
            label = f"{tag:08X}"
            length = min(16, MAX_LENGTH.get(vr, 64) - len(rule.prefix))
            out = [
                rule.prefix + self.pseudonyms.code(v, label=label, length=length) for v in values
            ]
        self._put(ds, tag, vr, pad(encode_string("\\".join(out), state.encodings), vr), state)

    def _research_accession(self, ds: Dataset, elem: Any, state: _Instance) -> bool:
        """The study's own accession number from the lookup table, when it has one."""
        assert self.lookup is not None
        values = _text_values(elem, state.encodings)
        mapped = self.lookup.accession(values[0]) if values and values[0] else None
        if mapped is None:
            return False
        self._put(ds, ACCESSION_NUMBER, "SH", pad(mapped.encode("ascii", "replace"), "SH"), state)
        return True

    # -- crosswalk and provenance ----------------------------------------------------------

    def _record(self, ds: Dataset, originals: dict[str, str]) -> None:
        """Give the honest broker's crosswalk the original -> pseudonym pairs of this instance."""
        assert self.crosswalk is not None
        elements = _elements(ds)
        outputs = {
            "PatientID": PATIENT_ID,
            "AccessionNumber": ACCESSION_NUMBER,
            "StudyInstanceUID": STUDY_INSTANCE_UID,
        }
        for kind, tag in outputs.items():
            original = originals.get(kind, "")
            pseudonym = _first_text(elements.get(tag), ["iso8859"])
            if original and pseudonym and original != pseudonym:
                self.crosswalk.record(kind, original, pseudonym)

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
    {"dictionary"}
    | {f"local: unlisted {vr}" for vr in ("PN", "DA", "DT", "TM", "LT", "ST", "UT", "UI")}
)
# The VR of every public attribute with one VR; those the dictionary gives several VRs
# ("US or SS", "OB or OW") accept any of them as declared.
_DICTIONARY_VR: dict[int, str] = {
    tag: entry[0] for tag, entry in DicomDictionary.items() if len(entry[0]) == 2
}
_AMBIGUOUS: dict[int, tuple[str, ...]] = {
    # each VR the dictionary allows, and its own "OB or OW" (what pydicom gives a raw element
    # it read without a VR)
    tag: (*entry[0].split(" or "), entry[0])
    for tag, entry in DicomDictionary.items()
    if " or " in entry[0]
}
_REQUIRED_VALUE = frozenset({iod.AttributeType.TYPE1, iod.AttributeType.TYPE1C})
_REQUIRED = _REQUIRED_VALUE | {iod.AttributeType.TYPE2, iod.AttributeType.TYPE2C}
# Kept values of these VRs are still looked at (see Scrubber._keep).
_CHECKED_VRS = frozenset({"SQ", "UI", "AS", "CS"})
# Bytes that no text value holds (PS3.5 6.1.2.3, 6.2): control characters but ESC (code
# extensions), and in the VRs of several lines TAB, LF, FF and CR as well. NUL is allowed
# only as padding at the end (some devices pad text with it).
_ONE_LINE_JUNK = re.compile(rb"[\x00-\x1a\x1c-\x1f]")
_LINES_JUNK = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_NOT_TEXT: dict[str, re.Pattern[bytes]] = {
    **dict.fromkeys(("LO", "SH", "PN", "UC", "UR"), _ONE_LINE_JUNK),
    **dict.fromkeys(("ST", "LT", "UT"), _LINES_JUNK),
}
# Public attributes of a binary VR with a fixed number of values: their length in bytes is
# that number times the VR's size.
_FIXED_VM: dict[int, int] = {
    tag: int(entry[1])
    for tag, entry in DicomDictionary.items()
    if entry[1].isdigit() and entry[0].split(" or ")[0] in _BINARY_SIZE
}
_SHAPED_VRS = frozenset(_NOT_TEXT) | frozenset(_BINARY_SIZE)


def _not_its_vr(tag: int, vr: str, value: bytes) -> bool:
    """Whether raw bytes cannot be a value of ``vr``: text with control characters in it, or
    a binary value of the wrong length. A length that a damaged or hostile file declares too
    long takes the elements after it into the value, headers and all (found by mutating a
    test file: PatientName, IDs and addresses inside a kept Manufacturer); their tags and
    lengths are such bytes."""
    junk = _NOT_TEXT.get(vr)
    if junk is not None:
        return junk.search(value.rstrip(b"\x00")) is not None
    size = _BINARY_SIZE.get(vr)
    if size is None:
        return False
    count = _FIXED_VM.get(tag)
    return len(value) % size != 0 or (count is not None and len(value) != count * size)


def _grammar(value: bytes) -> re.Pattern[bytes]:
    """Values of one VR (PS3.5 6.2), padded, backslash-separated. Possessive quantifiers
    throughout: a 64 KiB value of digits and spaces is checked in linear time."""
    return re.compile(rb"^ *+(?:%s)?+ *+(?:\\ *+(?:%s)?+ *+)*+[ \x00]*+$" % (value, value))


# Decoded elements of these VRs hold strings that can be checked as they are.
_STRING_GRAMMARS = frozenset({"CS", "AE", "AS", "DA", "TM", "DT"})
_DATE = rb"\d{4}\.?+\d{2}\.?+\d{2}"
_TIME = rb"\d{2}(?::?+\d{2}(?::?+\d{2}(?:\.\d{1,6})?+)?+)?+"
# The VRs whose values have a grammar a kept value must follow (text is another matter).
_GRAMMAR: dict[str, re.Pattern[bytes]] = {
    "CS": _grammar(rb"[A-Z0-9_][A-Z0-9_ ]{0,15}+"),
    "AS": _grammar(rb"\d{3}[DWMY]"),
    "DS": _grammar(rb"[+-]?+(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][+-]?+\d++)?+"),
    "IS": _grammar(rb"[+-]?+\d{1,12}+(?:\.0*+)?+"),  # "1.0": sloppy, but a number
    # Dates and times also in their ACR-NEMA forms (1993.05.24, 10:15:00), and as ranges.
    "DA": _grammar(rb"(?:%s)?+-?+(?:%s)?+" % (_DATE, _DATE)),
    "TM": _grammar(rb"(?:%s)?+-?+(?:%s)?+" % (_TIME, _TIME)),
    "DT": _grammar(rb"\d{4}(?:\d{2}){0,5}+(?:\.\d{1,6})?+(?:[+-]\d{4})?+"),
    "AE": _grammar(rb"[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}+"),
}
_BINARY_VRS = frozenset(
    {"AT", "FD", "FL", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV", "UL", "US", "UV"}
)
_SHIFTERS: dict[str, Callable[[str, Shift], str]] = {"DA": shift_da, "TM": shift_tm, "DT": shift_dt}


def _keyword(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    return str(entry[4]) if entry else "attribute"


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _cap_age(value: str) -> str:
    """An age of 90 years or more is given as 090Y (PS3.15 E.3.3, HIPAA safe harbor)."""
    match = _AGE.match(value)
    if match and int(match.group(1)) >= _AGE_LIMIT[match.group(2)]:
        return "090Y"
    return value


def _looks_like_items(elem: Any) -> bool:
    """Whether the bytes of an element of unknown VR start like a sequence item."""
    value = elem.value if isinstance(elem, RawDataElement) else None
    return value is not None and value[:4] in (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")


def _items_of(elem: Any, state: _Instance) -> list[Dataset]:
    """The items of a sequence element, whatever it arrived as (SQ, UN, implicit)."""
    if isinstance(elem, DataElement):
        return list(elem.value) if elem.VR == "SQ" else []
    value = elem.value or b""
    unknown = elem.VR in (None, "UN")  # PS3.5 6.2.2: a sequence sent as UN is implicit LE
    implicit, little = unknown or state.implicit, unknown or state.little
    return list(read_sequence(io.BytesIO(value), implicit, little, len(value), state.encodings))


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
        vr = vr_of(elem)
        text = decode_bytes(data, encodings or ["iso8859"], {0x5C} if vr != "LT" else set())
        return (
            [v.strip(" \x00") for v in text.split("\\")]
            if vr not in ("LT", "ST", "UT")
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
