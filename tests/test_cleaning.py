"""Free text cleaned through the engine: the corpus of tests/test_freetext.py planted in every
kind of attribute the engine cleans (descriptions, comments, a request's reason in a sequence,
an SR TEXT item, a private text PS3.15 keeps as safe); no identifier survives and the
surrounding words do."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.scrub import Scrubber
from dicomnode.scrub.freetext import Kind
from tests.phi import PHI, planted_dataset, to_bytes
from tests.test_freetext import GENERIC

Make = Callable[..., Scrubber]
OPTIONS = (
    "retain-long-modified-dates",
    "retain-patient-characteristics",
    "clean-descriptors",
    "clean-structured-content",
    "retain-safe-private",
)


def _study_description(ds: Dataset, text: str) -> Callable[[Dataset], str]:
    ds.StudyDescription = text
    return lambda out: str(out.StudyDescription)


def _image_comments(ds: Dataset, text: str) -> Callable[[Dataset], str]:
    ds.ImageComments = text
    return lambda out: str(out.ImageComments)


def _request_reason(ds: Dataset, text: str) -> Callable[[Dataset], str]:
    ds.RequestAttributesSequence[0].ReasonForTheRequestedProcedure = text
    return lambda out: str(out.RequestAttributesSequence[0].ReasonForTheRequestedProcedure)


def _sr_text(ds: Dataset, text: str) -> Callable[[Dataset], str]:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.TextValue = text
    container = Dataset()
    container.ValueType = "CONTAINER"
    container.ContentSequence = Sequence([item])
    ds.ContentSequence = Sequence([container])
    return lambda out: str(out.ContentSequence[0].ContentSequence[0].TextValue)


def _safe_private(ds: Dataset, text: str) -> Callable[[Dataset], str]:
    ds.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0x9E, "LO", text)
    return lambda out: str(out.private_block(0x0019, "GEMS_ACQU_01")[0x9E].value)


TARGETS = {
    "StudyDescription (LO)": _study_description,
    "ImageComments (LT)": _image_comments,
    "RequestAttributes > Reason (LO)": _request_reason,
    "SR TEXT item (UT)": _sr_text,
    "safe private LO": _safe_private,
}


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    from dicomnode.config import Config, ScrubConfig
    from dicomnode.scrub import build_scrubber
    from tests.conftest import SECRET

    return build_scrubber(Config(scrub=ScrubConfig(options=OPTIONS)), secret=SECRET)


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]{2,}", text)


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize(("text", "secret", "kind", "kept"), GENERIC, ids=[g[1] for g in GENERIC])
def test_no_identifier_survives_cleaning_and_the_words_around_it_do(
    scrubber: Scrubber, target: str, text: str, secret: str, kind: Kind, kept: str
) -> None:
    if len(text) > 64 and "LO" in target:
        text = text[:64]
        if secret not in text:
            pytest.fail("corpus sentence too long for an LO")  # keep the corpus short
    ds = planted_dataset()
    ds.ReferringPhysicianName = "Wetherby^Philippa"  # no title in the identity: "Dr" is a word
    read_back = TARGETS[target](ds, text)
    parsed = read_instance(to_bytes(ds))
    scrubber.scrub(parsed)
    out = read_back(pydicom.dcmread(io.BytesIO(encode_instance(parsed))))
    for run in re.findall(r"\d{3,}", secret):
        assert run not in out, (run, out)
    for word in _words(secret):
        if kind is not Kind.NAME or word.lower() not in {"dr", "mrs", "prof", "nurse", "doctor"}:
            assert not re.search(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", out), (word, out)
    assert f"[{kind}]" in out, out
    for word in _words(kept):
        assert re.search(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", out), (word, out)


def test_the_instances_own_names_and_ids_are_found_in_every_cleaned_kind(
    scrubber: Scrubber,
) -> None:
    sentence = (
        f"seen by {PHI['name_given']} {PHI['name_family'].upper()} with {PHI['pid']} "
        f"and {PHI['accession']} at {PHI['institution']}"
    )
    for target, plant in TARGETS.items():
        ds = planted_dataset()
        read_back = plant(ds, sentence)
        parsed = read_instance(to_bytes(ds))
        scrubber.scrub(parsed)
        out = read_back(pydicom.dcmread(io.BytesIO(encode_instance(parsed))))
        for secret in (PHI["name_given"], PHI["name_family"], PHI["pid"], "77219935", "Swithin"):
            assert secret.lower() not in out.lower(), (target, out)
        assert "[NAME]" in out and "[ID]" in out, (target, out)
        assert out.startswith("seen by"), (target, out)
