"""One validation path: every YAML file through one loader, one error format (file, line,
setting, fix, never pydantic's words), and ``check-config`` running what ``serve`` runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.config import Config, load_config
from dicomnode.errors import ConfigError
from dicomnode.pixels.policy import load_policy
from dicomnode.validate import ConfigProblems, Problem, Severity, validate_all
from tests.conftest import SECRET

PYDANTIC_WORDS = ("Input should be", "Field required", "validation error for", "Value error,")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(call: object) -> list[Problem]:
    assert callable(call)
    with pytest.raises(ConfigProblems) as caught:
        call()
    return list(caught.value.problems)


def no_pydantic_words(text: str) -> None:
    for words in PYDANTIC_WORDS:
        assert words not in text, text


def quiet(tmp_path: Path, extra: str = "") -> Path:
    """A configuration that builds fast (no OCR models) and writes only under tmp_path."""
    return write(
        tmp_path,
        "dicomnode.yaml",
        f"spool: {{path: spool}}\nlogging: {{audit_file: audit/audit.jsonl}}\n"
        f"destinations: [{{name: out, type: folder, path: out}}]\n{extra}",
    )


# -- the loader and the error format ------------------------------------------------------------


def test_config_errors_name_file_line_setting_and_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dicomnode.yaml",
        "node:\n"  # 1
        "  port: 70000\n"  # 2
        "  ae_titel: NODE\n"  # 3
        "scrub:\n"  # 4
        "  lookup:\n"  # 5
        "    unmapped: drop\n"  # 6
        "pixels:\n"  # 7
        "  enabled: maybe\n"  # 8
        "destinations:\n"  # 9
        "  - {name: a, type: dicom, ae_title: PACS, host: h, port: x}\n"  # 10
        "  - {name: b, type: smoke-signal}\n",  # 11
    )
    problems = problems_of(lambda: load_config(path))
    by_setting = {p.setting: p for p in problems}
    expected = {
        "node.port": (2, "out of range", "at most 65535"),
        "node.ae_titel": (3, "unknown setting", "did you mean 'ae_title'?"),
        "scrub.lookup.path": (5, "required", "add it"),
        "scrub.lookup.unmapped": (6, "'drop' is not a choice", "'quarantine' or 'pseudonym'"),
        "pixels.enabled": (8, "not true or false", "true or false"),
        "destinations[0].port": (10, "not a whole number", "whole number"),
        "destinations[1]": (11, "'smoke-signal' is not known", "'folder'"),
    }
    assert set(by_setting) == set(expected), [str(p) for p in problems]
    for setting, (line, message, fix) in expected.items():
        problem = by_setting[setting]
        assert problem.file == path and problem.line == line, str(problem)
        assert message in problem.message and problem.fix and fix in problem.fix, str(problem)
        assert str(problem).startswith(f"{path}, line {line}: {setting}: ")
        no_pydantic_words(str(problem))
    assert [p.line for p in problems] == sorted(p.line or 0 for p in problems)  # file order


def test_yaml_mistakes_are_errors_with_their_line(tmp_path: Path) -> None:
    broken = write(tmp_path, "a.yaml", "scrub:\n  options: [clean-descriptors\nnode: {}\n")
    (problem,) = problems_of(lambda: load_config(broken))
    assert problem.file == broken and problem.line is not None and problem.line >= 2
    assert "not valid YAML" in problem.message
    twice = write(tmp_path, "b.yaml", "node:\n  port: 104\nscrub: {}\nnode:\n  port: 11112\n")
    (problem,) = problems_of(lambda: load_config(twice))
    assert problem.line == 4 and "'node' is given twice" in problem.message
    assert "first on line 1" in problem.message
    problems = problems_of(lambda: load_config(tmp_path / "absent.yaml"))
    assert "cannot read the configuration" in problems[0].message


def test_site_rules_report_every_bad_rule_with_its_line(tmp_path: Path) -> None:
    site = write(
        tmp_path,
        "site.yaml",
        "rules:\n"  # 1
        "  - keyword: StationNam\n"  # 2
        "    action: remove\n"  # 3
        "  - keyword: SeriesDescription\n"  # 4
        "    action: keep\n"  # 5
        "  - keyword: InstitutionName\n"  # 6
        "    action: set\n",  # 7
    )
    config = Config.model_validate({"scrub": {"site_rules": site}})
    problems = [p for p in validate_all(config, secret=SECRET) if p.severity is Severity.ERROR]
    assert [(p.file, p.line) for p in problems] == [(site, 2), (site, 6)]
    assert "did you mean 'StationName'" in problems[0].message
    assert problems[0].setting == "rule 1 (keyword: StationNam): keyword"
    assert problems[1].setting == "rule 3 (keyword: InstitutionName)"
    assert "needs a 'value'" in problems[1].message


def test_a_site_rule_keeping_a_direct_identifier_is_a_warning(tmp_path: Path) -> None:
    site = write(
        tmp_path,
        "site.yaml",
        "rules:\n"
        "  - {keyword: SeriesDescription, action: keep}\n"
        "  - {keyword: PatientID, action: keep}\n"
        "  - {tag: '(0010,0030)', action: keep}\n"
        "  - {keyword: AccessionNumber, action: hash}\n",
    )
    config = load_config(
        quiet(tmp_path, f"scrub: {{site_rules: {site}}}\npixels: {{enabled: false}}\n")
    )
    problems = validate_all(config, secret=SECRET)
    assert all(p.severity is Severity.WARNING for p in problems), [str(p) for p in problems]
    assert [(p.line, p.setting) for p in problems] == [
        (3, "rule 2 (keyword: PatientID)"),
        (4, "rule 3 (tag: (0010,0030))"),
    ]
    assert "PatientBirthDate, a direct identifier" in problems[1].message


# -- the pixel policy -------------------------------------------------------------------------


def test_a_region_without_field_is_an_error_not_a_crash_at_start(tmp_path: Path) -> None:
    policy = write(
        tmp_path,
        "pixels.yaml",
        "regions:\n"
        "  - label: banner\n"
        "    when: [[{op: equals, value: US}]]\n"
        "    boxes: [[0, 0, 320, 50]]\n",
    )
    (problem,) = problems_of(lambda: load_policy(policy))
    assert (problem.file, problem.line) == (policy, 3)
    assert problem.setting == "regions[0].when[0][0].field" and "required" in problem.message
    # serve builds the stages through the same loader: the same error, never a KeyError
    config = Config.model_validate({"pixels": {"policy": policy}})
    assert [str(p) for p in validate_all(config, secret=SECRET)] == [str(problem)]


def test_unknown_operators_are_errors_naming_the_valid_ones(tmp_path: Path) -> None:
    policy = write(
        tmp_path,
        "pixels.yaml",
        "use_known_regions: false\n"
        "regions:\n"
        "  - {label: a, when: [[{field: Manufacturer, op: equal, value: ACME}]], boxes: [[0, 0, 9, 9]]}\n"
        "  - {label: b, when: [[{field: Manufacturr, op: equals, value: X}]], boxes: [[0, 0, 9, 9]]}\n"
        "  - {label: c, when: [[{field: Modality, op: contains, value: 'US('}]], boxes: [[0, 0, 9, 9]]}\n"
        "  - {label: d, when: [[{field: Modality, op: present}]], boxes: [[5, 0, 2, 9]]}\n"
        "  - {label: e, when: [[{field: Modality, op: present}]]}\n",
    )
    problems = problems_of(lambda: load_policy(policy))
    assert [p.line for p in problems] == [3, 4, 5, 6, 7]
    assert "unknown operator 'equal'; use one of present, missing, empty, equals" in str(
        problems[0]
    )
    assert "did you mean 'Manufacturer'" in problems[1].message
    assert "not a valid regular expression" in problems[2].message
    assert "is not a box" in problems[3].message
    assert "removes nothing" in problems[4].message
    for problem in problems:
        no_pydantic_words(str(problem))


def test_operators_do_what_they_say(tmp_path: Path) -> None:
    when = {
        "equals": "{field: Modality, op: equals, value: US}",
        "notequals": "{field: Modality, op: notequals, value: US}",
        "startswith": "{field: Manufacturer, op: startswith, value: acme}",
        "contains": "{field: Manufacturer, op: contains, value: 'ME C.rp'}",
        "present": "{field: StationName, op: present}",
        "missing": "{field: StationName, op: missing}",
        "empty": "{field: StationName, op: empty}",
    }
    regions = "".join(
        f"  - {{label: {name}, when: [[{cond}]], boxes: [[0, 0, 1, 1]]}}\n"
        for name, cond in when.items()
    )
    policy = load_policy(
        write(tmp_path, "p.yaml", "use_known_regions: false\nregions:\n" + regions)
    )

    def matching(header: dict[str, object]) -> set[str]:
        return {r.label for r in policy.regions if r.applies(header)}

    assert matching({"Modality": "US", "Manufacturer": "ACME Corp"}) == {
        "equals",
        "startswith",
        "contains",
        "missing",
    }
    assert matching({"Modality": "USX", "Manufacturer": "Other", "StationName": ""}) == {
        "notequals",
        "empty",
    }
    assert matching({"Modality": "CT", "StationName": "S1"}) == {"notequals", "present"}


def test_the_shipped_policy_and_known_regions_are_valid() -> None:
    policy = load_policy()
    assert len(policy.regions) == 105  # 107 known regions, 2 disabled


# -- the secret ---------------------------------------------------------------------------------


def test_the_secret_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config.model_validate({"pixels": {"enabled": False}})

    def secret_problems(**kwargs: bool) -> list[Problem]:
        return [p for p in validate_all(config, **kwargs) if p.setting == "secret" or p.file]

    monkeypatch.delenv("DICOMNODE_SECRET")
    (missing,) = secret_problems()
    assert missing.severity is Severity.ERROR and "no pseudonym secret" in missing.message
    (demo,) = secret_problems(demo=True)
    assert demo.severity is Severity.WARNING and "PUBLIC demo secret" in demo.message
    monkeypatch.setenv("DICOMNODE_SECRET", "short")
    (short,) = secret_problems()
    assert short.severity is Severity.ERROR and "at least 16" in short.message
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.delenv("DICOMNODE_SECRET")
    monkeypatch.setenv("DICOMNODE_SECRET_FILE", str(secret))
    secret.chmod(0o600)
    assert secret_problems() == []
    secret.chmod(0o644)
    (loose,) = secret_problems()
    assert loose.severity is Severity.WARNING and loose.file == secret
    assert "readable by every local user (mode 0644)" in loose.message
    secret.chmod(0o640)  # ours, and group-readable: a group that need not read it
    (group,) = secret_problems()
    assert group.severity is Severity.WARNING and "readable by group" in group.message
    assert "0123456789abcdef" not in " ".join(str(p) for p in validate_all(config))


# -- files start-up opens ----------------------------------------------------------------------


def test_what_start_up_writes_and_opens_is_checked(tmp_path: Path) -> None:
    blocker = write(tmp_path, "a-file", "")
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    config = load_config(
        write(
            tmp_path,
            "c.yaml",
            "spool: {path: a-file/spool}\n"
            "pixels: {enabled: false}\n"
            "node: {tls: {certificate: cert.pem, private_key: key.pem}}\n",
        )
    )
    problems = validate_all(config, secret=SECRET)
    settings = {p.setting: p for p in problems}
    assert f"{blocker} is not a folder" in settings["spool.path"].message
    assert settings["spool.path"].line == 1
    assert "TLS files cannot be used" in settings["node.tls"].message
    assert settings["node.tls"].line == 3


# -- check-config and serve: the same checks -----------------------------------------------------


def test_check_config_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = quiet(tmp_path, "pixels: {enabled: false}\nquarantine: {keep_days: 14}\n")
    assert main(["check-config", "--config", str(good)]) == 0
    out = capsys.readouterr()
    assert "configuration OK" in out.out and "quarantine: originals kept 14 days" in out.out
    assert out.err == ""
    site = write(tmp_path, "site.yaml", "rules:\n  - {keyword: PatientName, action: keep}\n")
    warned = quiet(tmp_path, f"pixels: {{enabled: false}}\nscrub: {{site_rules: {site}}}\n")
    assert main(["check-config", "--config", str(warned)]) == 0
    out = capsys.readouterr()
    assert "configuration OK" in out.out and "1 warning(s)" in out.out
    assert out.err.startswith(f"warning: {site}, line 2: rule 1 (keyword: PatientName): keeps")
    bad = quiet(tmp_path, "pixels: {enabled: false}\nnode: {port: -1}\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}, line 5: node.port: -1 is out of range" in err
    assert "configuration NOT OK: 1 error(s)" in err
    no_pydantic_words(err)


def test_check_config_builds_the_pixel_stage_like_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = quiet(tmp_path, "pixels: {detector: {backend: paddleocr}}\n")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "the paddleocr backend needs pixels.detector.det_model_dir" in err


def test_serve_refuses_to_start_on_what_check_config_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = write(
        tmp_path, "p.yaml", "regions:\n  - {when: [[{op: equal}]], boxes: [[0, 0, 1, 1]]}\n"
    )
    config = quiet(tmp_path, f"pixels: {{policy: {policy}}}\n")
    assert main(["check-config", "--config", str(config)]) == 2
    checked = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]

    def no_node(*args: object, **kwargs: object) -> None:
        raise AssertionError("the node must not be built from an invalid configuration")

    monkeypatch.setattr("dicomnode.node.Node", no_node)
    assert main(["serve", "--config", str(config)]) == 2
    served = [
        line.removeprefix("dicomnode: ")
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("dicomnode: ")
    ]
    assert len(checked) == 2 and served == [line.removeprefix("error: ") for line in checked]
    assert not (tmp_path / "spool").exists()


def test_config_error_is_still_a_config_error(tmp_path: Path) -> None:
    """Callers that catch ConfigError (reload, the CLI) keep working."""
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "x.yaml", "[1, 2]\n"))
    assert os.path.exists(tmp_path / "x.yaml")
