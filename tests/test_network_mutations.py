"""A mutation campaign on the network path: damaged and hostile associations never take the
node down, hold its slots, lose an acknowledged instance or carry a planted string out
(``tools/mutate_network.py``, which found what test_hostile_network.py's slot tests pin)."""

from __future__ import annotations

import random
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_tool

pytestmark = pytest.mark.peers


def _tool() -> ModuleType:
    return load_tool("mutate_network")


def test_mutated_associations_never_stop_the_node_or_lose_an_instance(tmp_path: Path) -> None:
    result = _tool().campaign(seed=3, count=150, out=tmp_path)
    assert result["findings"] == [], result["findings"]
    counts = result["counts"]
    # both outcomes are exercised: stores that still went through, and refusals
    assert counts.get("acknowledged", 0) > 10, counts
    assert counts.get("not acknowledged", 0) > 50, counts
    assert counts.get("delivered", 0) > 10 and counts.get("quarantined", 0) > 5, counts


def test_mutated_associations_inside_mutual_tls_and_many_at_once(tmp_path: Path) -> None:
    """The same, with the association's bytes mutated inside mutual TLS (what a sender
    with a valid certificate can do) and eight replayed at once."""
    result = _tool().campaign(seed=21, count=100, out=tmp_path, parallel=8, tls=True)
    assert result["findings"] == [], result["findings"]
    counts = result["counts"]
    assert counts.get("acknowledged", 0) > 5, counts
    assert counts.get("not acknowledged", 0) > 30, counts
    assert counts.get("delivered", 0) > 5, counts


def test_each_mutant_has_its_own_instance_and_the_mutations_repeat() -> None:
    tool = _tool()
    assert len(tool.instance_uid(7)) == len(tool.instance_uid(12345)) == len(tool._UID)
    assert tool.instance_uid(7) != tool.instance_uid(8)
    stream = bytes(range(256)) * 8
    first = tool.mutate(stream, random.Random(4))
    assert first == tool.mutate(stream, random.Random(4)) and first != stream
