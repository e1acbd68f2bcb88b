"""Attribute Types by IOD: facts checked against PS3.3, and the generator's output repeatable.

The facts cite PS3.3 (edition 2026b, the one highdicom's tables follow): CT Image IOD (A.3),
Patient (C.7.1.1), General Study (C.7.2.1), General Series (C.7.3.1), General Equipment
(C.7.5.1), General Image (C.7.6.1), CT Image (C.8.2.1), SOP Common (C.12.1), Request
Attributes Macro (Table 10-9), Image SOP Instance Reference Macro (Table 10-3).
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dicomnode.scrub import iod
from dicomnode.scrub.iod import AttributeType, attribute_type
from dicomnode.scrub.profile import rules_dir

ROOT = Path(__file__).resolve().parent.parent
CT = "1.2.840.10008.5.1.4.1.1.2"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_iod", ROOT / "tools" / "generate_iod.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_iod"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _clear_caches() -> None:
    iod._tables.cache_clear()
    iod._group.cache_clear()
    iod._iod_types.cache_clear()
    iod._PATHS.clear()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ((0x00081110,), AttributeType.TYPE3),  # ReferencedStudySequence, General Study
        ((0x00080020,), AttributeType.TYPE2),  # StudyDate
        ((0x00080030,), AttributeType.TYPE2),  # StudyTime
        ((0x00100010,), AttributeType.TYPE2),  # PatientName, Patient
        ((0x00100020,), AttributeType.TYPE2),  # PatientID
        ((0x00080018,), AttributeType.TYPE1),  # SOPInstanceUID, SOP Common
        ((0x0020000D,), AttributeType.TYPE1),  # StudyInstanceUID
        ((0x00080050,), AttributeType.TYPE2),  # AccessionNumber
        ((0x00200010,), AttributeType.TYPE2),  # StudyID
        ((0x00080080,), AttributeType.TYPE3),  # InstitutionName, General Equipment
        ((0x00080090,), AttributeType.TYPE2),  # ReferringPhysicianName
        ((0x00081030,), AttributeType.TYPE3),  # StudyDescription
        # ImageType: Type 3 in General Image, Type 1 in CT Image: the most demanding wins.
        ((0x00080008,), AttributeType.TYPE1),
        # RequestAttributesSequence (Type 3, General Series) > RequestedProcedureID (1C).
        ((0x00400275,), AttributeType.TYPE3),
        ((0x00400275, 0x00401001), AttributeType.TYPE1C),
        ((0x00400275, 0x00081110), AttributeType.TYPE3),  # > ReferencedStudySequence
        # ReferencedImageSequence (Type 3, General Image) > ReferencedSOPInstanceUID (1).
        ((0x00081140,), AttributeType.TYPE3),
        ((0x00081140, 0x00081155), AttributeType.TYPE1),
    ],
)
def test_ct_image_types_match_ps3_3(path: tuple[int, ...], expected: AttributeType) -> None:
    assert attribute_type(CT, path) is expected


def test_absent_attributes_and_unknown_sop_classes_give_none() -> None:
    assert attribute_type(CT, (0x300A0002,)) is None  # RTPlanLabel: not in the CT Image IOD
    assert attribute_type(CT, (0x00081155,)) is None  # only inside a sequence, not at the top
    assert attribute_type(CT, (0x00400275, 0x00100010)) is None  # PatientName is not in RAS
    assert attribute_type(CT, (0x60003000,)) is None  # OverlayData: repeating group, left out
    assert attribute_type(CT, ()) is None
    assert attribute_type("1.2.3.4", (0x00100010,)) is None
    assert attribute_type("1.2.840.10008.5.1.4.1.1.6", (0x00100010,)) is None  # retired US


def test_paths_may_be_any_sequence_and_sop_classes_share_their_iod() -> None:
    assert attribute_type(CT, [0x00400275, 0x00401001]) is AttributeType.TYPE1C
    for path in [(0x00100010,), (0x00081110,), (0x00080060,), (0x00080068,)]:
        assert attribute_type(DX_PRESENTATION, path) is attribute_type(DX_PROCESSING, path)
    presentation_intent_type = (0x00080068,)  # Type 1 in DX Series (C.8.11.1)
    assert attribute_type(DX_PROCESSING, presentation_intent_type) is AttributeType.TYPE1


def test_the_shipped_table_records_its_source_and_stays_small() -> None:
    path = rules_dir() / "iod" / "attribute-types.json"
    assert path.stat().st_size < 1_000_000  # loaded by every worker process
    source = json.loads(path.read_bytes())["source"]
    assert source["dicom_edition"] == "2026b"
    assert source["highdicom"] == "0.28.2"
    readme = (rules_dir() / "iod" / "README.md").read_text(encoding="utf-8")
    assert "2026b" in readme and "0.28.2" in readme and "MIT" in readme


# A tiny input of the same shape as highdicom's three files, with the awkward cases in it.
SOPS = {"1.2.3.1": "image", "1.2.3.2": "image", "1.2.3.3": "broken"}
IODS: dict[str, list[dict[str, str]]] = {
    "image": [
        {"key": "study", "usage": "M", "ie": "Study"},
        {"key": "equipment", "usage": "U", "ie": "Equipment"},
        {"key": "overlay", "usage": "C", "ie": "Image"},
    ],
    "broken": [
        {"key": "study", "usage": "M", "ie": "Study"},
        {"key": "missing", "usage": "M", "ie": "X"},
    ],
    "unused": [{"key": "study", "usage": "M", "ie": "Study"}],
}
CODE = [  # the same macro under two sequences: stored once
    {"keyword": "CodeValue", "type": "1C", "path": []},
    {"keyword": "CodeMeaning", "type": "1", "path": []},
]
MODULES: dict[str, list[dict[str, Any]]] = {
    "study": [
        {"keyword": "StudyDate", "type": "2", "path": []},
        {"keyword": "ReferencedStudySequence", "type": "3", "path": []},
        {"keyword": "ProcedureCodeSequence", "type": "3", "path": []},
        *({**row, "path": ["ProcedureCodeSequence"]} for row in CODE),
        {"keyword": "00081032", "type": "3", "path": []},  # a hex tag: ProcedureCodeSequence again
        {"keyword": "(0008,0090)", "type": "2", "path": []},  # ReferringPhysicianName
    ],
    "equipment": [
        {"keyword": "InstitutionName", "type": "3", "path": []},
        {"keyword": "StudyDate", "type": "1", "path": []},  # more demanding than in "study"
        {"keyword": "InstitutionCodeSequence", "type": "3", "path": []},
        *({**row, "path": ["InstitutionCodeSequence"]} for row in CODE),
    ],
    "overlay": [
        {"keyword": "OverlayData", "type": "1", "path": []},
        {"keyword": "60xx0010", "type": "1", "path": []},
        {"keyword": "Modality", "type": "None", "path": []},
    ],
    "normalized-only": [{"keyword": "PatientName", "type": "None", "path": []}],
}
SOURCE = {"highdicom": "0.0", "dicom_edition": "2099z", "pydicom": "3", "sha256": {}}


def _shuffled(value: Any, rng: random.Random) -> Any:
    """The same content with every dict's key order shuffled (lists keep their order)."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: _shuffled(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [_shuffled(item, rng) for item in value]
    return value


