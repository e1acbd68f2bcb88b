"""Compile the rule files into one lookup table, once.

Layers, later ones winning: the Basic Profile (``rules/profile/basic.yaml``), the options in
force (one file each; where two options disagree the more protective action wins), the local
policy (``rules/profile/local.yaml``), then the site rules file. Attributes of the DICOM
dictionary that no layer lists are kept, or handled by their VR (local policy); attributes in
neither the table nor the dictionary are removed, as are private attributes no rule keeps.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydicom.datadict import DicomDictionary, keyword_dict  # type: ignore[attr-defined]

from dicomnode.errors import ConfigError
from dicomnode.scrub.actions import PROTECTION, SITE_ACTIONS, Action, DateMode, Option
from dicomnode.scrub.values import MAX_LENGTH
from dicomnode.validate import (
    ConfigProblems,
    Problem,
    error,
    model_problems,
    parse_model,
    read_yaml,
    setting_name,
)

__all__ = ["Profile", "Rule", "load_profile", "rules_dir"]


def rules_dir() -> Path:
    """The folder of the shipped rule files: inside the wheel, or ./rules in a checkout."""
    packaged = Path(__file__).resolve().parent.parent / "_rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent.parent / "rules"


@dataclass(frozen=True, slots=True)
class Rule:
    """The resolved action for one attribute, and where it came from (for `explain`)."""

    action: Action
    source: str
    value: str | None = None  # SET
    prefix: str = ""  # HASH
    code: str | None = None  # a combined code of Table E.1-1 (X/Z...): the IOD decides
    vr: str | None = None  # a safe private attribute's VR (Table E.3.10-1)


PrivateKey = tuple[int, str, int]  # (group, private creator, low byte of the element)

_TAG = re.compile(
    r"^\(?\s*([0-9A-Fa-f]{4}|[56]0xx)\s*,\s*([0-9A-Fa-f]{4}|xx[0-9A-Fa-f]{2}|xxxx)\s*\)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Profile:
    """The compiled profile: everything the engine needs to decide an attribute's fate."""

    edition: str
    options: frozenset[Option]
    date_mode: DateMode
    public: Mapping[int, Rule]
    repeating: Mapping[tuple[int, int], Rule]  # (0x5000|0x6000, element or -1) -> rule
    private: Mapping[PrivateKey, Rule]
    unlisted_by_vr: Mapping[str, Rule]
    keep_unlisted: frozenset[int]
    identity: Mapping[int, str]  # tag -> kind of identifying value (NAME, ID, PHONE...)
    codes: tuple[tuple[str, str], ...]  # CID 7050 (code value, meaning) in force
    site_file: str | None
    clean_words: tuple[str, ...] = ()
    methods: tuple[str, ...] = field(default=())

    def lookup(self, tag: int) -> Rule | None:
        """The rule of a public tag the tables know, or None."""
        rule = self.public.get(tag)
        if rule is not None:
            return rule
        group = tag >> 16
        base = group & 0xFF00
        if base in (0x5000, 0x6000) and not group & 1:
            return self.repeating.get((base, tag & 0xFFFF)) or self.repeating.get((base, -1))
        return None


def parse_tag(text: str) -> tuple[int, int | None, int]:
    """Parse '(0008,0050)', '0008,0050', '(60xx,3000)' or '(0019,xx0C)'.

    Returns (group, element or None for 'xx..', low byte); groups '50xx'/'60xx' give
    0x5000/0x6000.
    """
    m = _TAG.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a tag; write it as '(0008,0050)'")
    g, e = m.group(1).lower(), m.group(2).lower()
    group = int(g.replace("xx", "00"), 16)
    if e == "xxxx":
        return group, None, -1
    if e.startswith("xx"):
        return group, None, int(e[2:], 16)
    return group, int(e, 16), int(e, 16) & 0xFF


def _read_yaml(path: Path) -> Any:
    """A shipped table (read by the one loader, without the checks for edited files)."""
    return read_yaml(path, what="a rules table", strict=False).data


@cache
def _profile_file(name: str) -> dict[str, Any]:
    path = rules_dir() / "profile" / name
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return data


def _table_rules(
    data: dict[str, Any], source: str
) -> tuple[dict[int, Rule], dict[tuple[int, int], Rule], Rule | None]:
    exact: dict[int, Rule] = {}
    repeating: dict[tuple[int, int], Rule] = {}
    private: Rule | None = None
    for key, row in data.get("attributes", {}).items():
        code = str(row["action"])
        rule = Rule(Action.from_code(code), source, code=code if "/" in code else None)
        if key == "private":
            private = rule
            continue
        group, element, _ = parse_tag(key)
        if group in (0x5000, 0x6000):
            repeating[(group, -1 if element is None else element)] = rule
        else:
            assert element is not None
            exact[(group << 16) | element] = rule
    return exact, repeating, private


# -- site rules ----------------------------------------------------------------------------


