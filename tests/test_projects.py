"""Projects and filters: configuration, matching, pseudonym keys, filters, and a real node
serving several studies at once (storescu -> node -> one folder per project)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicomnode.config import Config, load_config
from dicomnode.dicomio import encode_instance, read_header, read_instance
from dicomnode.errors import ConfigError
from dicomnode.filters import FilterAction, Filters, load_filter_sets
from dicomnode.metrics import Metrics
from dicomnode.pipeline import Pipeline, ScrubStage, build_projects
from dicomnode.projects import Router, pseudonym_key
from dicomnode.scrub import build_scrubber
from dicomnode.spool import Spool, project_of
from tests.conftest import SECRET
from tests.peers import NodeProcess, make_study, storescu, wait_for
from tests.phi import PHI, leaks, planted_dataset, to_bytes

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
FOLDER = [{"name": "out", "type": "folder", "path": "out"}]


def _load(tmp_path: Path, config: dict[str, Any]) -> Config:
    path = tmp_path / "dicomnode.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(path)


def _error(tmp_path: Path, config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, config)
    return str(caught.value)


def _project(name: str, **settings: Any) -> dict[str, Any]:
    return {"name": name, "destinations": ["out"], **settings}


def _gsps() -> Dataset:
    """A Grayscale Softcopy Presentation State of the planted patient, built with pydicom."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = GSPS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = PHI["uid_root"] + ".1"
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "PR"
    ds.PatientName = PHI["name"]
    ds.PatientID = PHI["pid"]
    ds.StudyDate = "20210314"
    ds.ContentLabel = "ANNOTATION"
    ds.ContentDescription = "seen by " + PHI["referring_family"]
    ds.PresentationCreationDate = "20210315"
    ds.PresentationCreationTime = "090000"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(GSPS)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _instance(**values: Any) -> Dataset:
    ds = planted_dataset()
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("projects", "expected"),
    [
        ([_project("a", colour="red")], "projects[0].colour: unknown setting"),
        ([_project("a"), _project("a")], "projects[1].name: projects[0] is also named 'a'"),
        ([_project("a", destinations=["nowhere"])], "projects[0].destinations[0]: 'nowhere'"),
        (
            [
                _project("all"),
                _project("ct", match={"calling_ae_titles": ["CT1"]}),
            ],
            "projects[1].match: project 'ct' can never be chosen: projects[0] ('all')",
        ),
        (
            [
                _project("a", match={"called_ae_title": "X", "calling_ae_titles": ["CT1"]}),
                _project("b", match={"called_ae_title": "X", "calling_ae_titles": ["CT1"]}),
            ],
            "projects[1].match: project 'b' can never be chosen",
        ),
        ([_project("none")], "projects[0].name: 'none' is reserved"),
        ([_project("Big Study")], "projects[0].name"),
        (
            [_project("a", filters=["no-such-set"])],
            "projects[0].filters[0]: no filter set named 'no-such-set'",
        ),
        (
            [
                _project(
                    "a",
                    filters=[
                        {
                            "action": "drop",
                            "when": {"field": "Modality", "op": "equals", "value": "PR"},
                        }
                    ],
                )
            ],
            "projects[0].filters[0].rule: a drop rule needs a reason",
        ),
        (
            [
                _project(
                    "a",
                    match={
                        "when": {"field": "SeriesDescription", "op": "matches", "value": "(dose"}
                    },
                )
            ],
            "projects[0].match.when.value: '(dose' is not a regular expression",
        ),
        (
            [_project("a", match={"when": {"field": "Modalty", "op": "equals", "value": "CT"}})],
            "projects[0].match.when.field: 'Modalty' is not a DICOM keyword",
        ),
        (
            [
                _project("a", pseudonyms={"shared_with": "b"}),
                _project("b", pseudonyms={"shared_with": "a"}),
            ],
            "projects[0].pseudonyms.shared_with: the shared_with links go round in a circle",
        ),
        (
            [
                _project("a", match={"called_ae_title": "A"}),
                _project(
                    "b",
                    match={"called_ae_title": "B"},
                    pseudonyms={"shared_with": "a"},
                    scrub={"date_shift_days": [-10, -1]},
                ),
            ],
            "projects[1].scrub.date_shift_days: differs from that of 'a'",
        ),
    ],
)
def test_configuration_errors_name_the_setting(
    tmp_path: Path, projects: list[dict[str, Any]], expected: str
) -> None:
    message = _error(tmp_path, {"destinations": FOLDER, "projects": projects})
    assert expected in message, message
    assert str(tmp_path / "dicomnode.yaml") in message  # the file, and a line where known


