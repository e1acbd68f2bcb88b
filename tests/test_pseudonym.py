"""Keyed pseudonyms: valid, stable across runs and processes, distinct, secret-dependent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.errors import SecretError
from dicomnode.scrub.pseudonym import DEMO_SECRET, Pseudonymizer, load_secret
from tests.conftest import SECRET

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def test_uid_is_valid_and_stable() -> None:
    p = Pseudonymizer(SECRET)
    out = p.uid("1.2.840.113619.2.55.3.604688119.969.1268071029.320")
    assert out.startswith("2.25.") and len(out) <= 64 and UID.match(out)
    assert Pseudonymizer(SECRET).uid("1.2.840.113619.2.55.3.604688119.969.1268071029.320") == out


def test_uids_differ_for_different_inputs_and_secrets() -> None:
    p = Pseudonymizer(SECRET)
    uids = {p.uid(f"1.2.3.{n}") for n in range(2000)}
    assert len(uids) == 2000
    assert Pseudonymizer(b"another-secret-of-enough-length").uid("1.2.3.1") != p.uid("1.2.3.1")


def test_same_pseudonyms_in_another_process() -> None:
    code = (
        "from dicomnode.scrub.pseudonym import Pseudonymizer;"
        f"p = Pseudonymizer({SECRET!r});"
        "print(p.uid('1.2.3.4'), p.patient_id('MRN1', 'DN'), p.date_shift_days('MRN1'))"
    )
    here = Pseudonymizer(SECRET)
    expected = (
        f"{here.uid('1.2.3.4')} {here.patient_id('MRN1', 'DN')} {here.date_shift_days('MRN1')}"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_patient_id_and_date_shift() -> None:
    p = Pseudonymizer(SECRET, date_shift_days=(-30, -5))
    pid = p.patient_id("MRN1", "SITE-")
    assert pid.startswith("SITE-") and len(pid) == 21 and pid == p.patient_id("MRN1", "SITE-")
    assert p.patient_id("MRN2", "SITE-") != pid
    shifts = {p.date_shift_days(f"MRN{n}") for n in range(500)}
    assert shifts <= set(range(-30, -4)) and len(shifts) > 20


def test_secret_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("f" * 64 + "\n")
    monkeypatch.setenv("DICOMNODE_SECRET_FILE", str(secret_file))
    assert load_secret() == b"f" * 64
    monkeypatch.setenv("DICOMNODE_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(SecretError, match="cannot read the secret file"):
        load_secret()
    monkeypatch.delenv("DICOMNODE_SECRET_FILE")
    monkeypatch.setenv("DICOMNODE_SECRET", "short")
    with pytest.raises(SecretError, match="at least 16"):
        load_secret()


def test_refuses_to_run_without_a_secret_unless_demo(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DICOMNODE_SECRET")
    with pytest.raises(SecretError, match="openssl rand"):
        load_secret()
    assert load_secret(demo=True) == DEMO_SECRET
    assert "DEMO MODE" in caplog.text and "PUBLIC" in caplog.text
