"""The study's own subject IDs and research accession numbers, from a CSV lookup table.

Research studies assign their own subject IDs; an honest broker keeps the table that links
them to the hospital's Patient IDs. The node reads that table (never writes it) and the
scrubber asks it before falling back to the keyed pseudonym.

The file is UTF-8 (a BOM is allowed), comma-separated, with a header row; column names are
case-insensitive::

    patient_id,issuer,subject_id,accession_number,research_accession
    12345,HOSP_A,SUBJ-001,,
    12345,HOSP_B,SUBJ-002,,
    67890,,SUBJ-003,A2024-77,RACC-0001
    ,,,A2024-78,RACC-0002

``patient_id`` and ``subject_id`` are required columns; ``issuer`` (IssuerOfPatientID) is
optional: a row with an issuer matches only that issuer, a row without matches any issuer.
``accession_number`` and ``research_accession`` come as a pair; a row may carry only an
accession mapping. Values are stripped. Errors name the file, the line and the fix, never a
value from the table (the table is PHI).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from dicomnode.errors import ConfigError

__all__ = ["LookupTable", "load_lookup"]

log = logging.getLogger(__name__)

_REQUIRED = ("patient_id", "subject_id")
_OPTIONAL = ("issuer", "accession_number", "research_accession")
_COLUMNS = ", ".join(_REQUIRED + _OPTIONAL)
_LO_MAX = 64  # PatientID is LO
_SH_MAX = 16  # AccessionNumber is SH


class LookupTable:
    """Patient ID (+ issuer) -> subject ID, and accession number -> research accession.

    Built by :func:`load_lookup`, which has checked it; read-only afterwards, so one table
    can be shared by every thread of a process.
    """

    __slots__ = ("_accessions", "_any_issuer", "_by_issuer", "source")

    source: Path

    def __init__(
        self,
        source: Path,
        by_issuer: dict[tuple[str, str], str],
        any_issuer: dict[str, str],
        accessions: dict[str, str],
    ) -> None:
        self.source = source
        self._by_issuer = by_issuer
        self._any_issuer = any_issuer
        self._accessions = accessions

    def subject_id(self, patient_id: str, issuer: str | None = None) -> str | None:
        """The study's subject ID for a patient, or None when the table does not map them.

        A row for this exact issuer wins over a row without an issuer. DICOM pads values
        with spaces, so both arguments are stripped first.
        """
        patient = patient_id.strip()
        if not patient:
            return None
        where = (issuer or "").strip()
        if where:
            found = self._by_issuer.get((patient, where))
            if found is not None:
                return found
        return self._any_issuer.get(patient)

    def accession(self, accession_number: str) -> str | None:
        """The research accession number for an accession number, or None when unmapped."""
        value = accession_number.strip()
        return self._accessions.get(value) if value else None

    @property
    def patients(self) -> int:
        """How many patient rows the table maps (for ``check-config`` and the start-up log)."""
        return len(self._by_issuer) + len(self._any_issuer)

    @property
    def accessions(self) -> int:
        """How many accession numbers the table maps."""
        return len(self._accessions)

    def __repr__(self) -> str:
        return (
            f"LookupTable({str(self.source)!r}, patients={self.patients}, "
            f"accessions={self.accessions})"
        )


@dataclass(frozen=True)
class _Key:
    device: int
    inode: int
    mtime_ns: int
    size: int


_cache: dict[Path, tuple[_Key, LookupTable]] = {}
_cache_lock = threading.Lock()


def load_lookup(path: Path) -> LookupTable:
    """Load and check the lookup table at ``path``; raise :class:`ConfigError` if it is wrong.

    The table is cached per resolved path, inode, modification time and size: a SIGHUP
    reload (which rebuilds everything) re-reads a file that changed, and costs nothing when
    it did not. Only the latest version of each file is kept.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        with open(resolved, "rb") as handle:
            # The key comes from the open file, so it always describes the bytes read.
            stat = os.fstat(handle.fileno())
            key = _Key(stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
            with _cache_lock:
                cached = _cache.get(resolved)
            if cached is not None and cached[0] == key:
                return cached[1]
            data = handle.read()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the lookup table ({exc.strerror}); check the path in "
            "scrub.lookup.path and that the node's user may read it"
        ) from None
    table = _parse(resolved, data)
    with _cache_lock:
        _cache[resolved] = (key, table)
    log.info(
        "lookup table %s: %d patient(s), %d accession number(s)",
        resolved,
        table.patients,
        table.accessions,
    )
    return table