def test_the_generator_writes_the_same_bytes_whatever_the_input_order() -> None:
    gen = _generator()
    first = gen.render(gen.build(SOPS, IODS, MODULES, SOURCE)[0])
    rng = random.Random(7)
    for _ in range(5):
        inputs = [_shuffled(x, rng) for x in (SOPS, IODS, MODULES, SOURCE)]
        assert gen.render(gen.build(*inputs)[0]) == first
    json.loads(first)


def test_the_generator_leaves_out_what_it_cannot_trust() -> None:
    gen = _generator()
    table, report = gen.build(SOPS, IODS, MODULES, SOURCE)
    assert table["sop_classes"] == {"1.2.3.1": "image", "1.2.3.2": "image"}
    assert set(table["iods"]) == {"image"}  # "broken" lacks a module, "unused" has no SOP class
    assert report.incomplete_iods == {"broken": ["missing"]}
    assert report.dropped_sop_classes == {"1.2.3.3": "broken"}
    assert report.repeating == {"OverlayData", "60xx0010"}
    assert report.untyped_rows == 1
    assert "normalized-only" not in table["modules"]
    code_groups = [g for g in table["groups"] if g == [["00080100", "1C"], ["00080104", "1"]]]
    assert len(code_groups) == 1
    readme = gen.readme(table, report)
    assert "2099z" in readme and "`broken` (missing `missing`)" in readme


@pytest.fixture
def synthetic_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The loader pointed at a table generated from the synthetic input."""
    gen = _generator()
    (tmp_path / "iod").mkdir()
    table = gen.render(gen.build(SOPS, IODS, MODULES, SOURCE)[0])
    (tmp_path / "iod" / "attribute-types.json").write_text(table, encoding="utf-8")
    monkeypatch.setattr(iod, "rules_dir", lambda: tmp_path)
    _clear_caches()
    yield tmp_path
    _clear_caches()


@pytest.mark.usefixtures("synthetic_rules")
def test_the_loader_reads_what_the_generator_writes() -> None:
    uid = "1.2.3.2"
    assert attribute_type(uid, (0x00080020,)) is AttributeType.TYPE1  # 1 in equipment beats 2
    assert attribute_type(uid, (0x00081110,)) is AttributeType.TYPE3
    assert attribute_type(uid, (0x00080090,)) is AttributeType.TYPE2  # given as "(0008,0090)"
    assert attribute_type(uid, (0x00081032, 0x00080104)) is AttributeType.TYPE1
    assert attribute_type(uid, (0x00080082, 0x00080100)) is AttributeType.TYPE1C
    assert attribute_type(uid, (0x00080104,)) is None
    assert attribute_type(uid, (0x00080060,)) is None  # untyped row
    assert attribute_type(uid, (0x60003000,)) is None
    assert attribute_type("1.2.3.3", (0x00080020,)) is None  # incomplete IOD


def test_a_table_of_another_format_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "iod").mkdir()
    (tmp_path / "iod" / "attribute-types.json").write_text('{"format": 99}', encoding="utf-8")
    monkeypatch.setattr(iod, "rules_dir", lambda: tmp_path)
    _clear_caches()
    try:
        with pytest.raises(RuntimeError, match="regenerate"):
            attribute_type(CT, (0x00100010,))
    finally:
        _clear_caches()
