"""The free-text cleaner: identifiers become typed placeholders, unknown words go.

Each sentence of the corpus plants one identifier among ordinary words; none of its digit runs
(3 or more) or its words may survive, its placeholder must be there, and so must the ordinary
words around it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicomnode.scrub.freetext import Identity, Kind, TextCleaner, read_words
from dicomnode.scrub.profile import rules_dir


@pytest.fixture(scope="module")
def cleaner() -> TextCleaner:
    return TextCleaner.default()


@pytest.fixture()
def identity() -> Identity:
    who = Identity()
    who.add(Kind.NAME, "Quartermaine^Zebulon^^Dr")
    who.add(Kind.NAME, "山田^太郎=やまだ^たろう")
    who.add(Kind.NAME, "Иванов^Пётр")
    who.add(Kind.NAME, "Müller^Jürgen")
    who.add(Kind.ID, "MRN8837461")
    who.add(Kind.ID, "ACC-2021-0042")
    who.add(Kind.ID, "1")  # a StudyID: too short to look for
    who.add(Kind.PHONE, "+44 20 7946 0958")
    who.add(Kind.PLACE, "Glenmorrow General Hospital")
    who.add(Kind.PLACE, "CTWEST07")
    who.add(Kind.DATE, "19550817")
    return who


# (text, the identifier planted in it, its placeholder, ordinary words that must survive)
# fmt: off
GENERIC = [
    # phone numbers, national and international
    ("please ring (846) 230-6756 after the scan", "(846) 230-6756", Kind.PHONE, "please ring after the scan"),
    ("please ring +1 586 508 9753 after the scan", "+1 586 508 9753", Kind.PHONE, "please ring after the scan"),
    ("contact 714.341.1118 for results", "714.341.1118", Kind.PHONE, "contact for results"),
    ("mobile +44 7700 900461 if delayed", "+44 7700 900461", Kind.PHONE, "mobile if delayed"),
    ("office 020 7946 0958 about contrast", "020 7946 0958", Kind.PHONE, "office about contrast"),
    ("ward phone 06 12 34 56 78 for transport", "06 12 34 56 78", Kind.PHONE, "ward phone for transport"),
    ("phone (02) 9876 5432 after the scan", "(02) 9876 5432", Kind.PHONE, "phone after the scan"),
    # e-mail addresses, URLs, IP addresses
    ("send images to zeb.q@example.org today", "zeb.q@example.org", Kind.EMAIL, "send images to today"),
    ("report to ct-team+urgent@mail.example.co.uk please", "ct-team+urgent@mail.example.co.uk", Kind.EMAIL, "report to please"),
    ("see https://pacs.example.org/viewer?study=731 for priors", "https://pacs.example.org/viewer?study=731", Kind.URL, "see for priors"),
    ("portal www.glenmorrow-imaging.com/ct for priors", "www.glenmorrow-imaging.com/ct", Kind.URL, "portal for priors"),
    ("upload to example.net/share/abc now", "example.net/share/abc", Kind.URL, "upload to now"),
    ("sent from 192.168.10.254 overnight", "192.168.10.254", Kind.IP, "sent from overnight"),
    ("gateway 2001:db8::8a2e:370:7334 was down", "2001:db8::8a2e:370:7334", Kind.IP, "gateway was down"),
    ("relay ::ffff:192.0.2.1 was down", "::ffff:192.0.2.1", Kind.IP, "relay was down"),
    # numbers shaped like MRNs, accession numbers, national IDs, postcodes
    ("MRN 8837461 for follow up", "8837461", Kind.ID, "for follow up"),
    ("accession A99301877 repeat", "A99301877", Kind.ID, "accession repeat"),
    ("SSN 123-45-6789 on file", "123-45-6789", Kind.ID, "on file"),
    ("NHS number 943 476 5919 checked", "943 476 5919", Kind.ID, "number checked"),
    ("hospital number RX12-345678 checked", "RX12-345678", Kind.ID, "hospital number checked"),
    ("request 2021/004217/3 urgent", "2021/004217/3", Kind.ID, "request urgent"),
    ("ref A1234-5678 urgent", "A1234-5678", Kind.ID, "ref urgent"),
    ("MRN: 1234 urgent", "1234", Kind.ID, "urgent"),
    ("NI number QQ 12 34 56 C on file", "QQ 12 34 56 C", Kind.ID, "number on file"),
    ("lives near SW1A 1AA with family", "SW1A 1AA", Kind.ID, "lives near with family"),
    ("postcode K1A 0B1 noted", "K1A 0B1", Kind.ID, "postcode noted"),
    ("lives at 1012 JS with family", "1012 JS", Kind.ID, "lives at with family"),
    ("zip 90210 noted", "90210", Kind.ID, "zip noted"),
    ("zip 12345-6789 noted", "12345-6789", Kind.ID, "zip noted"),
    # dates and times in the common written forms
    ("scan on 24-MAY-02 for review", "24-MAY-02", Kind.DATE, "scan on for review"),
    ("scan on May 24, 2002 for review", "May 24, 2002", Kind.DATE, "scan on for review"),
    ("scan on 24 May 2002 for review", "24 May 2002", Kind.DATE, "scan on for review"),
    ("scan on 24.05.2002 for review", "24.05.2002", Kind.DATE, "scan on for review"),
    ("scan on 5/24/02 for review", "5/24/02", Kind.DATE, "scan on for review"),
    ("scan on 20020524 for review", "20020524", Kind.DATE, "scan on for review"),
    ("scan on 2002-05-24T11:24:00 for review", "2002-05-24T11:24:00", Kind.DATE, "scan on for review"),
    ("scan on Tuesday 24th May for review", "Tuesday 24th May", Kind.DATE, "scan on for review"),
    ("scan on the 24th of May, 2002 for review", "24th of May, 2002", Kind.DATE, "scan on the for review"),
    ("scan at 11:24 for review", "11:24", Kind.TIME, "scan at for review"),
    ("scan at 11:24:05.123 for review", "11:24:05.123", Kind.TIME, "scan at for review"),
    ("scan at 11.24 am for review", "11.24 am", Kind.TIME, "scan at for review"),
    ("scan at 11h24 for review", "11h24", Kind.TIME, "scan at for review"),
    ("scan at 3pm for review", "3pm", Kind.TIME, "scan at for review"),
    ("scan at 09:00h for review", "09:00h", Kind.TIME, "scan at for review"),
    # ages over 89
    ("patient 92 years old with pain", "92 years old", Kind.AGE, "patient with pain"),
    ("patient age 93 with pain", "93", Kind.AGE, "patient age with pain"),
    ("patient 93 yo with pain", "93 yo", Kind.AGE, "patient with pain"),
    ("patient 94y with pain", "94y", Kind.AGE, "patient with pain"),
    ("a 95-year-old with pain", "95-year-old", Kind.AGE, "a with pain"),
    ("patient 096Y with pain", "096Y", Kind.AGE, "patient with pain"),
    # a name after a title
    ("seen by Dr Underhill today", "Underhill", Kind.NAME, "seen by Dr today"),
    ("DR OKONKWO reviewed", "OKONKWO", Kind.NAME, "DR reviewed"),
    ("Mrs O'Neill called", "O'Neill", Kind.NAME, "Mrs called"),
    ("Prof. J. Kowalski agreed", "J. Kowalski", Kind.NAME, "Prof. agreed"),
    ("Nurse Ratched present", "Ratched", Kind.NAME, "Nurse present"),
    ("Doctor Young reviewed", "Young", Kind.NAME, "Doctor reviewed"),
]

OWN = [
    # the instance's own names in other orders and cases, and in other scripts
    ("Quartermaine, Zebulon for CT", "Quartermaine Zebulon", Kind.NAME, "for CT"),
    ("ZEBULON QUARTERMAINE for CT", "ZEBULON QUARTERMAINE", Kind.NAME, "for CT"),
    ("Z. Quartermaine for CT", "Z Quartermaine", Kind.NAME, "for CT"),
    ("patient zebulon for CT", "zebulon", Kind.NAME, "patient for CT"),
    ("CT for 山田太郎 today", "山田 太郎", Kind.NAME, "CT for today"),
    ("CT for ИВАНОВ Пётр today", "ИВАНОВ Пётр", Kind.NAME, "CT for today"),
    ("CT for MULLER jurgen today", "MULLER jurgen", Kind.NAME, "CT for today"),
    # IDs whole with other separators, and their digit runs
    ("ID mrn-8837461 checked", "mrn-8837461", Kind.ID, "ID checked"),
    ("ref 8837461 checked", "8837461", Kind.ID, "ref checked"),
    ("ref acc 2021 0042 checked", "acc 2021 0042", Kind.ID, "ref checked"),
    # phone by its digits: national and local forms
    ("ring 7946 0958 today", "7946 0958", Kind.PHONE, "ring today"),
    ("ring 0044 (0)20 79460958 today", "0044 (0)20 79460958", Kind.PHONE, "ring today"),
    # places: the phrase, and words that are no known word
    ("from glenmorrow general hospital today", "glenmorrow general hospital", Kind.PLACE, "from today"),
    ("transfer from Glenmorrow today", "Glenmorrow", Kind.PLACE, "transfer from today"),
    ("done on ctwest07 today", "ctwest07", Kind.PLACE, "done on today"),
    # the date in other written forms
    ("born 17/08/1955 per notes", "17/08/1955", Kind.DATE, "born per notes"),
    ("born 17 Aug 1955 per notes", "17 Aug 1955", Kind.DATE, "born per notes"),
    ("born 1955 08 17 per notes", "1955 08 17", Kind.DATE, "born per notes"),
    ("born 17081955 per notes", "17081955", Kind.DATE, "born per notes"),
]
# fmt: on


def _assert_removed(out: str, secret: str, kind: Kind, kept: str) -> None:
    assert f"[{kind}]" in out, out
    for run in re.findall(r"\d{3,}", secret):
        assert run not in out, out
    if kind is Kind.AGE:
        assert not re.search(r"\d", out), out
    for word in re.findall(r"[^\W\d_]{2,}", secret):
        assert not re.search(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", out, re.IGNORECASE), out
    for word in kept.split():
        assert re.search(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", out), (word, out)


@pytest.mark.parametrize(("text", "secret", "kind", "kept"), GENERIC)
def test_identifiers_in_no_field_become_placeholders(
    cleaner: TextCleaner, text: str, secret: str, kind: Kind, kept: str
) -> None:
    _assert_removed(cleaner.clean(text), secret, kind, kept)
    _assert_removed(cleaner.clean(text, keep_unknown=True), secret, kind, kept)


@pytest.mark.parametrize(("text", "secret", "kind", "kept"), OWN)
def test_the_instances_own_values_become_placeholders(
    cleaner: TextCleaner, identity: Identity, text: str, secret: str, kind: Kind, kept: str
) -> None:
    _assert_removed(cleaner.clean(text, identity), secret, kind, kept)
    _assert_removed(cleaner.clean(text, identity, keep_unknown=True), secret, kind, kept)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Reason: chest pain, call Dr Underhill on (846) 230-6756 before 24-MAY-02",
            "Reason: chest pain, call Dr [NAME] on [PHONE] before [DATE]",
        ),
        ("CT CHEST 12/03/2021 10:42", "CT CHEST [DATE] [TIME]"),
        ("seen 2002/05/24 11:24", "seen [DATE] [TIME]"),
        ("Head w/o contrast for John Smith", "Head w/o contrast for"),
        ("Scan 1985 MRN 12345678", "Scan [ID]"),
        ("Brain^Zebulon", "Brain"),
        ("Thorax Müller 山田太郎 Иванов", "Thorax"),
        ("CT_HEAD_Smith", "CT_HEAD"),
        (
            "Reason: query PE, history of DVT, rule out fracture",
            "Reason: query PE, history of DVT, rule out fracture",
        ),
        ("call the referring doctor", "call the referring doctor"),
        ("(846) 230-6756", "[PHONE]"),
        ("zeb.q@example.org", "[EMAIL]"),
        ("", ""),
        ("Quartermaine Zebulon", ""),  # not the identity here: unknown words, all removed
        ("\ue000\ue003 CT", "CT"),  # private-use characters cannot pass for placeholders
    ],
)
def test_cleaned_text(cleaner: TextCleaner, text: str, expected: str) -> None:
    assert cleaner.clean(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "CT CHEST 5 mm",
        "AX T1W 1.25mm B30f",
        "Matrix 512 x 512 120 kV 3.0 T",
        "DWI b1000 ADC",
        "DWI b50-b800-b1400",
        "b-values 0 50 100 500 1000",
        "3 phase liver 30/70/180 s",
        "Flip angle 90 TE 90",
        "MR BRAIN 1500 MS",
        "slices 1.25 0.625 2.5 mm",
        "AX T1 POST GAD series 3 of 12",
        "Lung 1.25mm B70f",
    ],
)
def test_measurements_and_short_numbers_survive(cleaner: TextCleaner, text: str) -> None:
    assert cleaner.clean(text) == text


def test_identity_beats_the_vocabulary(cleaner: TextCleaner) -> None:
    who = Identity()
    who.add(Kind.NAME, "Chest^Brain")
    who.add(Kind.ID, "ACC123")
    assert cleaner.clean("CT CHEST BRAIN HEAD ACC123", who) == "CT [NAME] HEAD [ID]"


def test_text_of_only_an_identity_value(cleaner: TextCleaner, identity: Identity) -> None:
    assert cleaner.clean("Quartermaine^Zebulon", identity) == "[NAME]"
    assert cleaner.clean("MRN8837461", identity) == "[ID]"
    assert cleaner.clean("   ", identity) == ""


def test_a_short_id_is_not_searched(cleaner: TextCleaner, identity: Identity) -> None:
    assert cleaner.clean("series 1 of 3", identity) == "series 1 of 3"


def test_keep_unknown_only_replaces_findings(cleaner: TextCleaner, identity: Identity) -> None:
    text = "Zorblax protocol Quartermaine 020 7946 0958 Paris"
    assert (
        cleaner.clean(text, identity, keep_unknown=True) == "Zorblax protocol [NAME] [PHONE] Paris"
    )
    assert cleaner.clean(text, identity) == "protocol [NAME] [PHONE]"


def test_identity_is_cheap_until_used(cleaner: TextCleaner) -> None:
    who = Identity()
    assert not who
    who.add(Kind.NAME, "  ")
    assert not who
    who.add(Kind.NAME, "Quartermaine^Zebulon")
    assert who
    assert cleaner.clean("Dr Quartermaine", who) == "Dr [NAME]"
    who.add(Kind.ID, "HOSP55190023")  # added after first use: searched too
    assert cleaner.clean("ref HOSP55190023", who) == "ref [ID]"


def test_titles_before_ordinary_words_are_not_names(cleaner: TextCleaner) -> None:
    assert cleaner.clean("MR BRAIN W/O CONTRAST") == "MR BRAIN W/O CONTRAST"
    assert cleaner.clean("MS lesion follow up") == "MS lesion follow up"


def test_safe_words_win_over_the_name_filter() -> None:
    folder = rules_dir()
    vocabulary = set(read_words(folder / "vocabulary.txt"))
    safe = set(read_words(folder / "safe-words.txt"))
    for name in ("john", "mary", "smith", "zebulon", "white", "young"):
        assert name not in vocabulary
    assert {"white", "young", "reason", "history", "pain"} <= safe
    assert {"referring", "please", "before"} <= vocabulary | safe


def test_vocabulary_file_is_small_and_says_where_it_comes_from() -> None:
    path = rules_dir() / "vocabulary.txt"
    assert path.stat().st_size < 420_000
    header = path.read_text(encoding="utf-8")[:1000]
    assert "wamerican" in header and "Faker" in header and "generate_vocabulary.py" in header


def test_word_files_expand_suffixes(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# comment\nscan -ned -s  # forms\nct mr\n", encoding="utf-8")
    assert read_words(path) == ["scan", "scanned", "scans", "ct", "mr"]


@pytest.mark.parametrize("digit", ["²", "³", "¹", "⁴", "①", "٣"])
def test_digits_int_cannot_read_are_text_not_a_crash(cleaner: TextCleaner, digit: str) -> None:
    """``str.isdigit`` is true of superscripts and circled numbers, which ``int`` cannot read:
    a birth date with one (a byte of a date changed in transit, found by the mutation
    campaign through the node) made the cleaner raise, and every instance of it was
    quarantined as scrub-failed. Such a date is not a date; the text around it is cleaned as
    any other."""
    who = Identity()
    who.add(Kind.NAME, "Quartermaine^Zebulon")
    who.add(Kind.DATE, f"2{digit}000101")
    who.add(Kind.DATE, "19550817")
    text = f"Zebulon seen 17.08.1955, lesion 2{digit}{digit} mm, dose 1{digit} mGy {digit}{digit}{digit}{digit}"
    cleaned = cleaner.clean(text, who)
    assert "Zebulon" not in cleaned and "1955" not in cleaned
    assert "[DATE]" in cleaned and "lesion" in cleaned
