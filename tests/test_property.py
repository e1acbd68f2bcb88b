"""Property: whatever the dataset, no string from a PHI attribute of the input appears in the
output. Random values are placed at the top level, inside sequences at random depths, and in
private attributes."""

from __future__ import annotations

from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.dicomio import encode_instance, read_instance
from dicomnode.scrub import Action, Scrubber
from tests.conftest import SECRET
from tests.phi import planted_dataset, to_bytes

TEXT_VRS = ("PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "DA", "DT", "UI")
PROTECTING = {
    Action.REMOVE,
    Action.EMPTY,
    Action.DUMMY,
    Action.UID,
    Action.HASH,
    Action.SET,
    Action.CLEAN,
    Action.DATE,
}
CONTAINERS = [
    "ReferencedSeriesSequence",
    "ContentSequence",
    "RequestAttributesSequence",
    "ReferencedImageSequence",
    "AnatomicRegionSequence",
    "ProcedureCodeSequence",
]


@cache
def scrubbers() -> dict[str, Scrubber]:
    from dicomnode.config import Config, ScrubConfig
    from dicomnode.scrub import build_scrubber

    return {
        "basic": build_scrubber(Config(scrub=ScrubConfig(options=())), secret=SECRET),
        "default": build_scrubber(Config(), secret=SECRET),
    }


@cache
def phi_tags(name: str) -> list[int]:
    """Attributes the profile protects (any action but keep) with a text-like VR."""
    profile = scrubbers()[name].profile
    tags = []
    for tag, rule in profile.public.items():
        if rule.action not in PROTECTING or tag >> 16 in (0x0000, 0x0002, 0x0004):
            continue  # command, meta and directory groups cannot be written in a dataset
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in TEXT_VRS and keyword_for_tag(tag) not in ("SpecificCharacterSet", "PatientSex"):
            tags.append(tag)
    return sorted(tags)


TOKENS = st.from_regex(r"[B-DF-HJ-NP-TV-Z]{6}[0-9]{3}", fullmatch=True)
DATES = st.dates(
    min_value=__import__("datetime").date(1950, 1, 1),
    max_value=__import__("datetime").date(2030, 12, 31),
)


def _value(vr: str, token: str, date: str, n: int) -> str:
    if vr == "PN":
        return f"{token}^{token[::-1]}"
    if vr == "DA":
        return date
    if vr == "DT":
        return date + "120000"
    if vr == "UI":
        return f"1.2.999.{int(token[-3:]) + 1}.{n + 1}"
    if vr in ("SH", "AE"):
        return token
    return f"{token} {token[::-1]}"


@st.composite
def datasets(draw: st.DrawFn, name: str) -> tuple[Dataset, list[str]]:
    ds = planted_dataset()
    # The planted dataset carries its own PHI; here only the drawn values are checked.
    tags = draw(st.lists(st.sampled_from(phi_tags(name)), min_size=1, max_size=12, unique=True))
    date = draw(DATES).strftime("%Y%m%d")
    secrets_out: list[str] = []
    for n, tag in enumerate(tags):
        vr = dictionary_VR(tag)
        if vr == "SQ":
            continue
        token = draw(TOKENS)
        value = _value(vr, token, date, n)
        depth = draw(st.integers(0, 3))
        target = ds
        for _ in range(depth):
            container = draw(st.sampled_from(CONTAINERS))
            item = Dataset()
            setattr(target, container, Sequence([item]))
            target = item
        target.add_new(tag, vr, value)
        secrets_out.append(date if vr in ("DA", "DT") else value)
    if draw(st.booleans()):
        token = draw(TOKENS)
        block = ds.private_block(0x0011, draw(TOKENS), create=True)
        block.add_new(0x10, "LO", token)
        secrets_out.append(token)
    return ds, secrets_out


def _check(name: str, case: tuple[Dataset, list[str]]) -> None:
    ds, planted = case
    parsed = read_instance(to_bytes(ds))
    scrubbers()[name].scrub(parsed)
    out = encode_instance(parsed)
    for value in planted:
        for variant in {value, value.replace("^", " ")}:
            assert variant.encode() not in out, f"{variant!r} leaked"
        for part in value.replace("^", " ").split():
            if len(part) >= 6:
                assert part.encode() not in out, f"{part!r} leaked"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets("basic"))
def test_basic_profile_leaks_nothing(case: tuple[Dataset, list[str]]) -> None:
    _check("basic", case)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets("default"))
def test_default_options_leak_nothing(case: tuple[Dataset, list[str]]) -> None:
    _check("default", case)