def test_a_project_caller_must_be_allowed_and_filters_cannot_see_the_called_ae(
    tmp_path: Path,
) -> None:
    allowed = {"allowed_callers": [{"ae_title": "CT1"}]}
    message = _error(
        tmp_path,
        {
            "node": allowed,
            "destinations": FOLDER,
            "projects": [_project("a", match={"calling_ae_titles": ["CT1", "MR7"]})],
        },
    )
    assert "projects[0].match.calling_ae_titles[1]: 'MR7' is not in node.allowed_callers" in message
    called = {"field": "called_ae_title", "op": "equals", "value": "A"}
    message = _error(
        tmp_path,
        {
            "destinations": FOLDER,
            "projects": [
                _project("a", filters=[{"action": "drop", "reason": "x", "when": called}])
            ],
        },
    )
    assert "projects[0].filters[0].rule: filters cannot look at called_ae_title" in message


def test_project_sections_take_the_top_level_ones_and_resolve_their_paths(tmp_path: Path) -> None:
    (tmp_path / "lung.csv").write_text(f"patient_id,subject_id\n{PHI['pid']},LUNG-001\n")
    config = _load(
        tmp_path,
        {
            "scrub": {"patient_id_prefix": "SITE", "patient_name": "ANON^{patient_id}"},
            "pixels": {"enabled": False, "mode": "sensitive-text"},
            "destinations": FOLDER,
            "projects": [
                _project("heart", match={"called_ae_title": "HEART"}, pixels={"enabled": True}),
                _project("lung", scrub={"patient_id_prefix": "LU", "lookup": {"path": "lung.csv"}}),
            ],
        },
    )
    heart, lung = config.projects
    assert (lung.scrub.patient_id_prefix, lung.scrub.patient_name) == ("LU", "ANON^{patient_id}")
    assert lung.scrub.lookup is not None and lung.scrub.lookup.path == tmp_path / "lung.csv"
    assert heart.scrub.patient_id_prefix == "SITE" and heart.scrub.lookup is None
    assert (lung.pixels.enabled, heart.pixels.enabled, heart.pixels.mode) == (
        False,
        True,
        "sensitive-text",
    )
    assert config.unmatched == "refuse" and Config().projects == ()


# -- matching ----------------------------------------------------------------------------------


def _router(**settings: Any) -> Router:
    return Router(Config.model_validate({"destinations": FOLDER, **settings}))


def test_router_matches_by_called_ae_calling_ae_and_header(tmp_path: Path) -> None:
    router = _router(
        projects=[
            _project(
                "mr",
                match={
                    "called_ae_title": "RESEARCH",
                    "when": {"field": "Modality", "op": "equals", "value": ["MR", "PT"]},
                },
            ),
            _project("ct", match={"called_ae_title": "RESEARCH", "calling_ae_titles": ["CT1"]}),
            _project("other", match={"called_ae_title": "OTHER"}),
        ]
    )
    assert router.called_ae_titles == {"DICOMNODE", "RESEARCH", "OTHER"}
    mr, ct = tmp_path / "mr.dcm", tmp_path / "ct.dcm"
    mr.write_bytes(to_bytes(_instance(Modality="MR", SOPClassUID=MR_IMAGE)))
    ct.write_bytes(to_bytes(_instance()))
    reads: list[frozenset[str]] = []

    def header(path: Path) -> Any:
        def read(fields: frozenset[str]) -> Any:
            reads.append(fields)
            return read_header(path, fields, max_bytes=1 << 20)

        return read

    assert router.decide("RESEARCH", "MR1", header(mr)).project == "mr"
    assert router.decide("RESEARCH", "CT1", header(ct)).project == "ct"
    assert router.decide("RESEARCH", "CT9", header(ct)).project == "none"
    assert router.decide("OTHER", "ANY", header(ct)).project == "other"
    assert reads == [frozenset({"Modality"})] * 3  # once per instance, and only when needed
    # The association: refused only when no project could take it.
    assert router.admit("RESEARCH", "CT9") is None  # "mr" may, by its header
    assert router.admit("DICOMNODE", "CT1") == 0x07  # called AE not recognised
    only_ct1 = [_project("ct", match={"called_ae_title": "CT", "calling_ae_titles": ["CT1"]})]
    strict = _router(projects=only_ct1)
    assert strict.admit("CT", "CT9") == 0x03  # calling AE not recognised
    assert strict.admit("CT", "CT1") is None
    assert _router(unmatched="quarantine", projects=only_ct1).admit("CT", "CT9") is None