class _SiteRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str | None = None
    keyword: str | None = None
    creator: str | None = None
    action: str
    value: str | None = None
    prefix: str = ""
    why: str | None = None

    @field_validator("action")
    @classmethod
    def _known_action(cls, v: str) -> str:
        if v not in SITE_ACTIONS:
            raise ValueError(f"unknown action {v!r}; use one of {', '.join(SITE_ACTIONS)}")
        return v

    @field_validator("keyword")
    @classmethod
    def _known_keyword(cls, v: str | None) -> str | None:
        if v is not None and v not in keyword_dict:
            near = difflib.get_close_matches(v, list(keyword_dict), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown DICOM keyword {v!r}{hint}")
        return v

    @field_validator("tag")
    @classmethod
    def _valid_tag(cls, v: str | None) -> str | None:
        if v is not None:
            parse_tag(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> _SiteRule:
        if (self.tag is None) == (self.keyword is None):
            raise ValueError("give exactly one of 'tag' or 'keyword'")
        if self.action == "set" and self.value is None:
            raise ValueError("action 'set' needs a 'value'")
        if self.action != "set" and self.value is not None:
            raise ValueError("'value' is only for action 'set'")
        if self.prefix and self.action != "hash":
            raise ValueError("'prefix' is only for action 'hash'")
        if self.tag is not None:
            group, element, _ = parse_tag(self.tag)
            if group & 1:
                if self.creator is None:
                    raise ValueError(
                        "a private tag needs its 'creator' (the Private Creator string, "
                        "e.g. 'SIEMENS CSA HEADER'); write the tag as '(0029,xx10)'"
                    )
                if element is not None and element >> 8 == 0:
                    raise ValueError("private creator elements are kept with their block")
            elif self.creator is not None:
                raise ValueError("'creator' is only for private tags (odd groups)")
        return self


class _SiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    rules: list[dict[str, Any]] = []
    clean_words: list[str] = []


def _describe(raw: Any) -> str:
    if isinstance(raw, dict):
        for key in ("keyword", "tag"):
            if key in raw:
                return f"{key}: {raw[key]}"
    return "?"


def _rule_setting(name: str) -> Callable[[list[str | int]], str]:
    def setting(parts: list[str | int]) -> str:
        return f"{name}: {setting_name(parts)}" if parts else name

    return setting


def _load_site(path: Path) -> tuple[str | None, list[tuple[_SiteRule, str]], list[str]]:
    """The site rules file, every rule checked; all the errors at once, each with its line."""
    doc = read_yaml(path, what="the site rules file")
    site = parse_model(
        _SiteFile,
        doc.data if doc.data is not None else {},
        doc,
        hint="a site rules file has 'rules:' (a list) and optionally 'name:' and "
        "'clean_words:'; see rules/site.example.yaml",
    )
    out = []
    problems: list[Problem] = []
    for index, raw in enumerate(site.rules, start=1):
        name = f"rule {index} ({_describe(raw)})"
        try:
            rule = _SiteRule.model_validate(raw)
        except ValidationError as exc:
            problems += model_problems(
                _SiteRule,
                exc,
                doc,
                prefix=("rules", index - 1),
                setting=_rule_setting(name),
            )
            continue
        why = _hash_room(rule)
        if why:
            problems.append(
                error(why, file=path, line=doc.line(("rules", index - 1, "prefix")), setting=name)
            )
        out.append((rule, f"site {path.name} rule {index}"))
    if problems:
        raise ConfigProblems(problems)
    return site.name, out, list(site.clean_words)


# -- compilation ---------------------------------------------------------------------------


def _hash_room(rule: _SiteRule) -> str | None:
    """Why a ``hash`` rule's prefix leaves too little room for the pseudonym, or None."""
    if rule.action != "hash" or rule.keyword is None:
        return None
    vr = _dictionary_vrs().get(keyword_dict[rule.keyword], "LO")
    room = MAX_LENGTH.get(vr, 64) - len(rule.prefix)
    if room >= 8:
        return None
    return (
        f"prefix {rule.prefix!r} leaves {room} characters of a {vr} value for the pseudonym; "
        f"use a prefix of at most {MAX_LENGTH.get(vr, 64) - 8}"
    )


def _apply_site(
    site_rules: list[tuple[_SiteRule, str]],
    site_file: Path,
    public: dict[int, Rule],
    repeating: dict[tuple[int, int], Rule],
    private: dict[PrivateKey, Rule],
) -> None:
    """Layer the site's rules over everything else."""
    for site_rule, source in site_rules:
        action = SITE_ACTIONS[site_rule.action]
        compiled = Rule(action, source, value=site_rule.value, prefix=site_rule.prefix)
        if site_rule.keyword is not None:
            public[keyword_dict[site_rule.keyword]] = compiled
            continue
        assert site_rule.tag is not None
        group, element, low = parse_tag(site_rule.tag)
        if group & 1:
            assert site_rule.creator is not None
            private[(group, site_rule.creator, low)] = compiled
        elif group in (0x5000, 0x6000):
            repeating[(group, -1 if element is None else element)] = compiled
        else:
            assert element is not None
            public[(group << 16) | element] = compiled


def _merge_option(current: Rule | None, new: Rule) -> Rule:
    if current is None or current.source == "basic":
        return new
    return new if PROTECTION[new.action] > PROTECTION[current.action] else current


@cache
def _dictionary_vrs() -> dict[int, str]:
    return {tag: entry[0] for tag, entry in DicomDictionary.items()}


def load_profile(
    options: Iterable[Option | str] = (),
    site_file: Path | None = None,
) -> Profile:
    """Compile the Basic Profile, ``options`` and an optional site rules file.

    Raises :class:`ConfigError` naming the file, the rule and the fix when anything is wrong.
    """
    try:
        chosen = frozenset(Option(o) for o in options)
    except ValueError as exc:
        raise ConfigError(f"{exc}; options are: {', '.join(o.value for o in Option)}") from None
    if {Option.RETAIN_LONG_FULL_DATES, Option.RETAIN_LONG_MODIFIED_DATES} <= chosen:
        raise ConfigError(
            "options retain-long-full-dates and retain-long-modified-dates exclude each "
            "other: choose one"
        )
    path = site_file.resolve() if site_file else None
    stamp = None
    if path is not None:
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return _compile(chosen, path, stamp)


@cache
def _compile(options: frozenset[Option], site_file: Path | None, _stamp: object = None) -> Profile:
    """The compiled table; cached per options and site file version (its mtime and size)."""
    basic = _profile_file("basic.yaml")
    public, repeating, _ = _table_rules(basic, "basic")
    private_rules: dict[PrivateKey, Rule] = {}
    codes = [(str(basic["code"]), str(basic["meaning"]))]
    methods = [f"PS3.15 {basic['edition']} Basic Profile"]

    for option in sorted(options, key=lambda o: o.value):
        data = _profile_file(f"{option.value}.yaml")
        source = f"option {option.value}"
        exact, rep, _ = _table_rules(data, source)
        for tag, rule in exact.items():
            public[tag] = _merge_option(public.get(tag), rule)
        for key, rule in rep.items():
            repeating[key] = _merge_option(repeating.get(key), rule)
        for row in data.get("safe_private", []):
            group, _, low = parse_tag(row["tag"])
            vr = str(row.get("vr") or "UN")
            action = Action.UID if vr == "UI" else Action.KEEP
            private_rules[(group, str(row["creator"]), low)] = Rule(action, source, vr=vr)
        codes.append((str(data["code"]), str(data["meaning"])))
        methods.append(str(data["meaning"]))

    local = _profile_file("local.yaml")
    for key, row in local.get("overrides", {}).items():
        group, element, _ = parse_tag(key)
        assert element is not None
        tag = (group << 16) | element
        current = public.get(tag)
        if current is not None and current.source != "basic":
            continue  # an option in force decides this attribute
        public[tag] = Rule(SITE_ACTIONS[row["action"]], "local", value=row.get("value"))
    unlisted = {
        vr: Rule(
            Action(row["action"]) if row["action"] != "date" else Action.DATE,
            "local: unlisted " + vr,
        )
        for vr, row in local.get("unlisted_by_vr", {}).items()
    }
    keep_unlisted = frozenset(keyword_dict[k] for k in local.get("keep_unlisted", []))
    identity = {
        keyword_dict[keyword]: kind.upper()
        for kind, keywords in local.get("identity", {}).items()
        for keyword in keywords
    }

    # Every dictionary attribute no layer lists: kept, or handled by its VR, or (retired)
    # handled as local.yaml says.
    retired_row = local.get("unlisted_retired")
    retired = (
        Rule(SITE_ACTIONS[retired_row["action"]], "local: unlisted retired")
        if retired_row
        else None
    )
    listed = set(public)
    for tag, vr in _dictionary_vrs().items():
        if tag in listed or tag >> 16 in (0x0000, 0x0002, 0x0004):
            continue
        if tag in keep_unlisted:
            public[tag] = Rule(Action.KEEP, "dictionary")
        elif retired is not None and DicomDictionary[tag][3] == "Retired":
            public[tag] = retired
        else:
            public[tag] = unlisted.get(vr) or Rule(Action.KEEP, "dictionary")

    clean_words: list[str] = []
    if site_file is not None:
        site_name, site_rules, clean_words = _load_site(site_file)
        _apply_site(site_rules, site_file, public, repeating, private_rules)
        methods.append(f"site rules {site_name or site_file.name}")

    if Option.RETAIN_LONG_FULL_DATES in options:
        date_mode = DateMode.UNMODIFIED
    elif Option.RETAIN_LONG_MODIFIED_DATES in options:
        date_mode = DateMode.MODIFIED
    else:
        date_mode = DateMode.REMOVED

    return Profile(
        edition=str(basic["edition"]),
        options=options,
        date_mode=date_mode,
        public=public,
        repeating=repeating,
        private=private_rules,
        unlisted_by_vr=unlisted,
        keep_unlisted=keep_unlisted,
        identity=identity,
        codes=tuple(codes),
        site_file=str(site_file) if site_file else None,
        clean_words=tuple(clean_words),
        methods=tuple(methods),
    )
