"""The profile as data: generated files up to date, and site files validated with errors that
name the file, the rule and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomnode.config import load_config
from dicomnode.errors import ConfigError
from dicomnode.scrub import Option, load_profile
from dicomnode.scrub.profile import rules_dir

ROOT = Path(__file__).resolve().parent.parent


def test_generated_profile_matches_its_source() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "generate_rules.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_row_and_option_is_covered() -> None:
    source = json.loads((rules_dir() / "source" / "ps3.15-table-e1-1.json").read_text())
    basic = yaml.safe_load((rules_dir() / "profile" / "basic.yaml").read_text())
    assert basic["edition"] == "2024b"
    assert len(basic["attributes"]) == len(source) == 621
    for option in Option:
        data = yaml.safe_load((rules_dir() / "profile" / f"{option.value}.yaml").read_text())
        assert data["edition"] == "2024b"
        assert data["code"].startswith("1131")
        assert data["attributes"]
    safe = yaml.safe_load((rules_dir() / "profile" / "retain-safe-private.yaml").read_text())
    assert len(safe["safe_private"]) > 400


def test_full_and_modified_dates_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        load_profile(["retain-long-full-dates", "retain-long-modified-dates"])


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="retain-safe-private"):
        load_profile(["retain-everything"])


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "- keyword: StationNam\n  action: remove",
            r"rule 1 \(keyword: StationNam\).*did you mean 'StationName'",
        ),
        (
            "- keyword: StationName\n  action: delete",
            r"rule 1 .*unknown action 'delete'; use one of keep, remove",
        ),
        ("- keyword: InstitutionName\n  action: set", r"rule 1 .*action 'set' needs a 'value'"),
        (
            "- tag: '(0029,xx10)'\n  action: keep",
            r"rule 1 \(tag: \(0029,xx10\)\).*needs its 'creator'",
        ),
        ("- tag: '0008-0050'\n  action: keep", r"write it as '\(0008,0050\)'"),
        (
            "- keyword: StationName\n  tag: '(0008,1010)'\n  action: keep",
            "exactly one of 'tag' or 'keyword'",
        ),
        (
            "- keyword: AccessionNumber\n  action: hash\n  prefix: TOOLONGPREFIX",
            r"rule 1 \(keyword: AccessionNumber\): prefix",
        ),
        ("- keyword: StationName\n  action: remove\n  colour: red", "colour"),
    ],
)
def test_site_file_errors_name_file_rule_and_fix(tmp_path: Path, rules: str, message: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("rules:\n" + "\n".join("  " + line for line in rules.splitlines()) + "\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_profile([], site)
    assert str(site) in str(caught.value)


def test_site_file_that_is_not_yaml(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("rules: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile([], site)


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "dicomnode.yaml"
    config.write_text("scrub:\n  date_shift_days: [-10, 10]\n  patient_id_prefx: X\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value)
    assert str(config) in text
    assert "scrub.date_shift_days" in text and "must not include 0" in text
    assert "scrub.patient_id_prefx: unknown setting" in text


def test_config_site_rules_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("rules: []\n")
    config = tmp_path / "dicomnode.yaml"
    config.write_text("scrub:\n  site_rules: site.yaml\n")
    assert load_config(config).scrub.site_rules == tmp_path / "site.yaml"
    config.write_text("scrub:\n  site_rules: missing.yaml\n")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(config)


def test_example_site_file_is_valid() -> None:
    profile = load_profile([], rules_dir() / "site.example.yaml")
    assert profile.site_file is not None
