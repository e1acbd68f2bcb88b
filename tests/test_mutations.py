"""A mutation campaign in the suite: damaged and hostile files are refused with a reason, or
cleaned without a planted string left; never an internal error, a hang or a leak
(``tools/mutate_instances.py``, which found what tests/test_declared_lengths.py pins)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mutate_instances", ROOT / "tools" / "mutate_instances.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_mutated_instances_are_refused_or_cleaned_never_leaked(tmp_path: Path) -> None:
    result = _tool().campaign(seed=5, count=500, out=tmp_path, seconds=20)
    counts = result["counts"]
    assert result["findings"] == [], result["findings"]
    # the campaign exercises both outcomes, not one
    assert counts.get("cleaned", 0) > 50
    assert sum(n for k, n in counts.items() if k.startswith("refused")) > 200


def test_the_mutations_change_the_instances_and_are_repeatable() -> None:
    tool = _tool()
    originals = tool.bases()
    assert set(originals) == {"explicit", "implicit", "deflated", "big-endian", "jpeg"}
    assert tool.bases() == originals  # the same bytes every run: a seed means its mutants
    first = tool.mutate(originals["explicit"], random.Random(3))
    assert first == tool.mutate(originals["explicit"], random.Random(3))
    assert first != originals["explicit"]