def test_the_header_is_read_within_a_bound_and_never_past_what_conditions_need(
    tmp_path: Path,
) -> None:
    ds = _instance(Modality="MR", SeriesDescription="T1 axial")
    ds.PixelData = b"\x00" * (4 << 20)  # after every attribute a condition can name
    path = tmp_path / "big-pixels.dcm"
    path.write_bytes(to_bytes(ds))
    fields = frozenset({"Modality", "SeriesDescription", "ImageType"})
    values = read_header(path, fields, max_bytes=64 << 10)
    assert values == {
        "Modality": ("MR",),
        "SeriesDescription": ("T1 axial",),
        "ImageType": ("ORIGINAL", "PRIMARY", "AXIAL"),
    }
    # 2 MB of private data before Modality: past the bound, the answer is "cannot tell".
    padded = _instance(Modality="MR")
    padded.add_new(0x00070010, "LO", "PADDING")
    padded.add_new(0x00071000, "OB", b"\x01" * (2 << 20))
    path = tmp_path / "padded.dcm"
    path.write_bytes(to_bytes(padded))
    assert read_header(path, fields, max_bytes=1 << 20) is None
    assert read_header(path, fields, max_bytes=4 << 20) is not None
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    assert read_header(tmp_path / "junk.dcm", fields, max_bytes=1 << 20) is None


# -- pseudonyms --------------------------------------------------------------------------------


def _scrubbed(config: Config, project: str, ds: Dataset) -> Dataset:
    stage = build_projects(config, SECRET)[project].stages[0]
    assert isinstance(stage, ScrubStage)
    parsed = read_instance(to_bytes(ds))
    stage.scrubber.scrub(parsed)
    return pydicom.dcmread(io.BytesIO(encode_instance(parsed)))


def _identity(ds: Dataset) -> tuple[str, ...]:
    return (ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID, ds.StudyDate, ds.StudyTime)


def test_each_project_has_its_own_pseudonyms_unless_linked() -> None:
    config = Config.model_validate(
        {
            "pixels": {"enabled": False},
            "destinations": FOLDER,
            "projects": [
                _project("lung", match={"called_ae_title": "LUNG"}),
                _project("heart", match={"called_ae_title": "HEART"}),
                _project(
                    "heart-2", match={"called_ae_title": "H2"}, pseudonyms={"shared_with": "heart"}
                ),
                _project("legacy", match={"called_ae_title": "OLD"}, pseudonyms="site"),
            ],
        }
    )
    ds = planted_dataset()
    lung, heart, heart2, legacy = (
        _identity(_scrubbed(config, name, ds)) for name in ("lung", "heart", "heart-2", "legacy")
    )
    assert all(a != b for a, b in zip(lung, heart, strict=True))  # IDs, UIDs and date shift
    assert heart2 == heart
    old = build_scrubber(Config(), secret=SECRET)
    parsed = read_instance(to_bytes(ds))
    old.scrub(parsed)
    assert legacy == _identity(pydicom.dcmread(io.BytesIO(encode_instance(parsed))))
    # The documented derivation: HMAC-SHA256(secret, label 0 name).
    label = b"dicomnode project pseudonym key v1\x00"
    assert (
        pseudonym_key(config, "lung", SECRET)
        == hmac.new(SECRET, label + b"lung", hashlib.sha256).digest()
    )
    assert pseudonym_key(config, "heart-2", SECRET) == pseudonym_key(config, "heart", SECRET)
    assert pseudonym_key(Config(), "default", SECRET) == SECRET


def test_without_projects_everything_is_as_before(tmp_path: Path) -> None:
    """No projects: the old scrubber's pseudonyms, spool names without a project, the old
    metric labels."""
    spool = Spool(tmp_path / "spool").create(["folder"])
    config = Config.model_validate({"pixels": {"enabled": False}})
    item = spool.write_incoming(to_bytes(planted_dataset()), "CT1")
    assert "~" not in item and project_of(item) == "default"
    outcome = Pipeline.from_config(config, spool, SECRET).process(item, "0")
    assert outcome.status == "clean" and outcome.project == "default"
    (path,) = spool.outgoing_items("folder")
    record = json.loads((spool.journal / f"{item}.json").read_text())
    assert "project" not in record
    old = build_scrubber(config, secret=SECRET)
    expected = read_instance(to_bytes(planted_dataset()))
    old.scrub(expected)
    assert _identity(pydicom.dcmread(path)) == _identity(
        pydicom.dcmread(io.BytesIO(encode_instance(expected)))
    )
    metrics = Metrics()
    assert metrics.received._labelnames == ("calling_ae",)
    assert metrics.cleaned._labelnames == ()
    assert metrics.forwarded._labelnames == ("destination",)


