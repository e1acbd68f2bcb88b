"""Quarantine housekeeping: list, show (nothing identifying), retention with an audit line per
deletion, and one table of reasons that the README and the code agree with."""

from __future__ import annotations

import io
import json
import re
import time
import warnings
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomnode import quarantine
from dicomnode.audit import AuditTrail
from dicomnode.cli import main
from dicomnode.config import load_config
from dicomnode.errors import ConfigError
from dicomnode.spool import Spool
from tests.phi import PHI, leaks, planted_dataset, to_bytes

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def quarantined(spool: Spool, data: bytes, reason: str, *, days_ago: float = 0) -> str:
    """Put ``data`` in quarantine as the pipeline does; its sidecar says ``days_ago``."""
    item_id = spool.write_incoming(data, "CT_SCANNER_1")
    path = spool.claim(item_id, "0")
    assert path is not None
    target = spool.to_quarantine(path, reason, {"stage": "scrub", "message": "the detail"})
    sidecar = target.with_suffix(".json")
    info = json.loads(sidecar.read_text())
    when = time.localtime(time.time() - days_ago * DAY)
    info["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", when)
    sidecar.write_text(json.dumps(info))
    return item_id


def deflated() -> bytes:
    """A planted instance written as a deflated file (pydicom would inflate it all to read)."""
    ds = planted_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create(["out"])


@pytest.fixture
def config(tmp_path: Path, spool: Spool) -> Path:
    path = tmp_path / "dicomnode.yaml"
    path.write_text(f"spool: {{path: {spool.root}}}\nquarantine: {{keep_days: 30}}\n")
    return path


