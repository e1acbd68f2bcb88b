"""The lookup table: the study's own subject IDs and research accessions, from a CSV."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomnode.config import load_config
from dicomnode.errors import ConfigError
from dicomnode.scrub.lookup import LookupTable, load_lookup

# Values that must never appear in an error message (the table is PHI).
SECRET_PATIENT = "MRN-7734901"
SECRET_SUBJECT = "SUBJ-SECRET-9"

TABLE = (
    "\ufeffPatient_ID , Issuer,SUBJECT_ID,accession_number,research_accession\n"
    "12345,HOSP_A,SUBJ-001,,\n"
    "12345,HOSP_B,SUBJ-002,,\n"
    " 67890 ,,  SUBJ-003 ,A2024-77,RACC-0001\n"
    "\n"
    ",,,A2024-78,RACC-0002\n"
    "55555,,SUBJ-004,,\n"
    "55555,HOSP_A,SUBJ-005,,\n"
)


def write(tmp_path: Path, text: str, name: str = "lookup.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def table(tmp_path: Path) -> LookupTable:
    return load_lookup(write(tmp_path, TABLE))


def test_mapped_patients(table: LookupTable) -> None:
    assert table.subject_id("67890") == "SUBJ-003"
    assert table.subject_id("67890  ", "ANY_ISSUER") == "SUBJ-003"  # DICOM pads with spaces
    assert table.patients == 5
    assert table.accessions == 2


def test_issuer_specific_rows(table: LookupTable) -> None:
    assert table.subject_id("12345", "HOSP_A") == "SUBJ-001"
    assert table.subject_id("12345", "HOSP_B ") == "SUBJ-002"
    # A row with an issuer matches only that issuer.
    assert table.subject_id("12345") is None
    assert table.subject_id("12345", "HOSP_C") is None
    # The issuer's own row wins over the row without an issuer.
    assert table.subject_id("55555", "HOSP_A") == "SUBJ-005"
    assert table.subject_id("55555", "HOSP_B") == "SUBJ-004"
    assert table.subject_id("55555") == "SUBJ-004"


def test_unmapped_is_none(table: LookupTable) -> None:
    assert table.subject_id("99999") is None
    assert table.subject_id("") is None
    assert table.subject_id("   ") is None
    assert table.accession("A0000-00") is None
    assert table.accession("") is None


def test_accession_mapping(table: LookupTable) -> None:
    assert table.accession("A2024-77") == "RACC-0001"
    assert table.accession("A2024-78 ") == "RACC-0002"  # an accession-only row


def test_minimal_table_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, "subject_id,patient_id\r\nS1,P1\r\n")
    table = load_lookup(path)
    assert table.source == path.resolve()
    assert table.subject_id("P1") == "S1"
    assert table.accession("P1") is None
    assert "P1" not in repr(table) and "S1" not in repr(table)


def test_quoted_values_with_commas(tmp_path: Path) -> None:
    table = load_lookup(write(tmp_path, 'patient_id,subject_id\n"12,34","S, 1"\n'))
    assert table.subject_id("12,34") == "S, 1"


BAD = [
    # (CSV text, line named, words of the fix)
    (f"patient,subject_id\n{SECRET_PATIENT},{SECRET_SUBJECT}\n", 1, "unknown column"),
    ("subject_id\nS1\n", 1, "missing column(s) patient_id (the header has: subject_id)"),
    ("patient_id,subject_id,name\n1,S1,Doe\n", 1, "remove it"),
    ("patient_id,subject_id,patient_id\n1,S1,2\n", 1, "appears twice"),
    ("patient_id,subject_id,accession_number\n1,S1,A1\n", 1, "add the column research_accession"),
    (f"patient_id,subject_id\nP1,S1\n{SECRET_PATIENT},{SECRET_SUBJECT},x\n", 3, "field(s)"),
    (f"patient_id,subject_id\nP1,S1\n{SECRET_PATIENT}\n", 3, "double quotes"),
    (f"patient_id,subject_id\n{SECRET_PATIENT},\n", 2, "without subject_id"),
    (f"patient_id,subject_id\n,{SECRET_SUBJECT}\n", 2, "without patient_id"),
    (
        f"patient_id,subject_id\n{SECRET_PATIENT},{SECRET_SUBJECT}\nP2,S2\n"
        f"{SECRET_PATIENT},OTHER\n",
        4,
        "different subject ID on line 2",
    ),
    (
        f"patient_id,issuer,subject_id\n{SECRET_PATIENT},H1,{SECRET_SUBJECT}\n"
        f"{SECRET_PATIENT},H1,OTHER\n",
        3,
        "different subject ID on line 2",
    ),
    (
        f"patient_id,subject_id\n{SECRET_PATIENT},{SECRET_SUBJECT}\nP2,{SECRET_SUBJECT}\n",
        3,
        "already given to another patient on line 2",
    ),
    (
        f"patient_id,issuer,subject_id\n{SECRET_PATIENT},H1,{SECRET_SUBJECT}\n"
        f"P2,,{SECRET_SUBJECT}\n",
        3,
        "two patients must not become one research subject",
    ),
    (f"patient_id,subject_id\n{SECRET_PATIENT},{'S' * 65}\n", 2, "more than the 64"),
    (f"patient_id,subject_id\n{SECRET_PATIENT},SUBJ\\001\n", 2, "backslash"),
    (f'patient_id,subject_id\n{SECRET_PATIENT},"SUBJ\t001"\n', 2, "control character"),
    (f"patient_id,subject_id\n{SECRET_PATIENT},SUBJ-É\n", 2, "outside ASCII"),
    (
        "patient_id,subject_id,accession_number,research_accession\n"
        f"{SECRET_PATIENT},{SECRET_SUBJECT},A1,{'R' * 17}\n",
        2,
        "more than the 16",
    ),
    (
        f"patient_id,subject_id,accession_number,research_accession\n,,{SECRET_PATIENT},\n",
        2,
        "fill in both or neither",
    ),
    (
        "patient_id,subject_id,accession_number,research_accession\n"
        f",,{SECRET_PATIENT},R1\n,,{SECRET_PATIENT},R2\n",
        3,
        "different research accession on line 2",
    ),
    (
        "patient_id,subject_id,accession_number,research_accession\n"
        f",,{SECRET_PATIENT},R1\n,,A2,R1\n",
        3,
        "already given to another accession number on line 2",
    ),
]


@pytest.mark.parametrize(("text", "line", "fix"), BAD)
def test_bad_tables_name_the_line_and_the_fix_never_the_value(
    tmp_path: Path, text: str, line: int, fix: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_lookup(path)
    message = str(caught.value)
    assert message.startswith(f"{path.resolve()}, line {line}: "), message
    assert fix in message
    assert SECRET_PATIENT not in message and SECRET_SUBJECT not in message


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("patient_id,subject_id\nP1,S1\nMüller,S2\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r", line 3: not UTF-8; save the table as 'CSV UTF-8'"):
        load_lookup(path)


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="the lookup table is empty; it needs a header row"):
        load_lookup(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the lookup table \(No such file"):
        load_lookup(tmp_path / "absent.csv")


def test_header_only_is_an_empty_table(tmp_path: Path) -> None:
    table = load_lookup(write(tmp_path, "patient_id,subject_id\n"))
    assert table.patients == 0 and table.subject_id("P1") is None


def test_same_row_twice_is_fine(tmp_path: Path) -> None:
    table = load_lookup(write(tmp_path, "patient_id,subject_id\nP1,S1\nP1,S1\n"))
    assert table.subject_id("P1") == "S1"


def test_one_person_known_to_two_hospitals_may_share_a_subject(tmp_path: Path) -> None:
    text = "patient_id,issuer,subject_id\nA-1,HOSP_A,S1\nB-9,HOSP_B,S1\n"
    table = load_lookup(write(tmp_path, text))
    assert table.subject_id("A-1", "HOSP_A") == table.subject_id("B-9", "HOSP_B") == "S1"


def test_reload_after_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "patient_id,subject_id\nP1,S1\n")
    first = load_lookup(path)
    assert load_lookup(path) is first  # unchanged: the cached table, nothing re-read
    assert load_lookup(tmp_path / "." / "lookup.csv") is first  # same file, another spelling

    path.write_text("patient_id,subject_id\nP1,S9\nP2,S2\n", encoding="utf-8")
    second = load_lookup(path)
    assert second is not first
    assert second.subject_id("P1") == "S9" and second.subject_id("P2") == "S2"

    # Same size, same modification time, but a new file put in place (editors rename).
    stat = path.stat()
    replacement = write(tmp_path, "patient_id,subject_id\nP1,S7\nP2,S2\n", "new.csv")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(path)
    assert load_lookup(path).subject_id("P1") == "S7"

    # A change that breaks the table is an error on the next load, not the old table.
    path.write_text("patient_id,subject_id\nP1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2"):
        load_lookup(path)


def config_file(tmp_path: Path, lookup: str) -> Path:
    path = tmp_path / "dicomnode.yaml"
    path.write_text(f"scrub:\n  lookup: {lookup}\n", encoding="utf-8")
    return path


def test_config_resolves_and_loads_the_table(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    write(tmp_path / "tables", "patient_id,subject_id\nP1,S1\n", "study.csv")
    config = load_config(config_file(tmp_path, "{path: tables/study.csv}"))
    assert config.scrub.lookup is not None
    assert config.scrub.lookup.path == tmp_path / "tables" / "study.csv"
    assert config.scrub.lookup.unmapped == "quarantine"
    assert load_lookup(config.scrub.lookup.path).subject_id("P1") == "S1"

    config = load_config(config_file(tmp_path, "{path: tables/study.csv, unmapped: pseudonym}"))
    assert config.scrub.lookup is not None and config.scrub.lookup.unmapped == "pseudonym"
    assert load_config(None).scrub.lookup is None  # the embedded defaults: no table


def test_config_with_a_bad_table_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, f"patient_id,subject_id\nP1,S1\n{SECRET_PATIENT},\n", "study.csv")
    config = config_file(tmp_path, "{path: study.csv}")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert message.startswith(f"{config}, line 2: scrub.lookup: {tmp_path / 'study.csv'}, line 3: ")
    assert SECRET_PATIENT not in message


def test_config_errors_in_the_lookup_settings(tmp_path: Path) -> None:
    write(tmp_path, "patient_id,subject_id\n", "study.csv")
    with pytest.raises(
        ConfigError, match=r"scrub\.lookup\.unmapped: 'drop' is not a choice here; use 'quarantine'"
    ):
        load_config(config_file(tmp_path, "{path: study.csv, unmapped: drop}"))
    with pytest.raises(ConfigError, match=r"scrub\.lookup\.path: required, and not given"):
        load_config(config_file(tmp_path, "{unmapped: pseudonym}"))
    with pytest.raises(ConfigError, match=r"scrub\.lookup: .*absent\.csv: cannot read"):
        load_config(config_file(tmp_path, "{path: absent.csv}"))


def test_check_config_reports_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicomnode.cli import main

    write(tmp_path, f"patient_id,subject_id\n{SECRET_PATIENT},S1\n", "study.csv")
    assert main(["check-config", "--config", str(config_file(tmp_path, "{path: study.csv}"))]) == 0
    out = capsys.readouterr().out
    assert f"lookup table: {tmp_path / 'study.csv'} (1 patient(s), 0 accession" in out
    assert SECRET_PATIENT not in out

    write(tmp_path, f"patient_id,subject_id\n{SECRET_PATIENT},\n", "study.csv")
    assert main(["check-config", "--config", str(tmp_path / "dicomnode.yaml")]) == 2
    err = capsys.readouterr().err
    assert "study.csv, line 2: patient_id without subject_id" in err
    assert SECRET_PATIENT not in err
