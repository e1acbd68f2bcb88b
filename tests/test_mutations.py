"""A mutation campaign in the suite: damaged and hostile files are refused with a reason, or
cleaned without a planted string left; never an internal error, a hang or a leak
(``tools/mutate_instances.py``, which found what tests/test_declared_lengths.py pins)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dicomnode.batch import build_stages, clean_file
from tests.conftest import SECRET, load_tool
from tests.phi import leaks

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _tool() -> ModuleType:
    return load_tool("mutate_instances")


def test_mutated_instances_are_refused_or_cleaned_never_leaked(tmp_path: Path) -> None:
    result = _tool().campaign(seed=5, count=500, out=tmp_path, seconds=20)
    counts = result["counts"]
    assert result["findings"] == [], result["findings"]
    # the campaign exercises both outcomes, not one
    assert counts.get("cleaned", 0) > 50
    assert sum(n for k, n in counts.items() if k.startswith("refused")) > 200


def test_mutants_of_the_report_and_the_multiframe_under_other_options(tmp_path: Path) -> None:
    """The structured report's content tree and the functional groups, cleaned (not
    removed) under Clean Structured Content, with UIDs and full dates retained: what the
    options keep on purpose is no leak, nothing else may be."""
    options = [
        "retain-uids",
        "retain-long-full-dates",
        "clean-structured-content",
        "clean-descriptors",
        "retain-safe-private",
    ]
    result = _tool().campaign(
        seed=8,
        count=300,
        out=tmp_path,
        which=["sr", "multiframe", "undefined-lengths"],
        options=options,
    )
    assert result["findings"] == [], result["findings"]
    assert result["counts"].get("cleaned", 0) > 30


@pytest.mark.parametrize(
    "options",
    [None, ["retain-long-full-dates", "clean-structured-content", "retain-uids"]],
    ids=["default", "structured"],
)
def test_every_base_unmutated_is_cleaned_without_a_leak(
    tmp_path: Path, options: list[str] | None
) -> None:
    """A base the node refuses, or whose leaks the oracle cannot see, makes its mutants
    worthless: a check of Pixel Representation broke every implicit VR file with a
    sequence, and the deflated copies hid every planted string from the oracle."""
    tool = _tool()
    stages = build_stages(tool.config(options), SECRET)
    exempt = {"uid_root"} if options else set()
    for name, data in tool.bases().items():
        source = tmp_path / f"{name}.dcm"
        source.write_bytes(data)
        # the oracle sees the planted strings in every base, the deflated one included
        assert {"name", "pid", "birth", "institution"} <= set(leaks(tool.readable(data))), name
        outcome = clean_file(stages, source, tmp_path / "out")
        assert outcome.reason is None, (name, outcome.message)
        assert outcome.output is not None
        assert set(leaks(tool.readable(outcome.output.read_bytes()))) <= exempt, name


def test_real_scanners_files_unmutated_are_cleaned_without_a_leak(tmp_path: Path) -> None:
    """The vendor bases (pydicom's test files of GE, RT, SR, ECG, RLE, JPEG-LS, JPEG 2000...
    with the planted identity): each is cleaned, and no planted string is left."""
    tool = _tool()
    stages = build_stages(tool.config(None), SECRET)
    bases = tool.vendor_bases()
    assert len(bases) == len(tool.VENDOR_FILES)
    for name, data in bases.items():
        source = tmp_path / f"{name}.dcm"
        source.write_bytes(data)
        assert {"name", "pid", "institution"} <= set(leaks(tool.readable(data))), name
        outcome = clean_file(stages, source, tmp_path / "out")
        assert outcome.reason is None, (name, outcome.message)
        assert outcome.output is not None
        assert not leaks(tool.readable(outcome.output.read_bytes())), name


def test_mutants_of_real_scanners_files_are_refused_or_cleaned(tmp_path: Path) -> None:
    """Seed 101 of the vendor campaign: its 84th mutant, an RLE frame eight bytes short,
    made pylibjpeg-rle panic, which went past every ``except Exception`` (test_pixel_codec)."""
    result = _tool().campaign(seed=101, count=300, out=tmp_path, vendor=True)
    assert result["findings"] == [], result["findings"]
    assert result["counts"].get("refused: pixel-decode-failed", 0) >= 1
    assert result["counts"].get("cleaned", 0) > 50


def test_damaged_compressed_frames_are_refused_or_cleaned(tmp_path: Path) -> None:
    """Changes inside the Pixel Data value only (``--pixels``) of the vendor files in RLE,
    JPEG-LS and JPEG 2000: the header reads, the decoders get the damage."""
    compressed = [
        "vendor-MR_small_RLE", "vendor-MR_small_jpeg_ls_lossless",
        "vendor-MR_small_jp2klossless", "vendor-emri_small_jpeg_2k_lossless",
        "vendor-SC_rgb_rle", "vendor-SC_rgb_rle_16bit_2frame",
    ]  # fmt: skip
    result = _tool().campaign(
        seed=201, count=300, out=tmp_path, which=compressed, vendor=True, pixels=True
    )
    assert result["findings"] == [], result["findings"]
    counts = result["counts"]
    assert counts.get("refused: pixel-decode-failed", 0) > 100, counts
    assert counts.get("cleaned", 0) > 30, counts


@pytest.mark.parametrize(("seed", "count", "vendor"), [(4, 150, False), (101, 300, True)])
def test_mutants_sent_to_a_node_are_finished_or_refused_and_the_node_serves_on(
    tmp_path: Path, seed: int, count: int, vendor: bool
) -> None:
    """The same mutants over C-STORE to a node whose projects match on the header, so the
    listener reads each one's header before it acknowledges: every acknowledged one has an
    outcome, the node answers C-ECHO after each, no traceback, no planted string in a clean
    copy. Seed 101 of real scanners' files holds a birth date with a superscript digit ('2³'):
    the free-text cleaner raised on it and the instance went to scrub-failed with no reason of
    its own (tests/test_freetext.py).

    In a process of its own: pynetdicom as this process has it after other tests (dicomnode's
    modules set up its C-STORE encoding) sent other mutants, fewer of them readable."""
    import json
    import subprocess
    import sys

    command = [sys.executable, str(TOOLS / "mutate_instances.py"), "--node", "--json"]
    command += ["--seed", str(seed), "--count", str(count), "--out", str(tmp_path)]
    run = subprocess.run(
        command + (["--vendor"] if vendor else []), capture_output=True, text=True, timeout=280
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["findings"] == [], result["findings"]
    counts = result["counts"]
    assert counts.get("acknowledged", 0) > 40, counts
    assert counts.get("clean copies read", 0) > 30, counts
    assert counts.get("audit: quarantined", 0) > 5, counts


def test_a_hang_inside_the_pixel_stage_is_reported_as_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The campaign's time limit must not be caught by the code it limits: as an Exception it
    was, and the pixel stage reported a decoder that never returned as pixel-stage-failed."""
    import time

    from dicomnode.pixels import codec

    frames = codec.FrameSource.frames

    def stuck(self: codec.FrameSource, stop: int | None = None) -> Iterator[np.ndarray]:
        time.sleep(5)
        yield from frames(self, stop)

    monkeypatch.setattr(codec.FrameSource, "frames", stuck)
    result = _tool().campaign(seed=5, count=2, out=tmp_path, seconds=1, which=["explicit"])
    assert [f["kind"] for f in result["findings"]] == ["hang"], result


def test_the_mutations_change_the_instances_and_are_repeatable() -> None:
    tool = _tool()
    originals = tool.bases()
    assert set(originals) == {
        "explicit", "implicit", "deflated", "big-endian", "jpeg", "undefined-lengths", "sr",
        "multiframe",
    }  # fmt: skip
    assert tool.bases() == originals  # the same bytes every run: a seed means its mutants
    first = tool.mutate(originals["explicit"], random.Random(3))
    assert first == tool.mutate(originals["explicit"], random.Random(3))
    assert first != originals["explicit"]