def test_list_and_show_say_why_and_never_what_identifies(
    spool: Spool, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = quarantined(spool, to_bytes(planted_dataset()), "unknown-sop-class", days_ago=2)
    junk = quarantined(spool, f"patient {PHI['name']}".encode(), "unreadable")
    bomb = quarantined(spool, deflated(), "too-large")

    assert main(["quarantine", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert all(item in out for item in (ct, junk, bomb))
    assert "3 item(s)" in out and "deleted 30 days after quarantine" in out
    assert main(["quarantine", "list", "--config", str(config), "--reason", "unreadable"]) == 0
    out = capsys.readouterr().out
    assert junk in out and ct not in out and bomb not in out
    assert main(["quarantine", "list", "--config", str(config), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in listed] == [ct, junk, bomb]
    assert listed[0]["reason"] == "unknown-sop-class" and listed[0]["stage"] == "scrub"
    assert listed[0]["calling_ae"] == "CT_SCANNER_1"
    assert 2 * DAY - 60 < listed[0]["age_s"] < 2 * DAY + 60

    assert main(["quarantine", "show", ct, "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "unknown-sop-class" in shown
    assert quarantine.REASONS["unknown-sop-class"].meaning in shown
    assert quarantine.REASONS["unknown-sop-class"].action in shown
    assert re.search(r"SOP class:\s+CT Image Storage", shown)
    assert re.search(r"modality:\s+CT", shown)
    assert re.search(r"transfer syntax:\s+Explicit VR Little Endian", shown)
    assert re.search(r"calling AE:\s+CT_SCANNER_1", shown)
    assert re.search(r"retention:\s+deleted in 2\d\.\d d", shown)
    assert leaks(shown.encode()) == [], shown  # no name, ID, date, UID of the instance
    assert "20210314" not in shown

    assert main(["quarantine", "show", junk[:30], "--config", str(config), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["id"] == junk and record["sop_class"].startswith("(cannot be read")
    assert leaks(json.dumps(record).encode()) == []

    assert main(["quarantine", "show", bomb, "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "not inflated here" in shown and "Deflated Explicit VR Little Endian" in shown
    assert leaks(shown.encode()) == []

    assert main(["quarantine", "show", "nothing-like-it", "--config", str(config)]) == 1


def test_show_withholds_what_is_not_a_registered_uid_or_a_valid_modality(spool: Spool) -> None:
    ds = planted_dataset()
    ds.SOPClassUID = PHI["uid_root"] + ".77"  # private: may say anything
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not a valid CS, on purpose
        ds.Modality = PHI["name_family"]
    item = quarantined(spool, to_bytes(ds), "unknown-sop-class")
    found = quarantine.find(spool.root, item)
    assert found is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = quarantine.header_summary(found.path)
    assert leaks(" ".join(str(w.message) for w in caught).encode()) == []
    assert summary["sop_class"] == "(not a registered SOP Class; not shown)"
    assert summary["modality"] == "(not a valid Modality; not shown)"
    assert leaks(json.dumps(summary).encode()) == []


def test_expire_deletes_old_originals_and_audits_each(spool: Spool, tmp_path: Path) -> None:
    old = quarantined(spool, to_bytes(planted_dataset()), "text-remains", days_ago=31)
    older = quarantined(spool, b"junk", "unreadable", days_ago=400)
    young = quarantined(spool, to_bytes(planted_dataset()), "text-remains", days_ago=29)
    audit = AuditTrail(tmp_path / "audit.jsonl")

    assert quarantine.expire(spool.root, 0, audit) == 0  # 0: keep forever
    assert len(quarantine.items(spool.root)) == 3
    assert quarantine.expire(spool.root, 30, audit) == 2
    audit.close()

    assert [q.id for q in quarantine.items(spool.root)] == [young]
    for item_id, reason in ((old, "text-remains"), (older, "unreadable")):
        folder = spool.quarantine / reason
        assert not (folder / f"{item_id}.dcm").exists()
        assert not (folder / f"{item_id}.json").exists()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted((e["event"], e["id"], e["reason"]) for e in lines) == sorted(
        [("quarantine-expired", old, "text-remains"), ("quarantine-expired", older, "unreadable")]
    )
    ages = {e["id"]: e["age_days"] for e in lines}
    assert 30.9 <= ages[old] <= 31.1 and 399.9 <= ages[older] <= 400.1
    assert leaks((tmp_path / "audit.jsonl").read_bytes()) == []
    assert quarantine.expire(spool.root, 30, None) == 0  # nothing more to do


def test_keep_days_setting(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("quarantine: {}\n")
    assert load_config(path).quarantine.keep_days == 30
    path.write_text("quarantine: {keep_days: 0}\n")
    assert load_config(path).quarantine.keep_days == 0
    path.write_text("quarantine: {keep_days: -1}\n")
    with pytest.raises(ConfigError, match=r"line 1: quarantine\.keep_days: -1 is out of range"):
        load_config(path)


# -- one table of reasons ------------------------------------------------------------------


def test_readme_table_is_the_table_in_quarantine_py() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- reasons:")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- /reasons -->")
    assert readme[start:end] == quarantine.reasons_markdown(), (
        "regenerate the README's table from dicomnode.quarantine.reasons_markdown()"
    )
    for name in quarantine.REASONS:
        assert f"| `{name}` |" in readme


# Reasons the code gives that are not about an item in the spool: connections and
# associations turned away (dicomnode/gate.py, counted in connections_refused_total and
# documented under "Limits and hostile input").
_NOT_ITEMS = {Path("dicomnode/gate.py")}

_PATTERNS = (
    re.compile(r"""\breason\s*=\s*["']([a-z][a-z0-9-]*)["']"""),  # InstanceError(reason=...)
    re.compile(r"""to_quarantine\(\s*[^,()]+,\s*["']([a-z][a-z0-9-]*)["']"""),
    re.compile(r"""_dead_letter\(\s*[^,()]+,\s*[^,()]+,\s*["']([a-z][a-z0-9-]*)["']"""),
)


def reasons_in_source() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "dicomnode").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative in _NOT_ITEMS:
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in _PATTERNS:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.setdefault(match.group(1), []).append(f"{relative}:{line}")
    return found


def test_the_table_covers_every_reason_the_code_gives() -> None:
    found = reasons_in_source()
    # the scan finds what it must: reasons from errors, limits, pixels, the pipeline, forward
    for known in ("too-large", "text-remains", "vr-mismatch", "worker-crashed", "expired"):
        assert known in found, known
    missing = {reason: where for reason, where in found.items() if reason not in quarantine.REASONS}
    assert not missing, f"add these to dicomnode/quarantine.py REASONS (and the README): {missing}"


def test_an_unknown_reason_still_has_a_sentence() -> None:
    reason = quarantine.describe("presentation-state")  # a filter rule's own reason
    assert reason.meaning and reason.action