def test_calling_ae_labels_are_bounded() -> None:
    metrics = Metrics(known_callers={"CT1"})
    labels = {metrics.caller(f"FLOOD{n}") for n in range(100)}
    assert len(labels) == 33 and "other" in labels
    assert metrics.caller("CT1") == "CT1"


# -- filters -----------------------------------------------------------------------------------


def test_filter_sets_drop_presentation_states_and_dose_screens() -> None:
    sets = load_filter_sets()
    (rule,) = sets["drop-presentation-states"].rules
    assert not isinstance(rule.when, tuple) and rule.when.value is not None
    for uid in rule.when.value:
        assert "Presentation State" in UID_dictionary[uid][0], uid
    ps = [
        u
        for u, v in UID_dictionary.items()
        if v[1] == "SOP Class" and "Presentation State Storage" in v[0]
    ]
    assert set(ps) <= set(rule.when.value)
    filters = Filters(["drop-presentation-states", "drop-dose-screens"])
    assert filters(_gsps(), "CT1") is not None
    verdict = filters(_gsps(), "CT1")
    assert verdict is not None
    assert (verdict.action, verdict.reason, verdict.rule) == (
        FilterAction.DROP,
        "presentation-state",
        "drop-presentation-states[0]",
    )
    screen = _instance(
        SOPClassUID=SECONDARY_CAPTURE, ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]
    )
    report = _instance(
        SOPClassUID=SECONDARY_CAPTURE, ImageType=["DERIVED"], SeriesDescription="Dose Report"
    )
    protocol = _instance(SOPClassUID=SECONDARY_CAPTURE, SeriesDescription="Patient Protocol")
    for ds in (screen, report, protocol):
        verdict = filters(ds, "CT1")
        assert verdict is not None and verdict.reason == "dose-screen"
    assert filters(_instance(SOPClassUID=SECONDARY_CAPTURE, ImageType=["DERIVED"]), "CT1") is None
    assert filters(_instance(SeriesDescription="Dose Report"), "CT1") is None  # a CT, not a screen
    assert filters(planted_dataset(), "CT1") is None


def test_filter_rules_run_in_order_on_the_header_as_received() -> None:
    burned = _instance(BurnedInAnnotation="YES")
    uncovered = Filters(["quarantine-uncovered-burned-in"], pixel_stage=lambda ds: "off")
    verdict = uncovered(burned, "US1")
    assert verdict is not None and verdict.action is FilterAction.QUARANTINE
    assert verdict.reason == "burned-in-unchecked"
    assert Filters(["quarantine-uncovered-burned-in"], lambda ds: "check")(burned, "US1") is None
    assert Filters(["quarantine-uncovered-burned-in"], lambda ds: "skip")(burned, "US1") is not None
    config = Config.model_validate(
        {
            "destinations": FOLDER,
            "projects": [
                _project(
                    "a",
                    filters=[
                        {
                            "action": "accept",
                            "when": {
                                "field": "calling_ae_title",
                                "op": "equals",
                                "value": "TRUSTED",
                            },
                        },
                        "drop-presentation-states",
                    ],
                )
            ],
        }
    )
    filters = Filters(config.projects[0].filters)
    assert filters(_gsps(), "TRUSTED") is None  # accepted before the drop rule is reached
    assert filters(_gsps(), "OTHER") is not None
    before = to_bytes(burned)
    parsed = read_instance(before)
    uncovered(parsed, "US1")
    assert encode_instance(parsed) == encode_instance(read_instance(before))  # left as read


