"""Free text, cleaned: identifiers become typed placeholders, then only known words survive.

The C (clean) action on a description or a comment runs :meth:`TextCleaner.clean` in two steps:

1. **Findings.** The instance's own identifying values (:class:`Identity`: names in any order and
   case, IDs with any separators, phone numbers by their digits, places, dates in any written
   form) and identifiers that are in no header field (phone numbers, e-mail addresses, URLs, IP
   addresses, ID-shaped numbers and postcodes, dates and times, ages over 89, a name after a
   title) are replaced by ``[KIND]``, so a reader still sees that something was there.
2. **Allowlist.** Of what remains, a word survives only if it is known not to identify anyone
   (``rules/safe-words.txt``, ``rules/vocabulary.txt``, the site's words), short numbers and
   short technical tokens ("T1W", "B30f", "5mm") survive, and everything else is dropped.

    >>> cleaner = TextCleaner.default()          # once per process: reads ~60,000 words
    >>> who = Identity()
    >>> who.add(Kind.NAME, "Quartermaine^Zebulon")
    >>> cleaner.clean("Reason: chest pain, call Dr Underhill on (846) 230-6756", who)
    'Reason: chest pain, call Dr [NAME] on [PHONE]'

Dates are found with regular expressions and checked with :mod:`datetime` rather than with a
date-search library (dateparser's ``search_dates``): those parse words such as "now", "second"
or "may" as dates, pull in large locale data, and take milliseconds where a regular expression
takes microseconds. Phone numbers are the exception: numbering plans change, so
``phonenumbers`` (Google's libphonenumber) decides, and only for text with 7 digits or more.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from enum import StrEnum
from functools import cache
from pathlib import Path

import phonenumbers

__all__ = ["DEFAULT_REGIONS", "Identity", "Kind", "TextCleaner", "read_words"]

#: Regions whose national formats are recognised ("020 7946 0958" is British, "06 12 34 56 78"
#: French); numbers written with "+" and a country code are found whatever the region.
DEFAULT_REGIONS: tuple[str, ...] = (
    "US", "GB", "CA", "AU", "DE", "FR", "NL", "IT", "ES", "CH", "BE", "IE",
)  # fmt: skip


class Kind(StrEnum):
    """What a placeholder stands for; the text written is ``f"[{kind}]"``."""

    NAME = "NAME"
    ID = "ID"
    PHONE = "PHONE"
    EMAIL = "EMAIL"
    URL = "URL"
    IP = "IP"
    DATE = "DATE"
    TIME = "TIME"
    AGE = "AGE"
    PLACE = "PLACE"


# While the text is searched, each finding is one private-use character: no later pattern can
# match inside it (it is neither a word character nor a digit), and the allowlist passes it by.
_MARK = {kind: chr(0xE000 + i) for i, kind in enumerate(Kind)}
_EXPAND = {ord(mark): f"[{kind}]" for kind, mark in _MARK.items()}
_PRIVATE_USE = re.compile("[\ue000-\uf8ff]")
_NOT_MARK = "\ue000-\uf8ff"

_Span = tuple[int, int, Kind]


def _balanced(group: str) -> str:
    """A digit group without the bracket that closes text around it: "(acc 123456)" keeps
    its ")" when only "123456)" is the number."""
    while group.endswith(")") and group.count(")") > group.count("("):
        group = group[:-1]
    while group.startswith("(") and group.count("(") > group.count(")"):
        group = group[1:]
    if group.startswith("(") and group.endswith(")") and group.count("(") == 1:
        group = group[1:-1]  # brackets around the whole number, not an area code
    return group


def _replace(text: str, spans: list[_Span]) -> str:
    """Replace each span by its kind's mark; overlapping spans merge (the first one's kind)."""
    if not spans:
        return text
    spans.sort(key=lambda s: (s[0], -s[1]))
    out: list[str] = []
    pos = 0
    start, end, kind = spans[0]
    for s, e, k in spans[1:]:
        if s < end:
            end = max(end, e)
            continue
        out += (text[pos:start], _MARK[kind])
        pos = end
        start, end, kind = s, e, k
    out += (text[pos:start], _MARK[kind], text[end:])
    return "".join(out)


# -- identifiers in no header field ---------------------------------------------------------

_B = r"(?<![^\W_])"  # no letter or digit before
_E = r"(?![^\W_])"  # no letter or digit after

_EMAIL = re.compile(r"(?<![\w.+%-])[\w.+%-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(
    rf"(?<![\w@.-])(?:[a-z][a-z0-9+.-]{{1,15}}://|www\.)[^\s<>\"'{_NOT_MARK}]+"
    rf"|(?<![\w@./-])(?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+[a-z]{{2,24}}(?::\d{{1,5}})?/[^\s<>\"'{_NOT_MARK}]*",
    re.IGNORECASE,
)
_URL_TAIL = ".,;:!?)]}'\""
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?::\d{{1,5}}|/\d{{1,2}})?(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?:%\w+)?(?![\w:])",
    re.IGNORECASE,
)

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)(?![^\W\d_])\.?"
)
_WEEKDAY = (
    r"(?:mon(?:day)?|tue(?:s(?:day)?)?|wed(?:nesday)?|thu(?:r(?:s(?:day)?)?)?|fri(?:day)?"
    r"|sat(?:urday)?|sun(?:day)?)(?![^\W\d_])\.?,?\s*"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?(?!\d)"
# After a month name a two-digit year needs a joiner or an apostrophe ("24-MAY-02", "May '02"),
# so that "24 May 12 mm" keeps its 12.
_YEAR_AFTER = r"(?:[\s,]+\d{4}|[\s,]*'\d{2}|[-./]\d{2}(?:\d{2})?)(?!\d)"
_ISO_TIME = r"(?:T\d{1,2}:?\d{2}(?::?\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_NUMERIC_DATE = re.compile(
    # 2002-05-24, 24.05.2002, 5/24/02 (checked below), with an ISO time after a 'T'
    rf"(?<![\w.:/-])(?P<a>\d{{1,4}})(?P<sep>[./-])(?P<b>\d{{1,2}})(?P=sep)(?P<c>\d{{1,4}}){_ISO_TIME}(?![\w:]|[./-]\d)"
    # compact: 20020524, a DT value 20020524112400.123+0100
    rf"|(?<![\w.])(?P<compact>(?:1[89]|20)\d{{6}})(?:\d{{2,6}}(?:\.\d{{1,6}})?)?(?:[+-]\d{{4}})?(?!\w|\.\d)"
)
_NUMERIC_DATE_HINT = re.compile(r"\d[./-]\d\d?[./-]\d|\d{8}")
_WORDS_DATE = re.compile(
    # Tuesday 24th May, 24-MAY-02, 24 May 2002, the 24th of May
    rf"{_B}(?:{_WEEKDAY})?{_DAY}(?:\s+of)?[\s./-]*{_MONTH}(?:{_YEAR_AFTER})?"
    # May 24, 2002; Tue May 24; 2002 May 24; May 2002
    rf"|{_B}(?:{_WEEKDAY})?{_MONTH}[\s./-]*{_DAY}(?![^\W_])(?:[\s,]*(?:\d{{4}}|'\d{{2}})(?!\d))?"
    rf"|{_B}\d{{4}}[\s./-]*{_MONTH}[\s./-]*{_DAY}"
    rf"|{_B}{_MONTH},?[\s./-]*(?:1[89]|20)\d\d(?!\d)",
    re.IGNORECASE,
)
# Searched in the lower-cased text first: case-blind alternations are slow in `re`.
_MONTH_HINT = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec")
_TIME_HINT = re.compile(r"\d[:h]\d|\d\s*[ap]\.?\s?m", re.IGNORECASE)
_TIME = re.compile(
    r"(?<![\w.:])(?:[01]?\d|2[0-4]):[0-5]\d(?::[0-5]\d(?:[.,]\d+)?)?(?:\s*[ap]\.?\s?m\b\.?|\s?(?:h|hrs?|z)\b)?(?![\w:]|\.\d)"
    r"|(?<![\w.:])(?:[01]?\d|2[0-3])[.h][0-5]\d\s*[ap]\.?\s?m\b\.?"
    r"|(?<![\w.:])(?:[01]?\d|2[0-3])h[0-5]\d(?![^\W_])"
    r"|(?<![\w.:])(?:1[0-2]|0?[1-9])\s*[ap]\.?\s?m\b\.?",
    re.IGNORECASE,
)
# Ages over 89 (HIPAA Safe Harbor groups them as 90 or older); "age 93" keeps its "age".
_OLD = r"(?:0?9\d|1[0-4]\d)"
_OLD_HINT = re.compile(r"(?<!\d)0?(?:9|1[0-4])\d(?!\d)")
_AGE = re.compile(
    rf"(?<![\w.]){_OLD}\s*-?\s*(?:years?|yrs?|y\.?\s?o\b\.?|y/o|y(?![^\W_]))(?:[\s-]*old)?{_E}"
    rf"|{_B}age[ds]?\s*[:=]?\s*(?:of\s+)?(?P<n>{_OLD})(?!\d)",
    re.IGNORECASE,
)
# Postcodes that numbers alone would miss (UK, Canada, the Netherlands; US ZIP codes are digits).
_POSTCODE = re.compile(
    rf"{_B}(?:[A-Z]{{1,2}}\d[A-Z\d]?|GIR) ?\d[ABD-HJLNP-UW-Z]{{2}}{_E}"
    rf"|{_B}[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z][ -]?\d[ABCEGHJ-NPRSTV-Z]\d{_E}"
    rf"|{_B}[1-9]\d{{3}} ?(?P<nl>[A-Z]{{2}}){_E}"
)
# National IDs with letters that digits alone would miss: UK National Insurance "QQ 12 34 56 C".
_NATIONAL_ID = re.compile(rf"{_B}[A-Z]{{2}} ?\d\d ?\d\d ?\d\d ?[A-D]{_E}")
# A number after a label that says it identifies ("MRN 1234", "NHS no. 123"), however short.
_LABELLED_ID = re.compile(
    rf"{_B}(?:mrn|nhs|ssn|sin|bsn|urn|chi|acc|accession|patient id|hospital (?:no|number))"
    rf"(?:\s*(?:no|number|nr|#)\.?)?\s*[:#=.]?\s*(?P<n>\d[\d -]*\d){_E}",
    re.IGNORECASE,
)
# At most this many digit groups of one text, each at most this long, are shown to
# libphonenumber (the longest international number written with spaces is ~25 characters).
_PHONE_ASKS = 8
_PHONE_LENGTH = 32
# Cheap tests that tell when the patterns above cannot match (most descriptions).
_POSTCODE_HINT = re.compile(r"\d ?[A-Z]{2}(?![^\W_])|\d[A-Z]\d|\d ?[A-D](?![^\W_])")
_LABEL_HINT = re.compile(r"mrn|nhs|ssn|sin|bsn|urn|chi|acc|patient|hospital")
_TITLE_HINT = re.compile(r"dr|mr|ms|mx|miss|prof|doctor|nurse|sister")
# Two capitals after four digits that are units or abbreviations, not a Dutch postcode
# ("1500 MS", "2000 TE"; SA, SD and SS are not used in Dutch postcodes).
_NOT_POSTCODE = frozenset(
    "SA SD SS MS ML MG MM CM KG KV MA HZ GY SV HU BQ DB MB KB GB PX AM PM CC BC AD MU UM UL "
    "TE TR TI ET FA BW SL ST IR IV CT MR PT NM US DX CR XA RF OT SC SR PR KO RT BH FB".split()
)
# Digit groups joined by space . - / ( ): phone numbers, national IDs, accession numbers.
_GROUPS = re.compile(
    r"(?<![\w+.])(?<![^\W_][-/.#])\+?\(?\d+\)?"
    r"(?:(?:[ \t]{1,2}|[ \t]?[-./][ \t]?|[ \t]?\(|(?<=\))[ \t]?)\(?\d+\)?)*"
)
# Letters and digits joined without spaces: MRN8837461, ACC-2021-0042, 1.2.840.10008.1.
_CODE = re.compile(r"(?<![^\W_])(?<![^\W_][-/.#])[^\W_]+(?:[-./#][^\W_]+)*")
_DIMENSIONS = re.compile(r"\d{1,4}(?:x\d{1,4})+", re.IGNORECASE)
_DECIMAL = re.compile(r"\d+\.\d+")
_DIGITS = re.compile(r"\d+")
_DIGIT = re.compile(r"\d")
_PARTS = re.compile(r"[^\W_]+")  # a run of letters or digits, in any script
_PHONE_HINT = re.compile(
    r"(?:tel|telephone|phone|ph|mobile|mob|cell|fax|call|ring|contact|bleep|pager|ext)\W{0,4}$",
    re.IGNORECASE,
)
_ID_HINT = re.compile(
    r"(?:id|no|number|nr|mrn|nhs|ssn|sin|bsn|acc|accession|hospital|patient|ref|urn|chi)\W{0,4}$",
    re.IGNORECASE,
)
_TITLE = re.compile(
    rf"{_B}(?P<title>dr|mr|mrs|ms|mx|miss|prof|doctor|nurse|sister){_E}(?:\.[ \t]*|[ \t]+)"
    rf"(?P<words>[^\W\d_][\w'\u2019-]*\.?(?:[ \t]+[^\W\d_][\w'\u2019-]*\.?){{0,2}})",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*\.?")


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    return True


def _numeric_date(a: str, b: str, c: str) -> bool:
    """Is a/b/c a calendar date as Y-M-D, D-M-Y or M-D-Y? ("1.25.3" is not: no year)."""
    if len(a) == 4:
        return len(c) <= 2 and _valid_date(int(a), int(b), int(c))
    if len(c) not in (2, 4) or len(a) > 2:
        return False
    year = int(c) if len(c) == 4 else 2000 + int(c)
    return _valid_date(year, int(b), int(a)) or _valid_date(year, int(a), int(b))


def _dates(text: str) -> Iterator[_Span]:
    if _NUMERIC_DATE_HINT.search(text):
        for m in _NUMERIC_DATE.finditer(text):
            if m.group("a") is not None and not _numeric_date(m["a"], m["b"], m["c"]):
                continue
            compact = m.group("compact")
            if compact and not _valid_date(int(compact[:4]), int(compact[4:6]), int(compact[6:8])):
                continue
            yield m.start(), m.end(), Kind.DATE
    if _MONTH_HINT.search(text.lower()):
        for m in _WORDS_DATE.finditer(text):
            yield m.start(), m.end(), Kind.DATE


def _ages(text: str) -> Iterator[_Span]:
    for m in _AGE.finditer(text):
        if m.group("n") is not None:
            yield m.start("n"), m.end("n"), Kind.AGE
        else:
            yield m.start(), m.end(), Kind.AGE


def _urls(text: str) -> Iterator[_Span]:
    for m in _URL.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in _URL_TAIL:
            if text[end - 1] == ")" and "(" in text[m.start() : end]:
                break
            end -= 1
        yield m.start(), end, Kind.URL


def _ips(text: str) -> Iterator[_Span]:
    if text.count(".") >= 3:
        for m in _IPV4.finditer(text):
            yield m.start(), m.end(), Kind.IP
    if text.count(":") >= 2:
        for m in _IPV6.finditer(text):
            candidate = m.group().split("%", 1)[0]
            if not any(c.isalnum() for c in candidate):
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue  # "11:24:05" is a time
            yield m.start(), m.end(), Kind.IP


def _postcodes(text: str) -> Iterator[_Span]:
    """Postcodes and national IDs with letters, as [ID]."""
    for m in _POSTCODE.finditer(text):
        if m.group("nl") in _NOT_POSTCODE:
            continue
        yield m.start(), m.end(), Kind.ID
    for m in _NATIONAL_ID.finditer(text):
        yield m.start(), m.end(), Kind.ID


def _id_like(digits: list[str]) -> bool:
    """The rule of thumb: a run of 5 digits, or 7 digits in all; but not a rising list of
    round values ("0 50 100 500 1000" b-values, "30/70/180" s), which no ID or phone is."""
    if sum(map(len, digits)) < 7 and not any(len(d) >= 5 for d in digits):
        return False
    values = [int(d) for d in digits]
    return not (
        len(digits) >= 3
        and all(d == "0" or (d[0] != "0" and d[-1] in "05") for d in digits)
        and all(a < b for a, b in itertools.pairwise(values))
    )


# -- the instance's own identifying values -------------------------------------------------

_NAME_SPLIT = re.compile(r"[\s^,]+")
_ORDINAL = re.compile(r"(\d{1,2})(?:st|nd|rd|th)")
_ORDINAL_ENDINGS = frozenset({"st", "nd", "rd", "th"})
# What may stand between the parts of a name ("Quartermaine, Zebulon", "Z. Quartermaine",
# "O'Neill"), of an ID ("ACC 2021-0042") and of a written date ("24th of May, 2002").
_NAME_GAP = frozenset(" \t,^.'\u2019-")
_ID_GAP = frozenset(" \t._/:#-")
_DATE_GAP = frozenset(" \t,./'-")
_PLACE_GAP = frozenset(" \t,.;:/-'\u2019&()")
_MONTHS = {
    name: n
    for n, full in enumerate(
        ("january", "february", "march", "april", "may", "june", "july", "august",
         "september", "october", "november", "december"),
        start=1,
    )
    for name in (full, full[:3], "sept" if n == 9 else full[:3])
}  # fmt: skip


def _fold(text: str) -> str:
    """Without accents ("Müller" -> "Muller"), for text that drops them."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _unspaced(token: str) -> bool:
    """Written without spaces between words (Han, kana, Hangul): found inside longer runs."""
    return any(ord(c) >= 0x2E80 for c in token)


