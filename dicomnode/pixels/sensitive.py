"""Sensitive-text mode: which words read from the pixels are PHI.

Text is sensitive when it contains a word of the instance's own identity attributes (names,
IDs, institution, taken from the header before scrubbing; dates in every common notation), or
matches a PHI pattern: a date, a long number or identifier, a phone number, an address, a
name written as ``Family^Given`` or ``Family, Given``. Laterality markers and scale
annotations (numbers with units) are never sensitive. Unreadable text (low confidence) counts
as sensitive: it cannot be shown to be safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["SensitiveText"]

_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b",  # 12/03/2021, 2021-03-12
        r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b",  # 20210312
        r"\b\d{1,2}[ -]?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?[ -]?\d{2,4}\b",
        r"\b\d{5,}\b",  # medical record and accession numbers
        r"\b(?=[A-Z0-9-]*\d)(?=[A-Z0-9-]*[A-Z])[A-Z0-9-]{6,}\b",  # MRN-like identifiers
        r"(?:\+\d{1,3}[ .-]?)?\(?\d{2,4}\)?[ .-]\d{3}[ .-]\d{3,4}\b",  # phone numbers
        r"\b\d+\s+[A-Z][a-z]+\s+(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr|way|"
        r"court|ct|boulevard|blvd|place|pl|crescent|close)\b",  # street addresses
        r"\b[A-Z][A-Za-z'-]+\^[A-Z][A-Za-z'-]+",  # DICOM PN: Family^Given
        r"\b[A-Z][a-z'-]+,\s*[A-Z][a-z'-]+\b",  # Family, Given
        r"\b(?:MRN|DOB|PID|ACC|SSN|NHS)\b",  # labels that announce PHI
    )
]
_SAFE = re.compile(
    r"^(?:L|R|LT|RT|LEFT|RIGHT|BILAT|ANT|POST|SUP|INF|AP|PA|LAT|"  # laterality, views
    r"[<>=]?\d+(?:\.\d+)?\s*(?:mm|cm|m|s|ms|hz|khz|mhz|db|%|x|deg|°|bpm|fps|cm/s|mm/s)?)$",
    re.IGNORECASE,
)


class SensitiveText:
    """Decides, for one instance, whether a piece of recognised text is PHI."""

    def __init__(self, identity_values: Iterable[str], min_confidence: float = 0.5) -> None:
        terms: set[str] = set()
        for value in identity_values:
            for token in re.findall(r"[^\W_]+", value.replace("^", " ")):
                if len(token) >= 2 and not _SAFE.match(token):
                    terms.add(token.lower())
            digits = re.sub(r"\D", "", value)
            if len(digits) == 8:  # a DA value: also its common written forms
                y, m, d = digits[:4], digits[4:6], digits[6:]
                for form in (f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{y}-{m}-{d}", f"{d}.{m}.{y}"):
                    terms.add(form)
        self.terms = frozenset(terms)
        self.min_confidence = min_confidence

    def is_sensitive(self, text: str, confidence: float = 1.0) -> bool:
        text = text.strip()
        if not text:
            return False
        if confidence < self.min_confidence:
            return True
        lowered = text.lower()
        if any(term in lowered for term in self.terms if not term.isalnum()):
            return True
        tokens = re.findall(r"[^\W_]+", lowered)
        if any(token in self.terms for token in tokens):
            return True
        if all(_SAFE.match(token) for token in text.split()):
            return False
        return any(pattern.search(text) for pattern in _PATTERNS)