def test_the_pipeline_drops_quarantines_and_refuses_by_project(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "pixels": {"enabled": False},
            "destinations": [
                {"name": "a", "type": "folder", "path": str(tmp_path / "a")},
                {"name": "b", "type": "folder", "path": str(tmp_path / "b")},
            ],
            "projects": [
                {
                    "name": "lung",
                    "destinations": ["a"],
                    "match": {"called_ae_title": "LUNG"},
                    "filters": ["drop-presentation-states"],
                },
                {"name": "heart", "destinations": ["b"]},
            ],
        }
    )
    spool = Spool(tmp_path / "spool").create(["a", "b"])
    pipeline = Pipeline.from_config(config, spool, SECRET)
    dropped = spool.write_incoming(to_bytes(_gsps()), "CT1", "lung")
    outcome = pipeline.process(dropped, "0")
    assert (outcome.status, outcome.reason, outcome.project) == (
        "dropped",
        "presentation-state",
        "lung",
    )
    assert spool.counts()["work"].count == 0 and not spool.journal_ids()
    clean = pipeline.process(spool.write_incoming(to_bytes(planted_dataset()), "CT1", "lung"), "0")
    assert clean.status == "clean" and len(spool.outgoing_items("a")) == 1
    assert not spool.outgoing_items("b")
    kept = pipeline.process(spool.write_incoming(to_bytes(_gsps()), "CT1", "heart"), "0")
    assert kept.status == "clean" and len(spool.outgoing_items("b")) == 1  # heart keeps its PS
    for project in ("none", "gone"):
        item = spool.write_incoming(to_bytes(planted_dataset()), "CT1", project)
        outcome = pipeline.process(item, "0")
        assert (outcome.status, outcome.reason, outcome.project) == (
            "quarantined",
            "no-project",
            project,
        )
        sidecar = json.loads((spool.quarantine / "no-project" / f"{item}.json").read_text())
        assert sidecar["project"] == project and leaks(json.dumps(sidecar).encode()) == []
    counts = spool.project_counts()
    assert counts["lung"] == {"outgoing/a": 1} and counts["none"] == {"quarantine/no-project": 1}


# -- a real node -------------------------------------------------------------------------------


def _files(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]


