"""The one validation path: one loader for every YAML file, one list of checks for start-up.

``dicomnode check-config`` prints what :func:`validate_all` finds; ``dicomnode serve`` runs
the same function before it starts (:func:`require_valid`) and refuses to start on an error.
Every problem names the file, the line where YAML gives one, the setting and the fix, in one
format (:class:`Problem`); pydantic's own wording ("Input should be...", "Field required")
never reaches the user: :func:`model_problems` writes the messages.

::

    read_yaml(path)            -> YamlDoc (data, and the line of any setting on demand)
    model_problems(Model, doc) -> [Problem]  (pydantic's errors, in our words, with lines)
    validate_all(config)       -> [Problem]  (errors and warnings; empty: all good)
"""

from __future__ import annotations

import difflib
import grp
import logging
import os
import ssl
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dicomnode.errors import ConfigError, SecretError

if TYPE_CHECKING:
    from dicomnode.config import Config

__all__ = [
    "ConfigProblems",
    "Problem",
    "Severity",
    "YamlDoc",
    "model_problems",
    "read_yaml",
    "require_valid",
    "validate_all",
]

log = logging.getLogger(__name__)

_FastLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present

Loc = Sequence[str | int]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or doubtful) in a configuration or rule file.

    Printed as ``FILE, line N: SETTING: MESSAGE; FIX``, leaving out what is not known.
    """

    severity: Severity
    message: str
    file: Path | str | None = None
    line: int | None = None
    setting: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file) + (f", line {self.line}" if self.line else "")
        head = ": ".join(part for part in (where, self.setting) if part)
        text = f"{head}: {self.message}" if head else self.message
        return f"{text}; {self.fix}" if self.fix else text


def error(message: str, **where: Any) -> Problem:
    return Problem(Severity.ERROR, message, **where)


def warning(message: str, **where: Any) -> Problem:
    return Problem(Severity.WARNING, message, **where)


class ConfigProblems(ConfigError):
    """A configuration or rule file with errors; ``problems`` lists each one."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# -- the loader -------------------------------------------------------------------------------