def _parse(path: Path, data: bytes) -> LookupTable:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8; save the table as 'CSV UTF-8' (comma-separated)"
        ) from None
    if not text.strip():
        raise ConfigError(
            f"{path}: the lookup table is empty; it needs a header row "
            "(patient_id,subject_id, optionally issuer, accession_number,research_accession) "
            "and one row per patient"
        )
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header is not None and not any(name.strip() for name in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            raise ConfigError(f"{path}: the lookup table has no header row")
        columns = _columns(path, reader.line_num, header)
        builder = _Builder(path)
        for row in reader:
            line = reader.line_num
            if not any(field.strip() for field in row):
                continue  # a blank line
            if len(row) != len(header):
                raise ConfigError(
                    f"{path}, line {line}: {len(row)} field(s) where the header has "
                    f"{len(header)}; a value with a comma in it must be in double quotes"
                )
            builder.add(line, {name: row[i].strip() for name, i in columns.items()})
    except csv.Error:
        raise ConfigError(
            f"{path}, line {reader.line_num}: not a valid CSV line (check the double quotes)"
        ) from None
    table = builder.build()
    if not table.patients and not table.accessions:
        log.warning("lookup table %s has a header but no rows", path)
    return table


def _columns(path: Path, line: int, header: list[str]) -> dict[str, int]:
    """Column name -> index; every problem with the header row names the fix."""
    names = [name.strip().lower() for name in header]
    found = ", ".join(name or "(empty)" for name in names)
    for name in names:
        if name not in _REQUIRED + _OPTIONAL:
            # Extra columns are refused, not ignored: the node needs nothing else, and a
            # column of names or birth dates has no business on it.
            raise ConfigError(
                f"{path}, line {line}: unknown column {name or '(empty)'!r} (the columns are "
                f"{_COLUMNS}); remove it, the node needs no other data"
            )
        if names.count(name) > 1:
            raise ConfigError(f"{path}, line {line}: column {name!r} appears twice; keep one")
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        raise ConfigError(
            f"{path}, line {line}: missing column(s) {', '.join(missing)} (the header has: "
            f"{found}); the first row must name the columns, e.g. 'patient_id,subject_id'"
        )
    pair = {"accession_number", "research_accession"}
    if len(pair & set(names)) == 1:
        (absent,) = pair - set(names)
        raise ConfigError(
            f"{path}, line {line}: accession_number and research_accession come as a pair; "
            f"add the column {absent}"
        )
    return {name: i for i, name in enumerate(names)}


def _problem_in_value(value: str, limit: int) -> str | None:
    """Why ``value`` cannot be written into a DICOM LO/SH attribute, or None when it can."""
    if len(value) > limit:
        return f"is {len(value)} characters long, more than the {limit} DICOM allows here"
    if "\\" in value:
        return "contains a backslash, which would split it into several DICOM values"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contains a control character"
    if not value.isascii():
        # The default DICOM repertoire: an instance without Specific Character Set could
        # not carry it, and a re-encoded one would differ from the table.
        return "contains a character outside ASCII (the default DICOM repertoire)"
    return None


class _Builder:
    """Collects rows and refuses conflicts, remembering the line of each mapping."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_issuer: dict[tuple[str, str], tuple[str, int]] = {}
        self.any_issuer: dict[str, tuple[str, int]] = {}
        # subject ID -> the patients (patient ID, issuer or "") given it, with their line.
        self.subjects: dict[str, list[tuple[str, str, int]]] = {}
        self.accessions: dict[str, tuple[str, int]] = {}
        self.research: dict[str, tuple[str, int]] = {}

    def fail(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"{self.path}, line {line}: {message}")

    def add(self, line: int, row: dict[str, str]) -> None:
        patient = row.get("patient_id", "")
        subject = row.get("subject_id", "")
        issuer = row.get("issuer", "")
        if patient or subject or issuer:
            self._patient(line, patient, issuer, subject)
        accession = row.get("accession_number", "")
        research = row.get("research_accession", "")
        if accession or research:
            self._accession(line, accession, research)

    def _patient(self, line: int, patient: str, issuer: str, subject: str) -> None:
        if not patient:
            raise self.fail(
                line,
                "subject_id or issuer without patient_id; fill in patient_id, or leave the "
                "patient columns empty on a row that only maps an accession number",
            )
        if not subject:
            raise self.fail(line, "patient_id without subject_id; fill in the subject ID")
        problem = _problem_in_value(subject, _LO_MAX)
        if problem:
            raise self.fail(line, f"the subject ID {problem}; shorten or correct it")
        known = self.by_issuer.get((patient, issuer)) if issuer else self.any_issuer.get(patient)
        if known is not None:
            if known[0] != subject:
                raise self.fail(
                    line,
                    f"this patient (same patient_id{' and issuer' if issuer else ''}) is "
                    f"already mapped to a different subject ID on line {known[1]}; keep one",
                )
            return
        for other, other_issuer, other_line in self.subjects.get(subject, []):
            # One subject for two patient IDs merges two people into one research subject.
            # Only different, explicit issuers may share it: the same person known to two
            # hospitals, linked on purpose by the honest broker.
            same_domain = not issuer or not other_issuer or issuer == other_issuer
            if other != patient and same_domain:
                raise self.fail(
                    line,
                    f"this subject ID is already given to another patient on line "
                    f"{other_line}; two patients must not become one research subject "
                    "(give each its own subject ID, or set issuer where the same person is "
                    "known to two hospitals)",
                )
        if issuer:
            self.by_issuer[(patient, issuer)] = (subject, line)
        else:
            self.any_issuer[patient] = (subject, line)
        self.subjects.setdefault(subject, []).append((patient, issuer, line))

    def _accession(self, line: int, accession: str, research: str) -> None:
        if not accession or not research:
            raise self.fail(
                line,
                "accession_number and research_accession go together; fill in both or neither",
            )
        problem = _problem_in_value(research, _SH_MAX)
        if problem:
            raise self.fail(line, f"the research accession {problem}; shorten or correct it")
        known = self.accessions.get(accession)
        if known is not None:
            if known[0] != research:
                raise self.fail(
                    line,
                    "this accession number is already mapped to a different research "
                    f"accession on line {known[1]}; keep one",
                )
            return
        taken = self.research.get(research)
        if taken is not None:
            raise self.fail(
                line,
                "this research accession is already given to another accession number on "
                f"line {taken[1]}; give each study its own",
            )
        self.accessions[accession] = (research, line)
        self.research[research] = (accession, line)

    def build(self) -> LookupTable:
        return LookupTable(
            self.path,
            {k: v for k, (v, _) in self.by_issuer.items()},
            {k: v for k, (v, _) in self.any_issuer.items()},
            {k: v for k, (v, _) in self.accessions.items()},
        )