def _status(node: NodeProcess) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "dicomnode", "status", "--config", str(node.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.peers
def test_a_node_serves_several_projects(tmp_path: Path) -> None:
    outs = {name: tmp_path / "node" / f"out-{name}" for name in ("lung", "heart", "heart2")}
    node = NodeProcess(
        tmp_path / "node",
        destinations=[{"name": n, "type": "folder", "path": str(p)} for n, p in outs.items()],
        pixels={"enabled": False},
        unmatched="quarantine",
        projects=[
            {
                "name": "lung",
                "match": {"called_ae_title": "LUNG"},
                "scrub": {"patient_id_prefix": "LU"},
                "destinations": ["lung"],
                "filters": ["drop-presentation-states", "quarantine-uncovered-burned-in"],
            },
            {
                "name": "heart-mr",
                "match": {
                    "called_ae_title": "HEART",
                    "when": {"field": "Modality", "op": "equals", "value": "MR"},
                },
                "destinations": ["heart"],
            },
            {"name": "heart", "match": {"called_ae_title": "HEART"}, "destinations": ["heart"]},
            {
                "name": "heart-2",
                "match": {"called_ae_title": "HEART2"},
                "pseudonyms": {"shared_with": "heart"},
                "destinations": ["heart2"],
            },
            {
                "name": "mr-only",
                "match": {
                    "called_ae_title": "MRONLY",
                    "when": {"field": "Modality", "op": "equals", "value": "MR"},
                },
                "destinations": ["heart"],
            },
        ],
    )
    make_study(tmp_path / "study", series=1, per_series=2)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "gsps.dcm").write_bytes(to_bytes(_gsps()))
    (extra / "burned.dcm").write_bytes(to_bytes(_instance(BurnedInAnnotation="YES")))
    mr = tmp_path / "mr"
    mr.mkdir()
    (mr / "mr.dcm").write_bytes(to_bytes(_instance(Modality="MR", SOPClassUID=MR_IMAGE)))
    node.start()
    try:
        for aec, folder in (
            ("LUNG", tmp_path / "study"),
            ("LUNG", extra),
            ("HEART", tmp_path / "study"),
            ("HEART", mr),
            ("HEART2", tmp_path / "study"),
            ("DICOMNODE", tmp_path / "study"),  # no project: quarantined (unmatched: quarantine)
        ):
            sent = storescu(node.port, folder, aec=aec, debug=True)
            assert sent.returncode == 0, (aec, sent.stdout, sent.stderr)
            # The A-ASSOCIATE-AC repeats the AE title that was called (PS3.8 7.1.1.4).
            assert f"Responding Application Name: {aec}" in sent.stdout + sent.stderr
        node.wait_idle(120)
        wait_for(
            lambda: (
                node.metrics().get(
                    'dicomnode_instances_forwarded_total{destination="heart",project="heart"}', 0
                )
                == 2
            ),
            30,
            "the heart deliveries",
        )
        lung, heart, heart2 = (_files(p) for p in outs.values())
        assert (len(lung), len(heart), len(heart2)) == (2, 3, 2)  # heart: 2 CT + the MR
        assert {ds.Modality for ds in lung} == {"CT"}  # the GSPS was dropped, the burned one held
        ct_heart = [ds for ds in heart if ds.Modality == "CT"]
        assert lung[0].PatientID.startswith("LU") and lung[0].PatientID != ct_heart[0].PatientID
        assert lung[0].StudyInstanceUID != ct_heart[0].StudyInstanceUID
        assert (lung[0].StudyDate, lung[0].StudyTime) != (
            ct_heart[0].StudyDate,
            ct_heart[0].StudyTime,
        )
        assert _identities(heart2) == _identities(ct_heart)  # linked on purpose
        for ds in [*lung, *heart, *heart2]:
            assert leaks(ds.PatientID.encode() + ds.StudyInstanceUID.encode()) == []

        metrics = node.metrics()
        assert (
            metrics['dicomnode_instances_dropped_total{project="lung",reason="presentation-state"}']
            == 1
        )
        assert (
            metrics['dicomnode_instances_received_total{calling_ae="STORESCU",project="lung"}'] == 4
        )
        assert metrics['dicomnode_instances_cleaned_total{project="heart-mr"}'] == 1
        assert metrics['dicomnode_instances_cleaned_total{project="heart-2"}'] == 2
        assert (
            metrics[
                'dicomnode_instances_quarantined_total{project="lung",reason="burned-in-unchecked"}'
            ]
            == 1
        )
        assert (
            metrics['dicomnode_instances_quarantined_total{project="none",reason="no-project"}']
            == 2
        )
        assert (
            metrics['dicomnode_instances_forwarded_total{destination="lung",project="lung"}'] == 2
        )

        events = [json.loads(line) for line in node.audit.read_text().splitlines()]
        (drop,) = [e for e in events if e["event"] == "dropped"]
        assert (drop["project"], drop["reason"], drop["rule"]) == (
            "lung",
            "presentation-state",
            "drop-presentation-states[0]",
        )
        cleaned = [e for e in events if e["event"] == "cleaned"]
        assert sorted(e["project"] for e in cleaned) == sorted(
            ["lung"] * 2 + ["heart"] * 2 + ["heart-mr"] + ["heart-2"] * 2
        )
        assert all(
            e["project"] == "heart-mr"
            for e in cleaned
            if e["destinations"] == ["heart"] and e["uids"]["SOPClassUID"] == MR_IMAGE
        )
        delivered = [e for e in events if e["event"] == "delivered"]
        assert {(e["project"], e["destination"]) for e in delivered} == {
            ("lung", "lung"),
            ("heart", "heart"),
            ("heart-mr", "heart"),
            ("heart-2", "heart2"),
        }
        assert {e["reason"] for e in events if e["event"] == "quarantined"} == {
            "no-project",
            "burned-in-unchecked",
        }

        report = _status(node)
        assert report["projects"]["lung"] == {"quarantine/burned-in-unchecked": 1}
        assert report["projects"]["none"] == {"quarantine/no-project": 2}
        assert report["projects"]["heart"] == {}
        names = [p.name for p in (node.spool / "quarantine").rglob("*.dcm")]
        assert sorted(n.rsplit("~", 1)[1] for n in names) == ["lung.dcm", "none.dcm", "none.dcm"]

        # unmatched: refuse, by SIGHUP: no project answers to DICOMNODE any more, and a CT
        # sent where only an MR project listens is refused instance by instance.
        config = yaml.safe_load(node.config_path.read_text())
        config["unmatched"] = "refuse"
        node.config_path.write_text(yaml.safe_dump(config))
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in node.log.read_text(), 30, "the reload")
        refused = storescu(node.port, tmp_path / "study", aec="DICOMNODE", debug=True)
        assert refused.returncode != 0
        assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr
        store = storescu(node.port, tmp_path / "study", aec="MRONLY", debug=True)
        assert "0x0124" in store.stdout + store.stderr
        node.wait_idle(30)
        assert node.metrics()['dicomnode_stores_refused_total{reason="no-project"}'] == 3
    finally:
        node.stop()
    for path in [node.log, *node.audit.parent.glob("*")]:
        assert leaks(path.read_bytes()) == [], path


def _identities(files: list[Dataset]) -> list[tuple[str, ...]]:
    return sorted(_identity(ds) for ds in files)