@dataclass
class YamlDoc:
    """A YAML file as data, able to say on which line any setting of it is written."""

    path: Path
    text: str
    data: Any
    _root: yaml.Node | None = field(default=None, repr=False)

    def _tree(self) -> yaml.Node | None:
        if self._root is None:
            try:
                self._root = yaml.compose(self.text, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                return None
        return self._root

    def find(self, loc: Loc) -> tuple[int | None, list[str | int]]:
        """The line of the deepest part of ``loc`` the file has, and the parts of ``loc``
        that are in the file (plus a last one that is not: a missing setting).

        Parts the file does not have on the way (pydantic adds the type of a tagged union,
        ``destinations.0.dicom.port``) are passed over.
        """
        node = self._tree()
        line = None
        shown: list[str | int] = []
        for index, part in enumerate(loc):
            found = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        found, line = value, key.start_mark.line + 1
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                found = node.value[part]
                line = found.start_mark.line + 1
            if found is not None:
                node = found
                shown.append(part)
            elif index == len(loc) - 1:
                shown.append(part)
        return line, shown

    def line(self, loc: Loc) -> int | None:
        return self.find(loc)[0]


def setting_name(parts: Iterable[str | int]) -> str:
    """``("destinations", 0, "port")`` -> ``destinations[0].port``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _duplicates(node: yaml.Node | None, path: Path, what: str) -> list[Problem]:
    """A key given twice in one mapping: YAML keeps the last silently, we refuse it."""
    problems: list[Problem] = []
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        problems.append(
                            error(
                                f"{key.value!r} is given twice in {what} (first on line "
                                f"{seen[key.value]}); only one would be used",
                                file=path,
                                line=line,
                                fix="keep one of them",
                            )
                        )
                    seen.setdefault(key.value, line)
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return problems


def read_yaml(path: Path, *, what: str, strict: bool = True) -> YamlDoc:
    """Read and parse a YAML file; every dicomnode YAML file goes through here.

    ``what`` names the file for messages ("the configuration", "the site rules file").
    ``strict`` (the files people edit) also refuses a key given twice in one mapping;
    shipped tables skip that and use libyaml. Raises :class:`ConfigProblems`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigProblems(
            [
                error(
                    f"cannot read {what} ({exc.strerror})",
                    file=path,
                    fix="check the path, and that this user may read the file",
                )
            ]
        ) from None
    except UnicodeDecodeError:
        raise ConfigProblems(
            [error(f"{what} is not UTF-8 text", file=path, fix="save it as UTF-8")]
        ) from None
    try:
        if strict:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            duplicates = _duplicates(root, path, what)
            if duplicates:
                raise ConfigProblems(duplicates)
            data = yaml.load(text, Loader=_FastLoader)
            return YamlDoc(path, text, data, root)
        return YamlDoc(path, text, yaml.load(text, Loader=_FastLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigProblems(
            [
                error(
                    f"not valid YAML: {problem}",
                    file=path,
                    line=mark.line + 1 if mark is not None else None,
                    fix="check the indentation, the colons and the quotes on that line and "
                    "the one before",
                )
            ]
        ) from None


# -- pydantic's errors in our words -------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold (through Optional, unions, tuples, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _models_at(model: type[BaseModel] | None, loc: Loc) -> list[type[BaseModel]]:
    """The models that can sit at ``loc`` under ``model`` (best effort; [] if unknown)."""
    if model is None:
        return []
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        inner = [
            m
            for c in candidates
            if part in c.model_fields
            for m in _models_in(c.model_fields[part].annotation)
        ]
        if inner:
            candidates = inner
            continue
        tagged = [
            c
            for c in candidates
            if "type" in c.model_fields and c.model_fields["type"].default == part
        ]
        if not tagged:
            return []
        candidates = tagged
    return candidates


def _fields_at(model: type[BaseModel] | None, loc: Loc) -> list[str]:
    """The settings a model allows at ``loc`` (for "did you mean")."""
    models = _models_at(model, loc)
    return sorted({name for m in models for name in m.model_fields if name != "source"})


def _description(model: type[BaseModel] | None, loc: Loc) -> str | None:
    if not loc or not isinstance(loc[-1], str):
        return None
    for m in _models_at(model, loc[:-1]):
        info = m.model_fields.get(loc[-1])
        if info is not None and info.description:
            return info.description
    return None


def _plain(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _words(err: Any, model: type[BaseModel] | None, loc: Loc) -> tuple[str, str | None]:
    """(message, fix) for one pydantic error."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    given = err.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
        fix = f"did you mean {near[0]!r}?" if near else "check the spelling"
        if allowed:
            fix += " (the settings here: " + ", ".join(allowed) + ")"
        return "unknown setting", fix
    if kind == "missing":
        about = _description(model, loc)
        return "required, and not given", "add it" + (f" ({about})" if about else "")
    if kind in ("literal_error", "enum"):
        return f"{_plain(given)} is not a choice here", f"use {ctx.get('expected', '?')}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{_plain(given)} is not true or false", "write true or false"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{_plain(given)} is not a whole number", "write a whole number, e.g. 30"
    if kind in ("float_parsing", "float_type"):
        return f"{_plain(given)} is not a number", "write a number, e.g. 2.5"
    limits = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in limits:
        words, key = limits[kind]
        return f"{_plain(given)} is out of range", f"use a value {words} {ctx.get(key)}"
    if kind in ("string_type", "str_type"):
        return "must be text", "write it as text (in quotes if it looks like a number)"
    if kind == "string_pattern_mismatch":
        return f"{_plain(given)} does not have the required form", (
            f"it must match the pattern {ctx.get('pattern')}"
        )
    if kind in ("string_too_short", "too_short"):
        return "too short", f"give at least {ctx.get('min_length')}"
    if kind in ("string_too_long", "too_long"):
        return "too long", f"give at most {ctx.get('max_length')}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return "must be a section of settings (name: value lines)", None
    if kind in ("list_type", "tuple_type", "set_type", "frozen_set_type", "iterable_type"):
        return "must be a list", "write it as [a, b] or as lines starting with '- '"
    if kind in ("path_type", "path_parsing"):
        return "must be a file or folder path", None
    if kind == "union_tag_invalid":
        return (
            f"type {ctx.get('tag')!r} is not known",
            f"use one of {ctx.get('expected_tags')}",
        )
    if kind == "union_tag_not_found":
        return f"needs a {ctx.get('discriminator', 'type')}", None
    message = str(err.get("msg", "is not valid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = message.replace("Input should be", "must be").replace("Field required", "required")
    return message, None


def model_problems(
    model: type[BaseModel],
    exc: ValidationError,
    doc: YamlDoc | None,
    *,
    prefix: Loc = (),
    setting: Callable[[list[str | int]], str] | None = None,
    hint: str | None = None,
) -> list[Problem]:
    """Each of pydantic's errors as a :class:`Problem` with the file, line and setting.

    ``prefix`` is where the validated data sits in ``doc``; ``setting`` turns the parts
    found into the name shown (default: ``scrub.lookup.path``, ``destinations[0].port``);
    ``hint`` is added to every fix (what the file should look like).
    """
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if doc is not None:
            line, shown = doc.find((*prefix, *loc))
            shown = shown[len(prefix) :]
        else:
            line, shown = None, list(loc)
        message, fix = _words(err, model, loc)
        if hint:
            fix = f"{fix}; {hint}" if fix else hint
        name = setting(shown) if setting is not None else (setting_name(shown) or "top level")
        problems.append(
            error(
                message,
                file=doc.path if doc is not None else None,
                line=line,
                setting=name,
                fix=fix,
            )
        )
    return sorted(problems, key=lambda p: p.line or 0)


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, doc: YamlDoc | None, **options: Any) -> M:
    """``model.model_validate(data)``, or :class:`ConfigProblems` in our words."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigProblems(model_problems(model, exc, doc, **options)) from None


def problems_of(exc: ConfigError, **where: Any) -> list[Problem]:
    """The problems a ConfigError carries (one, in words, when it is not ConfigProblems)."""
    if isinstance(exc, ConfigProblems):
        return list(exc.problems)
    return [error(str(exc), **where)]


# -- the checks start-up runs -------------------------------------------------------------------

#: Site rules that keep these values let a patient be recognised (PS3.15 Annex E's direct
#: identifiers; dicomnode's ``identity`` kinds in rules/profile/local.yaml).
_DIRECT_KINDS = frozenset({"NAME", "ID", "PHONE", "DATE"})
_DIRECT_EXTRA = frozenset({"PatientAddress", "PatientTelecomInformation", "PatientComments"})


def _config_doc(config: Config) -> YamlDoc | None:
    if config.source is None:
        return None
    try:
        return read_yaml(Path(config.source), what="the configuration")
    except ConfigProblems:
        return None


class _Checks:
    """Collects problems; ``where(loc)`` gives the file and line of a configuration setting."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.doc = _config_doc(config)
        self.problems: list[Problem] = []

    def where(self, *loc: str | int) -> dict[str, Any]:
        line = self.doc.line(loc) if self.doc is not None else None
        return {"file": self.config.source, "line": line, "setting": setting_name(loc) or None}

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def run(self, check: Callable[[], Any], *loc: str | int) -> Any:
        """``check()``; a ConfigError becomes problems (naming ``loc`` when it names nothing)."""
        try:
            return check()
        except ConfigError as exc:
            self.problems += problems_of(exc, **self.where(*loc))
        except SecretError as exc:
            self.add(error(str(exc), setting="secret"))
        return None

    @property
    def failed(self) -> bool:
        return any(p.severity is Severity.ERROR for p in self.problems)


def _check_secret(checks: _Checks, demo: bool, secret: bytes | None) -> bytes | None:
    from dicomnode.scrub.pseudonym import (
        DEMO_SECRET,
        MIN_SECRET_BYTES,
        SECRET_ENV,
        SECRET_FILE_ENV,
        load_secret,
    )

    named = os.environ.get(SECRET_FILE_ENV)
    if secret is None:
        if not named and not os.environ.get(SECRET_ENV) and demo:
            secret = DEMO_SECRET
        else:
            try:
                secret = load_secret(demo=False)
            except SecretError as exc:
                checks.add(error(str(exc), setting="secret"))
                return None
    if secret == DEMO_SECRET:
        checks.add(
            warning(
                "the PUBLIC demo secret is in use: anyone can recompute these pseudonyms",
                setting="secret",
                fix=f"never send patient data; to run for real set {SECRET_FILE_ENV}",
            )
        )
    elif len(secret) < MIN_SECRET_BYTES:
        checks.add(
            error(
                f"the secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed",
                setting="secret",
                fix="make one with 'openssl rand -hex 32'",
            )
        )
    if named:
        checks.problems += _secret_file_mode(Path(named))
    return secret


def _secret_file_mode(path: Path) -> list[Problem]:
    """Warn when others, or a group the node does not need, may read the secret file.

    Group read is expected in one case: the file belongs to another user (root) and is
    readable by the node through its group (``install -m 0640 -g dicomnode``).
    """
    try:
        info = path.stat()
    except OSError:
        return []  # load_secret has said why it cannot be read
    mode = info.st_mode & 0o777
    fix = "chmod 600 it (or 640, owned by root, group of the node's user only)"
    if mode & 0o007:
        return [
            warning(
                f"the secret file is readable by every local user (mode {mode:04o})",
                file=path,
                fix=fix,
            )
        ]
    if mode & 0o070 and info.st_uid == os.geteuid():
        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = str(info.st_gid)
        return [
            warning(
                f"the secret file is readable by group {group!r} (mode {mode:04o}); its members "
                "can recompute and link every pseudonym",
                file=path,
                fix=fix,
            )
        ]
    return []


def _sections(config: Config) -> list[tuple[tuple[str | int, ...], Any, Any]]:
    """(where, scrub settings, pixel settings): the top level's, and each project's."""
    found: list[tuple[tuple[str | int, ...], Any, Any]] = [((), config.scrub, config.pixels)]
    for index, project in enumerate(getattr(config, "projects", ()) or ()):
        found.append((("projects", index), project.scrub, project.pixels))
    return found


def _check_site_rules(checks: _Checks) -> None:
    """Compile each profile with its site rules; warn about rules keeping a direct identifier."""
    from dicomnode.scrub.profile import load_profile

    seen: set[Path] = set()
    for where, scrub, _pixels in _sections(checks.config):
        site = scrub.site_rules
        profile = checks.run(
            partial(load_profile, scrub.options, scrub.site_rules),
            *where,
            "scrub",
            "site_rules",
        )
        if profile is not None and site is not None and Path(site) not in seen:
            seen.add(Path(site))
            _kept_identifiers(checks, profile, Path(site))


def _kept_identifiers(checks: _Checks, profile: Any, site: Path) -> None:
    from pydicom.datadict import keyword_dict

    from dicomnode.scrub.profile import parse_tag

    direct = {tag for tag, kind in profile.identity.items() if kind in _DIRECT_KINDS}
    direct |= {keyword_dict[k] for k in _DIRECT_EXTRA}
    names = {tag: keyword for keyword, tag in keyword_dict.items()}
    doc = read_yaml(site, what="the site rules file")
    rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
    for index, rule in enumerate(rules or []):
        if not isinstance(rule, dict) or rule.get("action") != "keep":
            continue
        tag: int | None = keyword_dict.get(str(rule.get("keyword")))
        if tag is None and rule.get("tag"):
            group, element, _ = parse_tag(str(rule["tag"]))
            tag = None if element is None else (group << 16) | element
        if tag is not None and tag in direct:
            checks.add(
                warning(
                    f"keeps {names.get(tag, str(rule.get('tag')))}, a direct identifier: every "
                    "output will carry the patient's real value",
                    file=doc.path,
                    line=doc.line(("rules", index)),
                    setting=f"rule {index + 1} ({_rule_name(rule)})",
                    fix="use hash (a keyed pseudonym) or the lookup table instead, unless the "
                    "data protection officer agreed to keep it",
                )
            )


def _rule_name(rule: dict[str, Any]) -> str:
    return f"keyword: {rule['keyword']}" if "keyword" in rule else f"tag: {rule.get('tag')}"


def _check_pixels(checks: _Checks) -> None:
    from dicomnode.pixels.policy import load_policy, load_regions

    seen: set[Path | None] = set()
    for where, _scrub, pixels in _sections(checks.config):
        if pixels.enabled and pixels.policy not in seen:
            seen.add(pixels.policy)
            checks.run(partial(load_policy, pixels.policy), *where, "pixels", "policy")
        if pixels.enabled and pixels.site_regions not in seen and pixels.site_regions.exists():
            seen.add(pixels.site_regions)
            checks.run(partial(load_regions, pixels.site_regions), *where, "pixels", "site_regions")


def _writable_folder(path: Path) -> str | None:
    """None when ``path`` (a folder) exists and is writable or can be made; else why not."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _check_files(checks: _Checks) -> None:
    """What start-up creates or opens: the spool, the audit trail, the crosswalk, TLS."""
    config = checks.config
    why = _writable_folder(Path(config.spool.path))
    if why:
        checks.add(
            error(
                f"the spool cannot be created or written: {why}",
                **checks.where("spool", "path"),
                fix="create it for the node's user, or choose another spool.path",
            )
        )
    if config.logging.audit_file is not None:
        why = _writable_folder(Path(config.logging.audit_file).parent)
        if why:
            checks.add(
                error(
                    f"the audit trail cannot be written: {why}",
                    **checks.where("logging", "audit_file"),
                    fix="create its folder for the node's user, or choose another audit_file",
                )
            )
    crosswalk = config.scrub.crosswalk
    if crosswalk is not None:
        why = _writable_folder(Path(crosswalk.path).parent)
        if why:
            checks.add(
                error(
                    f"the crosswalk cannot be written: {why}",
                    **checks.where("scrub", "crosswalk", "path"),
                    fix="create its folder for the node's user",
                )
            )
    tls = config.node.tls
    if tls is not None:
        try:  # as ingest does at start-up
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls.certificate), str(tls.private_key))
            if tls.ca_certificates:
                context.load_verify_locations(str(tls.ca_certificates))
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "?"
            checks.add(
                error(
                    f"the TLS files cannot be used ({reason})",
                    **checks.where("node", "tls"),
                    fix="give a PEM certificate and the private key that belongs to it "
                    "(unencrypted), and PEM CA certificates",
                )
            )
    for index, destination in enumerate(config.destinations):
        path = getattr(destination, "path", None)
        if getattr(destination, "type", None) == "folder" and isinstance(path, Path):
            why = _writable_folder(path)
            if why:
                checks.add(
                    warning(
                        f"destination {destination.name!r} cannot be written: {why}; "
                        "the node will retry until it can",
                        **checks.where("destinations", index, "path"),
                        fix="create the folder for the node's user",
                    )
                )


def _check_stages(checks: _Checks, secret: bytes) -> None:
    """What the node builds before it starts (``node.validate``: every project's filters and
    stages, as each worker builds them): the detector and remover load here."""
    from dicomnode.node import validate

    try:
        checks.run(lambda: validate(checks.config, secret), "pixels")
    except Exception as exc:  # a broken model or library: the node could not start either
        checks.add(
            error(
                f"the stages cannot be built ({type(exc).__name__})",
                file=checks.config.source,
                setting="pixels",
                fix="run 'dicomnode -vv check-config' and see the log for the library at fault",
            )
        )
        log.debug("building the stages failed", exc_info=True)


def validate_all(
    config: Config, *, demo: bool = False, secret: bytes | None = None
) -> list[Problem]:
    """Every check ``serve`` runs before it starts, errors and warnings, in file order.

    ``secret`` None: read it as ``serve`` would (``--demo`` allows the public one). The
    profile, site rules, pixel policy, lookup table and crosswalk key are read and compiled;
    the detector and remover are built (as every worker builds them) once all else is right.
    """
    checks = _Checks(config)
    secret = _check_secret(checks, demo, secret)
    _check_site_rules(checks)
    _check_pixels(checks)
    from dicomnode.scrub.lookup import load_lookup

    for where, scrub, _pixels in _sections(config):
        if scrub.lookup is not None:
            checks.run(partial(load_lookup, scrub.lookup.path), *where, "scrub", "lookup", "path")
    _check_files(checks)
    if secret is not None and not checks.failed:
        _check_stages(checks, secret)
    return checks.problems


def require_valid(config: Config, *, demo: bool = False, secret: bytes | None = None) -> None:
    """:func:`validate_all` for start-up and reload: warnings are logged, errors raised."""
    problems = validate_all(config, demo=demo, secret=secret)
    for problem in problems:
        if problem.severity is Severity.WARNING:
            log.warning("configuration: %s", problem)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if errors:
        raise ConfigProblems(errors)