def _gap(text: str, start: int, end: int, allowed: frozenset[str], most: int) -> bool:
    return end - start <= most and all(c in allowed for c in text[start:end])


class _Token:
    """One run of letters or digits of the text: where it is, as written and as compared."""

    __slots__ = ("end", "low", "start", "text")

    def __init__(self, match: re.Match[str]) -> None:
        self.start, self.end, self.text = match.start(), match.end(), match.group()
        low = self.text.lower()
        self.low = low if low.isascii() else _fold(low)


class _Matcher:
    """An :class:`Identity` made ready for searching: sets and digit strings, no regular
    expression to compile (a pattern per patient would cost milliseconds)."""

    __slots__ = (
        "banned", "dates", "id_prefixes", "id_runs", "ids", "initials", "names", "phones",
        "place_words", "places", "unspaced", "words",
    )  # fmt: skip

    def __init__(
        self, values: dict[Kind, list[str]], words: frozenset[str], regions: tuple[str, ...]
    ) -> None:
        self.words = words
        names: set[str] = set()
        unspaced: set[str] = set()
        initials: set[str] = set()
        for value in values.get(Kind.NAME, ()):
            for group in value.split("="):  # alphabetic, ideographic, phonetic
                # family, given, middle; the prefix and suffix ("Dr", "Jr") name nobody
                components = [c for c in _NAME_SPLIT.split("^".join(group.split("^")[:3])) if c]
                for component in components:
                    initials.add(component[0].upper())
                    for piece in {component, *_PARTS.findall(component)}:
                        if len(piece) < 2:
                            continue
                        names.add(piece.lower())
                        names.add(_fold(piece.lower()))
                        if _unspaced(piece):
                            unspaced.add(piece)
                joined = "".join(components)
                if _unspaced(joined):
                    unspaced.add(joined)  # 山田^太郎 is written 山田太郎
        self.names = frozenset(names)
        self.initials = frozenset(i for i in initials if i.isalpha())
        self.unspaced = tuple(sorted(unspaced, key=lambda u: (-len(u), u)))

        ids: set[str] = set()
        runs: set[str] = set()
        banned: set[str] = set(self.names)
        for value in values.get(Kind.ID, ()):
            parts = [_fold(p.lower()) for p in _PARTS.findall(value)]
            alnum = "".join(parts)
            # A short ID ("1", "42") is no identifier in text; its long digit runs are.
            if len(alnum) >= 3 and (not alnum.isdigit() or len(alnum) >= 4):
                ids.add(alnum)
            for run in _DIGITS.findall(value):
                runs.update(d for d in (run, run.lstrip("0")) if len(d) >= 4)
            banned.update(p for p in parts if len(p) >= 2)
        self.ids = frozenset(ids)
        self.id_prefixes = frozenset(i[:n] for i in ids for n in range(1, len(i) + 1))
        self.id_runs = frozenset(runs)

        phones: set[str] = set()
        for value in values.get(Kind.PHONE, ()):
            phones.update(_phone_forms(value, regions))
        self.phones = tuple(sorted(phones, key=lambda p: (-len(p), p)))

        places: set[tuple[str, ...]] = set()
        place_words: set[str] = set()
        for value in values.get(Kind.PLACE, ()):
            parts = [p.lower() for p in _PARTS.findall(value)]
            if len(parts) >= 2:
                places.add(tuple(_fold(p) for p in parts))
            for part in parts:
                if part.isdigit():
                    if len(part) >= 4:
                        place_words.add(part)
                elif len(part) >= 2 and part not in words:
                    place_words.add(_fold(part))
        self.places: dict[str, list[tuple[str, ...]]] = {}
        for phrase in sorted(places, key=lambda p: (-len(p), p)):
            self.places.setdefault(phrase[0], []).append(phrase)
        self.place_words = frozenset(place_words)
        banned.update(place_words)

        dates: set[tuple[int, int, int]] = set()
        for value in values.get(Kind.DATE, ()):
            digits = value.strip()[:8]
            if len(digits) == 8 and digits.isdecimal():  # int() reads these; not '²'
                ymd = (int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
                if _valid_date(*ymd):
                    dates.add(ymd)
        self.dates = frozenset(dates)
        self.banned = frozenset(banned)

    def spans(self, text: str) -> list[_Span]:
        tokens = [_Token(m) for m in _PARTS.finditer(text)]
        spans: list[_Span] = []
        if self.names:
            spans += self._names(text, tokens)
        if self.ids or self.id_runs:
            spans += self._ids(text, tokens)
        if self.phones:
            spans += self._phones(text)
        if self.places or self.place_words:
            spans += self._places(text, tokens)
        if self.dates and sum(map(str.isdigit, text)) >= 3:  # "1 May 02" has three
            spans += self._dates(text, tokens)
        return spans

    def _names(self, text: str, tokens: list[_Token]) -> list[_Span]:
        """Name parts in any order and case, with initials and punctuation between them, as
        one span: "Quartermaine, Zebulon", "Z. QUARTERMAINE"."""
        spans: list[_Span] = []
        run: list[_Token] = []  # initials and name parts, each close to the one before
        named = False
        for token in tokens:
            is_name = token.low in self.names
            is_initial = len(token.text) == 1 and token.text in self.initials
            if (is_name or is_initial) and (
                not run or _gap(text, run[-1].end, token.start, _NAME_GAP, 3)
            ):
                run.append(token)
                named = named or is_name
                continue
            if named:
                spans.append((run[0].start, run[-1].end, Kind.NAME))
            run, named = ([token], is_name) if is_name or is_initial else ([], False)
        if named:
            spans.append((run[0].start, run[-1].end, Kind.NAME))
        if self.unspaced and max(text) >= "\u2e80":
            for name in self.unspaced:
                at = text.find(name)
                while at >= 0:
                    spans.append((at, at + len(name), Kind.NAME))
                    at = text.find(name, at + len(name))
        return spans

    def _ids(self, text: str, tokens: list[_Token]) -> list[_Span]:
        """The whole ID however it is split ("ACC 2021-0042", "acc20210042"), and its runs of
        four digits or more wherever they are ("MRN8837461" hides "8837461")."""
        spans: list[_Span] = []
        for i, token in enumerate(tokens):
            joined = token.low
            j = i
            while joined in self.id_prefixes and joined not in self.ids and j + 1 < len(tokens):
                after = tokens[j + 1]
                if not _gap(text, tokens[j].end, after.start, _ID_GAP, 2):
                    break
                j += 1
                joined += after.low
            if joined in self.ids:
                spans.append((token.start, tokens[j].end, Kind.ID))
            elif self.id_runs and len(token.text) >= 4 and not token.low.isalpha():
                for run in _DIGITS.finditer(token.text):
                    if run.group() in self.id_runs:
                        spans.append((token.start + run.start(), token.start + run.end(), Kind.ID))
        return spans

    def _phones(self, text: str) -> list[_Span]:
        """A group of digits that ends with the number, as given, national or local."""
        spans: list[_Span] = []
        for m in _GROUPS.finditer(text):
            if len(m.group()) < 6:
                continue
            digits = "".join(_DIGITS.findall(m.group()))
            if len(digits) < 6:
                continue
            for form in self.phones:
                if digits.endswith(form) and len(digits) - len(form) <= 4:
                    spans.append((m.start(), m.end(), Kind.PHONE))
                    break
        return spans

    def _places(self, text: str, tokens: list[_Token]) -> list[_Span]:
        """The whole phrase however punctuated, and its words that are no known word."""
        spans: list[_Span] = []
        for i, token in enumerate(tokens):
            for phrase in self.places.get(token.low, ()):
                if i + len(phrase) > len(tokens):
                    continue
                last = i + len(phrase) - 1
                if all(
                    tokens[i + k].low == part
                    and _gap(text, tokens[i + k - 1].end, tokens[i + k].start, _PLACE_GAP, 3)
                    for k, part in enumerate(phrase[1:], start=1)
                ):
                    spans.append((token.start, tokens[last].end, Kind.PLACE))
                    break
            if token.low in self.place_words:
                spans.append((token.start, token.end, Kind.PLACE))
        return spans

    def _dates(self, text: str, tokens: list[_Token]) -> list[_Span]:
        """The date written in any order, with numbers or a month name, or as one number
        (20020524, 24052002, 240502)."""
        spans: list[_Span] = []
        atoms: list[tuple[_Token, int | None, int]] = []  # token, month if a name, number
        for token in tokens:
            low = token.low
            if low.isdecimal():  # int() reads these; '²' is a digit it cannot read
                if len(low) in (6, 8) and self._compact(low):
                    spans.append((token.start, token.end, Kind.DATE))
                elif len(low) <= 4:
                    atoms.append((token, None, int(low)))
            elif low in _MONTHS:
                atoms.append((token, _MONTHS[low], _MONTHS[low]))
            elif low[-2:] in _ORDINAL_ENDINGS and (ordinal := _ORDINAL.fullmatch(low)):
                atoms.append((token, None, int(ordinal.group(1))))
        values = {atom[2] for atom in atoms}
        if not any(d in values and m in values for _, m, d in self.dates):
            return spans  # no day and month of the date: no window can be it
        for k in range(len(atoms) - 2):
            window = atoms[k : k + 3]
            if all(self._joined(text, a, b) for a, b in itertools.pairwise(window)) and any(
                self._written(window, order) for order in ("dmy", "mdy", "ymd")
            ):
                spans.append((window[0][0].start, window[2][0].end, Kind.DATE))
        return spans

    @staticmethod
    def _joined(
        text: str, a: tuple[_Token, int | None, int], b: tuple[_Token, int | None, int]
    ) -> bool:
        """Parts of one written date: "24-05", "24th of May"; a comma only before a year
        ("May 24, 2002"), so that a list of dates is not read across."""
        gap = text[a[0].end : b[0].start]
        if "," in gap and len(b[0].text) != 4:
            return False
        return _gap(text, a[0].end, b[0].start, _DATE_GAP, 3) or gap.strip(" ,").lower() == "of"

    def _compact(self, digits: str) -> bool:
        for year, month, day in self.dates:
            y4, y2, m, d = f"{year:04d}", f"{year % 100:02d}", f"{month:02d}", f"{day:02d}"
            forms = (
                (y4 + m + d, d + m + y4, m + d + y4)
                if len(digits) == 8
                else (y2 + m + d, d + m + y2, m + d + y2)
            )
            if digits in forms:
                return True
        return False

    def _written(self, window: list[tuple[_Token, int | None, int]], order: str) -> bool:
        parts = dict(zip(order, window, strict=True))
        day, month, year = parts["d"], parts["m"], parts["y"]
        if day[1] is not None or year[1] is not None:
            return False  # a month name in the place of a day or a year
        if order == "ymd" and len(year[0].text) != 4:
            return False  # "02 05 24" is not read year first
        for y, m, d in self.dates:
            if day[2] != d or month[2] != m:
                continue
            written = len(year[0].text)
            if (written == 4 and year[2] == y) or (written == 2 and year[2] == y % 100):
                return True
        return False


def _phone_forms(value: str, regions: tuple[str, ...]) -> set[str]:
    """The digits of a phone number as given, as its national number (after a "+44" or a
    trunk "0"), and as its local number without the area code ("7946 0958")."""
    digits = "".join(_DIGITS.findall(value))
    if len(digits) < 7:
        return set()
    forms = {digits}
    for region in regions:
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        national = phonenumbers.national_significant_number(number)
        local = national[phonenumbers.length_of_geographical_area_code(number) :]
        forms.update(f for f in (national, local) if len(f) >= 6)
        break
    return forms


class Identity:
    """The identifying values of one instance, gathered by the engine before any is removed
    (names, IDs, phone numbers, addresses, institution/department/station names, dates), from
    every depth and from private elements too. Cheap to build; compiled lazily on first use.

    Values are PHI: never log them or put them in an error message.
    """

    __slots__ = ("_key", "_values")

    def __init__(self) -> None:
        self._values: dict[Kind, list[str]] = {}
        self._key: tuple[tuple[Kind, tuple[str, ...]], ...] | None = None

    def add(self, kind: Kind, value: str) -> None:
        """Add one value as decoded text; PN values come with their '^' and '=' separators."""
        value = value.strip("\x00 ")
        if value:
            self._values.setdefault(Kind(kind), []).append(value)
            self._key = None

    def __bool__(self) -> bool:
        return bool(self._values)

    @property
    def key(self) -> tuple[tuple[Kind, tuple[str, ...]], ...]:
        """What the values are, hashable: the instances of one patient's series share it."""
        if self._key is None:
            self._key = tuple(
                (kind, tuple(sorted(set(values)))) for kind, values in sorted(self._values.items())
            )
        return self._key


# -- the cleaner ---------------------------------------------------------------------------

# Only tokens can survive the allowlist: runs of letters or digits in any script (a name in
# Cyrillic or kanji is a token too), a decimal fraction kept with its number.
_TOKEN = re.compile(r"[^\W_]+(?:\.[0-9]+)?")
_YEAR = re.compile(r"^(?:18|19|20)\d\d$")
_SPACES = re.compile(r"[ \t]{2,}")
_EDGES = re.compile(r"(?m)^[ \t,;:/^_-]+|[ \t,;:/^_-]+$")
_BEFORE_PUNCT = re.compile(r"[ \t]+(?=[,;:.!?)])")
_EMPTY_BRACKETS = re.compile(r"\([ \t]*\)|\[[ \t]*\]")
_AFTER_OPENING = re.compile(r"([(\[])[ \t]+")
_REPEATED = re.compile(r"([,;:])(?:[ \t]*[,;:])+")
_SPLIT_LETTERS = re.compile(r"[\d.]+")


_CACHED_TEXTS = 4096
_CACHED_LENGTH = 256  # so the cache holds at most ~1 MB of text
_CACHED_IDENTITIES = 64


def read_words(*paths: Path) -> list[str]:
    """Words of word files: one or more a line, '#' starts a comment, and a word followed by
    '-suffix' tokens stands for its forms too ("scan -ned -s": scan, scanned, scans)."""
    words: list[str] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            head = ""
            for token in line.split("#", 1)[0].split():
                if token.startswith("-") and head:
                    words.append(head + token[1:])
                else:
                    head = token
                    words.append(token)
    return words


class TextCleaner:
    """Cleans free text (the C action): identifiers become ``[KIND]``, unknown words go.

    Build it once per process (:meth:`default` reads ~60,000 words); :meth:`clean` takes a few
    microseconds for a description and has no state.
    """

    def __init__(self, words: Iterable[str], *, regions: tuple[str, ...] = DEFAULT_REGIONS) -> None:
        self._words = frozenset(w.lower() for w in words)
        self._regions = tuple(regions)
        # The instances of a series repeat their identity and most of their text: both are
        # worked out once. In memory only, bounded, never written anywhere.
        self._matchers: dict[tuple[object, ...], _Matcher] = {}
        self._cleaned: dict[tuple[object, ...], str] = {}

    @classmethod
    def default(
        cls, extra: Iterable[str] = (), *, regions: tuple[str, ...] = DEFAULT_REGIONS
    ) -> TextCleaner:
        """The shipped word files (safe words and general vocabulary) plus the site's words;
        one per set of site words in a process (the files ship with the code)."""
        return _default_cleaner(tuple(extra), tuple(regions))

    def all_known(self, text: str) -> bool:
        """Whether every word of ``text`` is a known word (codes such as "TEXT", "CONTAINS"):
        such a value is not searched for names, which may be words too ("Enter text")."""
        return all(w.lower() in self._words for w in _PARTS.findall(text) if not w.isdigit())

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions whose national phone formats are recognised."""
        return self._regions

    def clean(
        self, text: str, identity: Identity | None = None, *, keep_unknown: bool = False
    ) -> str:
        """Return ``text`` with identifiers replaced by ``[KIND]`` and, unless ``keep_unknown``
        (private text that PS3.15 lists as safe), every word not known to be safe removed."""
        if not text:
            return text
        if len(text) > _CACHED_LENGTH:  # long reports are rarely repeated: not worth the memory
            return self._clean(text, identity, keep_unknown)
        key = (text, keep_unknown, identity.key if identity else None)
        done = self._cleaned.get(key)
        if done is not None:
            return done
        if len(self._cleaned) >= _CACHED_TEXTS:
            self._cleaned.clear()
        done = self._cleaned[key] = self._clean(text, identity, keep_unknown)
        return done

    def mentions(self, text: str, identity: Identity) -> bool:
        """Whether ``text`` holds one of the instance's identifying values (a name, an ID, a
        phone number, a place, the birth date), as :meth:`clean` would find it."""
        return bool(text and identity and self._matcher(identity).spans(text))

    def _matcher(self, identity: Identity) -> _Matcher:
        matcher = self._matchers.get(identity.key)
        if matcher is None:
            if len(self._matchers) >= _CACHED_IDENTITIES:
                self._matchers.clear()
            matcher = _Matcher(identity._values, self._words, self._regions)
            self._matchers[identity.key] = matcher
        return matcher

    def _clean(self, text: str, identity: Identity | None, keep_unknown: bool) -> str:
        if _PRIVATE_USE.search(text):
            text = _PRIVATE_USE.sub(" ", text)  # would pass for one of our marks
        banned: frozenset[str] = frozenset()
        # Addresses first, whole: "tyler.scott@example.net" is one [EMAIL], not two names.
        text = self._addresses(text)
        if identity:
            matcher = self._matcher(identity)
            banned = matcher.banned
            text = _replace(text, matcher.spans(text))
        text = self._find(text)
        if not keep_unknown:
            text = self._allow(text, banned)
        return text.translate(_EXPAND)

    # -- step 1 ----------------------------------------------------------------------------

    @staticmethod
    def _addresses(text: str) -> str:
        """E-mail addresses, URLs and IP addresses."""
        if "@" in text:
            text = _replace(text, [(m.start(), m.end(), Kind.EMAIL) for m in _EMAIL.finditer(text)])
        if "/" in text or "www." in text.lower():
            text = _replace(text, list(_urls(text)))
        if ":" in text or ("." in text and _DIGIT.search(text) is not None):
            text = _replace(text, list(_ips(text)))
        return text

    def _find(self, text: str) -> str:
        lower = text.lower()  # for the hints only: lower() may change lengths
        has_digit = _DIGIT.search(text) is not None
        if has_digit:
            text = _replace(text, list(_dates(text)))
            if _TIME_HINT.search(text):
                text = _replace(
                    text, [(m.start(), m.end(), Kind.TIME) for m in _TIME.finditer(text)]
                )
            if _OLD_HINT.search(text):
                text = _replace(text, list(_ages(text)))
            digits = sum(map(str.isdigit, text))
            if digits >= 5:
                text = self._numbers(text)
            if digits >= 2 and _POSTCODE_HINT.search(text):  # "W1 1AA" has two digits
                text = _replace(text, list(_postcodes(text)))
            if digits >= 3 and _LABEL_HINT.search(lower):
                text = _replace(
                    text, [(m.start("n"), m.end("n"), Kind.ID) for m in _LABELLED_ID.finditer(text)]
                )
        if _TITLE_HINT.search(lower):
            text = _replace(text, list(self._titled(text)))
        return text

    def _numbers(self, text: str) -> str:
        """Phone numbers, then ID-shaped numbers and codes."""
        spans: list[_Span] = []
        asked = 0  # libphonenumber takes ~0.1 ms a region: a few groups a text, then [ID]
        for m in _GROUPS.finditer(text):
            if len(m.group()) < 5:
                continue  # fewer than 5 digits: neither an ID nor a phone number
            group = _balanced(m.group())
            pieces = [group]
            if any(_DECIMAL.fullmatch(p) for p in group.split()):
                pieces = group.split()  # "1.25 0.625 2.5": measurements, one by one
            offset = m.start()
            for piece in pieces:
                start = text.index(piece, offset)
                offset = start + len(piece)
                runs = _DIGITS.findall(piece)
                if sum(map(len, runs)) >= 7 and len(piece) <= _PHONE_LENGTH and asked < _PHONE_ASKS:
                    asked += 1
                    phones = self._phones(text, start, offset)
                    spans += phones
                    if phones:
                        continue
                decimal = _DECIMAL.fullmatch(piece) is not None  # its fraction is no ID
                if len(runs[0]) >= 5 if decimal else _id_like(runs):
                    spans.append((start, offset, Kind.ID))
        text = _replace(text, spans)
        spans = []
        for m in _CODE.finditer(text):
            code = m.group()
            if len(code) < 5 or sum(map(str.isdigit, code)) < 5:
                continue
            if _DIMENSIONS.fullmatch(code) or _DECIMAL.fullmatch(code):
                continue
            if _id_like(_DIGITS.findall(code)):  # "ACC-2021-0042", not "b50-b800-b1400"
                spans.append((m.start(), m.end(), Kind.ID))
        return _replace(text, spans)

    def _phones(self, text: str, start: int, end: int) -> list[_Span]:
        """Phone numbers within text[start:end], by libphonenumber's matcher.

        Valid numbers of any region count; a number written with "+", with an area code in
        brackets, or after "tel"/"call" needs only to be possible. After "MRN", "NHS", "ID"... a
        number is an ID even if it could be dialled.
        """
        before = text[max(0, start - 24) : start]
        if _ID_HINT.search(before):
            return []
        candidate = text[start:end]
        lenient = "+" in candidate or "(" in candidate or bool(_PHONE_HINT.search(before))
        leniency = phonenumbers.Leniency.POSSIBLE if lenient else phonenumbers.Leniency.VALID
        found: list[tuple[int, int]] = []
        regions = self._regions[:1] if candidate.startswith("+") else self._regions
        for region in regions:
            matches = list(phonenumbers.PhoneNumberMatcher(candidate, region, leniency=leniency))
            found += [(start + m.start, start + m.end) for m in matches]
            if any(m.end - m.start >= len(candidate.strip("() ")) for m in matches):
                break  # the whole candidate is one number: no need to ask other regions
        if not found:
            return []
        # One [PHONE] for the group, not one per piece some region could dial.
        return [(min(s for s, _ in found), max(e for _, e in found), Kind.PHONE)]

    def _titled(self, text: str) -> Iterator[_Span]:
        """A name after a title: "Dr Underhill", "MRS O'NEILL", "dr smith"; not "MR BRAIN"."""
        for m in _TITLE.finditer(text):
            title = m.group("title")
            proper = title[0].isupper() and not title.isupper()
            start = m.start("words")
            end = None
            for w in _WORD.finditer(m.group("words")):
                word = w.group()
                core = word.rstrip(".").lower().removesuffix("'s").removesuffix("\u2019s")
                initial = len(word.rstrip(".")) == 1
                unknown = not all(p in self._words for p in _PARTS.findall(core))
                # After "Dr" or "Mrs" a capitalised word is a name even if it is also a word
                # ("Dr Rose Young"); after "DR" or "MR" only a word that is none ("MR BRAIN").
                if not (
                    unknown or initial or (proper and word[0].isupper() and not word.isupper())
                ):
                    break
                end = start + w.end()
            if end is not None:
                if text[end - 1] == "." and end - 1 > start + 1:
                    end -= 1  # the full stop of a sentence, not part of the name
                yield start, end, Kind.NAME

    # -- step 2 ----------------------------------------------------------------------------

    def _safe_token(self, token: str, banned: frozenset[str]) -> bool:
        low = token.lower()
        if low in banned:
            return False
        if low in self._words:
            return True
        if low.isalpha():
            return False
        if low.replace(".", "", 1).isdigit():
            if "." in low:
                return len(low) <= 8
            return len(low) <= 4 and not _YEAR.match(low)
        # letters and digits mixed ("T1W", "B30f", "5mm", "b1000"): short, few digits, and its
        # letters safe words or at most two stray single letters (an ID has more).
        if len(low) > 8 or sum(c.isdigit() for c in low) > 4:
            return False
        letters = [part for part in _SPLIT_LETTERS.split(low) if part]
        stray = [part for part in letters if part not in self._words]
        return len(stray) <= 2 and all(len(part) == 1 for part in stray)

    def _allow(self, text: str, banned: frozenset[str]) -> str:
        """Keep known-safe tokens and the marks; tidy what removal leaves behind."""
        words = self._words
        out: list[str] = []
        pos = 0
        for match in _TOKEN.finditer(text):
            low = match.group().lower()
            if low not in banned and (
                low in words  # most tokens: said here, without a call
                or (low.isdigit() and len(low) <= 3)
                or self._safe_token(low, banned)
            ):
                continue
            out.append(text[pos : match.start()])
            pos = match.end()
        if not out:
            return text.strip()
        out.append(text[pos:])
        cleaned = "".join(out)
        cleaned = _EMPTY_BRACKETS.sub("", cleaned)
        cleaned = _SPACES.sub(" ", cleaned)
        cleaned = _BEFORE_PUNCT.sub("", cleaned)
        cleaned = _AFTER_OPENING.sub(r"\1", cleaned)
        cleaned = _REPEATED.sub(r"\1", cleaned)
        return _EDGES.sub("", cleaned)


@cache
def _default_cleaner(extra: tuple[str, ...], regions: tuple[str, ...]) -> TextCleaner:
    from dicomnode.scrub.profile import rules_dir  # the profile loader is not needed here

    folder = rules_dir()
    words = read_words(folder / "safe-words.txt", folder / "vocabulary.txt")
    return TextCleaner([*words, *extra], regions=regions)
