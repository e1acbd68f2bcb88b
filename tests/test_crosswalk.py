"""The encrypted crosswalk: only the honest broker's private key reads it, and every
re-identification is audited."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dicomnode.cli import main
from dicomnode.config import load_config
from dicomnode.crosswalk import (
    BUCKET,
    CrosswalkWriter,
    check_public_key,
    generate_keypair,
    read_crosswalk,
)
from dicomnode.errors import ConfigError, InstanceError

# Planted originals: none may appear in any file the node or the CLI writes.
PATIENT = "MRN-PLANTED-4471"
ACCESSION = "ACC-PLANTED-77"
STUDY = "1.2.826.0.1.3680043.99.4471.77"
RECORDS = [
    ("PatientID", PATIENT, "DN7Q2KX4M9PLR3TV1"),
    ("AccessionNumber", ACCESSION, "RACC-0001"),
    ("StudyInstanceUID", STUDY, "2.25.118392017744210987"),
]


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_keypair()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_records(path: Path, public: str) -> None:
    with CrosswalkWriter(path, public) as writer:
        for kind, original, pseudonym in RECORDS:
            writer.record(kind, original, pseudonym)


def test_round_trip_with_the_private_key(tmp_path: Path, keys: tuple[str, str]) -> None:
    private, public = keys
    assert private.startswith("AGE-SECRET-KEY-1") and public.startswith("age1")
    path = tmp_path / "sub" / "crosswalk"
    write_records(path, public)
    assert list(read_crosswalk(path, private)) == RECORDS
    assert mode(path) == 0o600


def test_each_triple_is_written_once_per_process(tmp_path: Path, keys: tuple[str, str]) -> None:
    private, public = keys
    path = tmp_path / "crosswalk"
    writer = CrosswalkWriter(path, public)
    for _ in range(50):  # a study of 50 instances
        for kind, original, pseudonym in RECORDS:
            writer.record(kind, original, pseudonym)
    writer.record("PatientID", "", "DNEMPTY")  # nothing to re-identify: not written
    writer.close()
    assert len(path.read_bytes().splitlines()) == 3
    # A new process (here: a new writer) may write them again; readers see duplicates.
    write_records(path, public)
    assert list(read_crosswalk(path, private)) == RECORDS + RECORDS


def test_unknown_kind_is_refused(tmp_path: Path, keys: tuple[str, str]) -> None:
    writer = CrosswalkWriter(tmp_path / "crosswalk", keys[1])
    with pytest.raises(ValueError, match="PatientID, AccessionNumber, StudyInstanceUID"):
        writer.record("PatientName", PATIENT, "X")
    assert not (tmp_path / "crosswalk").exists()


def test_nothing_readable_without_the_key(tmp_path: Path, keys: tuple[str, str]) -> None:
    path = tmp_path / "crosswalk"
    write_records(path, keys[1])
    with CrosswalkWriter(path, keys[1]) as writer:
        writer.record("PatientID", "X", "Y")  # the shortest possible record
        writer.record("StudyInstanceUID", "1." + "2" * 62, "2.25." + "9" * 39)  # a long one
    data = path.read_bytes()
    lines = data.splitlines()
    sealed = [base64.b64decode(line, validate=True) for line in lines]
    for planted in [v for record in RECORDS for v in record]:
        assert planted.encode() not in data
        assert all(planted.encode() not in blob for blob in sealed)
    # Short and long, every kind: one payload length, so a record singles out nothing.
    # (age adds a "grease" stanza of random length to each header: noise, not information.)
    assert all(blob.startswith(b"age-encryption.org/v1\n-> X25519 ") for blob in sealed)
    payloads = {len(blob) - blob.index(b"\n", blob.index(b"\n--- ") + 1) - 1 for blob in sealed}
    assert payloads == {16 + BUCKET + 16}  # nonce, one padded chunk, its tag


def test_oversized_values_round_up_to_the_next_bucket(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    private, public = keys
    path = tmp_path / "crosswalk"
    with CrosswalkWriter(path, public) as writer:
        writer.record("PatientID", "P" * 300, "DN1")
        writer.record("PatientID", "P", "DN2")
    long, short = (base64.b64decode(line) for line in path.read_bytes().splitlines())

    def payload(blob: bytes) -> int:
        return len(blob) - blob.index(b"\n", blob.index(b"\n--- ") + 1) - 1

    assert payload(long) - payload(short) == BUCKET  # 300 characters: a second bucket
    assert [r[1] for r in read_crosswalk(path, private)] == ["P" * 300, "P"]


def test_wrong_key_is_a_clear_error(tmp_path: Path, keys: tuple[str, str]) -> None:
    path = tmp_path / "crosswalk"
    write_records(path, keys[1])
    other_private, _ = generate_keypair()
    with pytest.raises(ConfigError, match=r"the key opens none of its 3 record\(s\)"):
        list(read_crosswalk(path, other_private))
    with pytest.raises(ConfigError, match="not an age X25519 key") as caught:
        read_crosswalk(path, "AGE-SECRET-KEY-1NOTAKEY")  # raised at the call, not later
    assert "NOTAKEY" not in str(caught.value)
    with pytest.raises(ConfigError, match="no private key found"):
        read_crosswalk(path, "# a comment only\n")
    with pytest.raises(ConfigError, match="cannot read the crosswalk"):
        read_crosswalk(tmp_path / "absent", keys[0])
    empty = tmp_path / "empty"
    empty.touch()
    assert list(read_crosswalk(empty, other_private)) == []  # nothing written yet


def test_key_rotation_and_damaged_lines(
    tmp_path: Path,
    keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    private, public = keys
    new_private, new_public = generate_keypair()
    path = tmp_path / "crosswalk"
    write_records(path, public)
    writer = CrosswalkWriter(path, new_public)
    real_write = os.write
    calls = []

    def short_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return real_write(fd, data[: len(data) // 2] if len(calls) == 1 else data)

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(InstanceError) as caught:
        writer.record("PatientID", "P-NEW", "DN-NEW")
    assert caught.value.reason == "crosswalk-failed"
    assert "P-NEW" not in str(caught.value)
    monkeypatch.undo()
    writer.record("PatientID", "P-NEW", "DN-NEW")  # not remembered: written on the retry
    writer.close()

    with caplog.at_level(logging.WARNING, logger="dicomnode.crosswalk"):
        assert list(read_crosswalk(path, private)) == RECORDS
    assert "2 record(s) not opened by this key (lines 4, 5)" in caplog.text
    both = f"# old\n{private}\n# new\n{new_private}\n"
    assert list(read_crosswalk(path, both))[-1] == ("PatientID", "P-NEW", "DN-NEW")


def test_file_mode_is_0600_whatever_the_umask_or_the_file(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    path = tmp_path / "crosswalk"
    old = os.umask(0)
    try:
        write_records(path, keys[1])
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    path.chmod(0o644)
    write_records(path, keys[1])
    assert mode(path) == 0o600


def _append_many(path: str, public: str, worker: int, count: int, start: Any) -> None:
    start.wait()  # both processes append at the same time
    with CrosswalkWriter(Path(path), public) as writer:
        for i in range(count):
            writer.record("StudyInstanceUID", f"1.2.3.{worker}.{i}", f"2.25.{worker}{i:05d}")


def test_two_processes_append_at_once(tmp_path: Path, keys: tuple[str, str]) -> None:
    private, public = keys
    path = tmp_path / "crosswalk"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(2)
    count = 300
    workers = [
        context.Process(target=_append_many, args=(str(path), public, n, count, start))
        for n in (1, 2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    records = list(read_crosswalk(path, private))
    assert len(records) == 2 * count == len(path.read_bytes().splitlines())
    assert {r[1] for r in records} == {f"1.2.3.{w}.{i}" for w in (1, 2) for i in range(count)}


def test_check_public_key(keys: tuple[str, str]) -> None:
    private, public = keys
    assert check_public_key(f"  {public}\n") == public
    with pytest.raises(ValueError, match="PRIVATE key") as caught:
        check_public_key(private)
    assert private not in str(caught.value)
    with pytest.raises(ValueError, match="not an age X25519 public key"):
        check_public_key("ssh-ed25519 AAAA")
    broken = public[:-1] + ("q" if public[-1] != "q" else "p")
    with pytest.raises(ValueError, match="checksum"):
        check_public_key(broken)
    with pytest.raises(ConfigError, match=r"scrub\.crosswalk\.public_key"):
        CrosswalkWriter(Path("unused"), broken)


def crosswalk_config(tmp_path: Path, public: str, audit: str = "audit/audit.jsonl") -> Path:
    path = tmp_path / "dicomnode.yaml"
    path.write_text(
        "scrub:\n"
        f"  crosswalk: {{path: state/crosswalk, public_key: {public}}}\n"
        f"logging: {{audit_file: {audit}}}\n",
        encoding="utf-8",
    )
    return path


def test_config(tmp_path: Path, keys: tuple[str, str]) -> None:
    private, public = keys
    config = load_config(crosswalk_config(tmp_path, public))
    assert config.scrub.crosswalk is not None
    assert config.scrub.crosswalk.path == tmp_path / "state" / "crosswalk"
    assert config.scrub.crosswalk.public_key == public
    with pytest.raises(ConfigError, match=r"scrub\.crosswalk\.public_key: this is a PRIVATE"):
        load_config(crosswalk_config(tmp_path, private))
    with pytest.raises(ConfigError, match=r"scrub\.crosswalk\.public_key: not an age"):
        load_config(crosswalk_config(tmp_path, "age1short"))


def test_cli_keygen_and_reidentify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "broker-alice")
    key = tmp_path / "broker" / "crosswalk.key"
    key.parent.mkdir()
    assert main(["crosswalk-keygen", "--out", str(key)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("public_key: age1") and out.count("\n") == 1
    public = out.split()[1]
    assert mode(key) == 0o600
    assert f"# public key: {public}" in key.read_text()
    before = key.read_bytes()
    assert main(["crosswalk-keygen", "--out", str(key)]) == 2
    assert "is never overwritten" in capsys.readouterr().err
    assert key.read_bytes() == before

    config = crosswalk_config(tmp_path, public)
    crosswalk = tmp_path / "state" / "crosswalk"
    write_records(crosswalk, public)
    audit = tmp_path / "audit" / "audit.jsonl"

    argv = ["reidentify", "--key", str(key), "--config", str(config)]
    assert main([*argv, "DN7Q2KX4M9PLR3TV1", "2.25.118392017744210987"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"PatientID {PATIENT}\nStudyInstanceUID {STUDY}\n"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(x["event"], x["user"], x["pseudonym"], x["matches"]) for x in lines] == [
        ("reidentified", "broker-alice", "DN7Q2KX4M9PLR3TV1", 1),
        ("reidentified", "broker-alice", "2.25.118392017744210987", 1),
    ]

    assert main([*argv, "DN-NOBODY"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no record for DN-NOBODY" in captured.err
    last = json.loads(audit.read_text().splitlines()[-1])
    assert (last["event"], last["pseudonym"], last["matches"]) == ("reidentified", "DN-NOBODY", 0)

    # --crosswalk names the file; the configuration still names the audit trail.
    moved = tmp_path / "copy-of-crosswalk"
    moved.write_bytes(crosswalk.read_bytes())
    assert main([*argv, "--crosswalk", str(moved), "RACC-0001"]) == 0
    assert capsys.readouterr().out == f"AccessionNumber {ACCESSION}\n"

    wrong = tmp_path / "wrong.key"
    assert main(["crosswalk-keygen", "--out", str(wrong)]) == 0
    capsys.readouterr()
    assert main(["reidentify", "--key", str(wrong), "--config", str(config), "RACC-0001"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "the key opens none of its 3 record(s)" in captured.err
    last = json.loads(audit.read_text().splitlines()[-1])
    assert (last["event"], last["pseudonyms"]) == ("reidentify-failed", ["RACC-0001"])

    # No original value anywhere but in the output: not in the crosswalk, not in the audit.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for planted in (PATIENT, ACCESSION, STUDY):
                assert planted.encode() not in data, path
    assert mode(crosswalk) == 0o600


def test_cli_reidentify_refuses_without_crosswalk_or_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: tuple[str, str]
) -> None:
    key = tmp_path / "k"
    key.write_text(keys[0] + "\n")
    key.chmod(0o600)
    bare = tmp_path / "bare.yaml"
    bare.write_text("logging: {audit_file: audit.jsonl}\n")
    assert main(["reidentify", "--key", str(key), "--config", str(bare), "X"]) == 2
    assert "no crosswalk to read" in capsys.readouterr().err

    unaudited = crosswalk_config(tmp_path, keys[1], audit="null")
    assert main(["reidentify", "--key", str(key), "--config", str(unaudited), "X"]) == 2
    assert "re-identification is always audited" in capsys.readouterr().err

    config = crosswalk_config(tmp_path, keys[1])
    assert main(["reidentify", "--key", str(tmp_path / "nokey"), "--config", str(config), "X"]) == 2
    assert "cannot read the private key" in capsys.readouterr().err
