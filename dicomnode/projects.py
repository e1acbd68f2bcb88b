"""Projects: one node serving several research studies, each with its own rules.

The configuration lists ``projects:`` in order; the first whose ``match`` holds takes the
instance (``called_ae_title``, ``calling_ae_titles``, and a header condition ``when``; all
that are given must hold). Everything after receiving is chosen by project: filters, scrub
settings (options, site rules, lookup table, prefixes), pixel settings, destinations and the
pseudonym key. A configuration without ``projects:`` has one unnamed project, ``default``,
with today's settings and the site secret as its key: nothing changes.

**Decided once, at receive time.** The C-STORE handler decides, and the spool records the
project in the item's name (``...~<project>.dcm``, see ``dicomnode.spool``); workers,
forwarders, the audit trail and ``status`` read it from there, so a reload, a retry or a crash
cannot move an instance to another project half way. When a project of the association's AE
titles has a header condition, the handler reads the received file's header for it: at most
``HEADER_BYTES`` of it, up to the last attribute the conditions name (never pixel data), on the
association thread. That costs well under a millisecond for an ordinary header, and a sender
cannot make it cost more than parsing ``HEADER_BYTES``; deciding later, in a worker, would
have left the receive counters and the C-STORE answer without a project, and the decision in
two places. A header that the bound or its form keeps from being read counts as matching no
project.

**No project matches** (``unmatched``): ``refuse`` (the default) answers an association that
no project can take (its called and calling AE titles) with A-ASSOCIATE-RJ ("called AE title
not recognised", or "calling AE title not recognised" when the called one has projects), and
a C-STORE that only header-conditioned projects could have taken with 0x0124 (refused: not
authorised); ``quarantine`` accepts it and the worker quarantines it as ``no-project``.

**Pseudonyms per project.** A project's key is HMAC-SHA256 of the site secret and its name
(``dicomnode.scrub.pseudonym.project_key``): the same patient gets unrelated Patient IDs,
UIDs and date shifts in two projects. ``pseudonyms: {shared_with: other}`` links two on
purpose (the same key, so the same pseudonyms where the other settings agree); ``pseudonyms:
site`` uses the site secret itself, the pseudonyms of a node without projects (to move a
running study into a project without breaking its longitudinal links).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from dicomnode.conditions import CALLED_AE, CALLING_AE, PIXEL_STAGE, Header, Predicate, when_fields
from dicomnode.errors import ConfigError
from dicomnode.scrub.pseudonym import project_key
from dicomnode.spool import DEFAULT_PROJECT, NO_PROJECT, safe_ae

if TYPE_CHECKING:
    from dicomnode.config import Config, ProjectConfig

__all__ = [
    "DEFAULT_PROJECT",
    "HEADER_BYTES",
    "NO_PROJECT",
    "Route",
    "Router",
    "check_projects",
    "inherit_sections",
    "pseudonym_key",
]

# The most of a received file read to decide a project on a header condition. Headers before
# the pixel data are a few kilobytes; vendors' private blocks (Siemens CSA) reach a few
# hundred. Beyond this the instance matches no project (and the log says why).
HEADER_BYTES = 1024 * 1024

# Paths inside a project's sections, resolved relative to the configuration file as the
# top-level ones are (config._PATHS).
_SECTION_PATHS = {
    "scrub": (("site_rules",), ("lookup", "path"), ("crosswalk", "path")),
    "pixels": (
        ("policy",),
        ("detector", "det_model_dir"),
        ("detector", "rec_model_dir"),
        ("remover", "model_path"),
    ),
}


# -- configuration ------------------------------------------------------------------------------


def inherit_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Give each project the top-level ``scrub``/``pixels`` with its own settings in place of
    theirs (one level deep), and resolve the paths it gives relative to the file.

    Settings common to all studies are written once; a project says what differs.
    """
    projects = data.get("projects")
    if not isinstance(projects, list | tuple):
        return data
    source = data.get("source")
    base = Path(source).resolve().parent if source else None
    out = []
    for project in projects:
        if not isinstance(project, dict):
            out.append(project)
            continue
        project = dict(project)
        for section, paths in _SECTION_PATHS.items():
            own = project.get(section)
            if base is not None and isinstance(own, dict):
                own = _resolved(own, paths, base)
            top = data.get(section)
            if isinstance(top, BaseModel):
                top = top.model_dump(exclude_unset=True)
            if own is None:
                if top is not None:
                    project[section] = top
            elif isinstance(own, dict) and isinstance(top, dict):
                project[section] = {**top, **own}
            else:
                project[section] = own
        out.append(project)
    return {**data, "projects": out}


def _resolved(
    section: dict[str, Any], paths: tuple[tuple[str, ...], ...], base: Path
) -> dict[str, Any]:
    section = dict(section)
    for *parents, key in paths:
        holder: Any = section
        for parent in parents:
            inner = holder.get(parent) if isinstance(holder, dict) else None
            if not isinstance(inner, dict):
                holder = None
                break
            holder[parent] = inner = dict(inner)
            holder = inner
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            path = Path(holder[key]).expanduser()
            holder[key] = str(path if path.is_absolute() else base / path)
    return section


class _Problems:
    """Errors found across projects, each at its own setting (file and line in messages)."""

    def __init__(self) -> None:
        self.errors: list[InitErrorDetails] = []

    def add(self, loc: tuple[str | int, ...], message: str, given: Any = None) -> None:
        self.errors.append(
            InitErrorDetails(
                type=PydanticCustomError("project_config", "{message}", {"message": message}),
                loc=loc,
                input=given,
            )
        )

    def raise_any(self) -> None:
        if self.errors:
            raise ValidationError.from_exception_data("Config", self.errors)


def check_projects(config: Config) -> None:
    """What no single project can check alone: names, destinations, links, reachability,
    the allow-list, the filter sets and each project's rule files. Raises pydantic's
    ValidationError with one error per problem, at ``projects.<i>.<setting>``."""
    from dicomnode.filters import load_filter_sets

    problems = _Problems()
    projects = config.projects
    destinations = [d.name for d in config.destinations]
    index = {p.name: i for i, p in enumerate(projects)}
    seen: dict[str, int] = {}
    for i, project in enumerate(projects):
        where = ("projects", i)
        if project.name == NO_PROJECT:
            problems.add(
                (*where, "name"),
                f"{NO_PROJECT!r} is reserved (it labels instances no project matched): choose "
                "another name",
                project.name,
            )
        if project.name in seen:
            problems.add(
                (*where, "name"),
                f"projects[{seen[project.name]}] is also named {project.name!r}: names must be "
                "unique (they key the pseudonyms and label the metrics)",
                project.name,
            )
        seen.setdefault(project.name, i)
        for n, name in enumerate(project.destinations):
            if name not in destinations:
                problems.add(
                    (*where, "destinations", n),
                    f"{name!r} is not the name of a destination; add it to destinations: or use "
                    f"one of {', '.join(destinations)}",
                    name,
                )
            elif project.destinations.index(name) != n:
                problems.add(
                    (*where, "destinations", n), f"{name!r} is listed twice: list it once", name
                )
        match_fields = when_fields(project.match.when)
        if PIXEL_STAGE in match_fields:
            problems.add(
                (*where, "match", "when"),
                f"{PIXEL_STAGE} is known only once the project is: use it in filters",
            )
        callers = {c.ae_title for c in config.node.allowed_callers}
        for n, ae in enumerate(project.match.calling_ae_titles):
            if callers and ae not in callers:
                problems.add(
                    (*where, "match", "calling_ae_titles", n),
                    f"{ae!r} is not in node.allowed_callers, so its associations are refused "
                    "before any project: add it there, or remove it here",
                    ae,
                )
        _check_filters(problems, where, project, load_filter_sets)
        _check_files(problems, where, project, config)
        shared = project.pseudonyms
        if not isinstance(shared, str):
            other = shared.shared_with
            loc = (*where, "pseudonyms", "shared_with")
            if other not in index:
                problems.add(
                    loc, f"no project is named {other!r}; use one of {', '.join(index)}", other
                )
            elif other == project.name:
                problems.add(loc, "a project cannot share with itself: use own", other)
            elif _chain(config, project.name) is None:
                problems.add(loc, "the shared_with links go round in a circle: end one with own")
            elif projects[index[other]].scrub.date_shift_days != project.scrub.date_shift_days:
                problems.add(
                    (*where, "scrub", "date_shift_days"),
                    f"differs from that of {other!r}, whose pseudonyms this project shares: the "
                    "same patient would get different date shifts; give both the same range",
                )
        for j in range(i):
            if _shadows(projects[j], project):
                problems.add(
                    (*where, "match"),
                    f"project {project.name!r} can never be chosen: projects[{j}] "
                    f"({projects[j].name!r}) comes first and matches everything it matches; put "
                    "the narrower one first, or narrow the other",
                )
                break
    problems.raise_any()


def _check_filters(
    problems: _Problems,
    where: tuple[str | int, ...],
    project: ProjectConfig,
    load_sets: Callable[[], Mapping[str, Any]],
) -> None:
    names = [f for f in project.filters if isinstance(f, str)]
    if not names:
        return
    try:
        sets = load_sets()
    except ConfigError as exc:
        problems.add((*where, "filters"), f"the filter sets cannot be read: {exc}")
        return
    for n, entry in enumerate(project.filters):
        if isinstance(entry, str) and entry not in sets:
            problems.add(
                (*where, "filters", n),
                f"no filter set named {entry!r} in rules/filters.yaml; use one of "
                f"{', '.join(sorted(sets))}, or write the rule here ({{action, when, reason}})",
                entry,
            )


def _check_files(
    problems: _Problems, where: tuple[str | int, ...], project: ProjectConfig, config: Config
) -> None:
    """A project's own site rules and lookup table (the top-level ones are checked by
    load_config; the same file inherited is not checked twice)."""
    from dicomnode.scrub.lookup import load_lookup

    site = project.scrub.site_rules
    if site is not None and site != config.scrub.site_rules and not Path(site).is_file():
        problems.add(
            (*where, "scrub", "site_rules"),
            f"no such file {site}: give the path of the site rules file (relative to the "
            "configuration file), or remove it",
        )
    lookup = project.scrub.lookup
    if lookup is not None and lookup != config.scrub.lookup:
        try:
            load_lookup(lookup.path)
        except ConfigError as exc:
            problems.add((*where, "scrub", "lookup", "path"), str(exc))


def _chain(config: Config, name: str) -> ProjectConfig | None:
    """The project whose key ``name`` uses, following shared_with (None: a circle)."""
    projects = {p.name: p for p in config.projects}
    seen = set()
    project = projects[name]
    while not isinstance(project.pseudonyms, str):
        if project.name in seen or project.pseudonyms.shared_with not in projects:
            return None
        seen.add(project.name)
        project = projects[project.pseudonyms.shared_with]
    return project


def _shadows(first: ProjectConfig, later: ProjectConfig) -> bool:
    """Whether ``first`` takes every instance ``later`` could match (then ``later`` never
    gets one)."""
    a, b = first.match, later.match
    if a.when is not None and a.when != b.when:
        return False
    if a.called_ae_title is not None and a.called_ae_title != b.called_ae_title:
        return False
    # Any caller, or every caller the later one accepts.
    return not a.calling_ae_titles or (
        bool(b.calling_ae_titles) and set(b.calling_ae_titles) <= set(a.calling_ae_titles)
    )


def pseudonym_key(config: Config, project: str, secret: bytes) -> bytes:
    """The key of a project's pseudonyms (see the module docstring); the site secret for the
    default project of a configuration without projects."""
    if not config.projects:
        return secret
    owner = _chain(config, project)
    if owner is None:  # check_projects refuses such a configuration
        raise ConfigError(f"projects: the pseudonym key of {project!r} cannot be found")
    return secret if owner.pseudonyms == "site" else project_key(secret, owner.name)


# -- deciding the project of an instance ---------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """The project of one instance (``none``: no project matched) and how it was decided."""

    project: str
    why: str  # "association", "header", "no-match", "header-unreadable"


@dataclass(frozen=True)
class _Candidate:
    name: str
    called: str | None
    calling: frozenset[str]
    when: Predicate | None


class Router:
    """Decides the project of each instance, once, at receive time (see the module)."""

    def __init__(self, config: Config) -> None:
        self.node_ae = config.node.ae_title
        self.unmatched = config.unmatched
        self._candidates = [
            _Candidate(
                p.name,
                p.match.called_ae_title,
                frozenset(p.match.calling_ae_titles),
                Predicate(p.match.when) if p.match.when is not None else None,
            )
            for p in config.projects
        ]
        self.header_fields = frozenset(
            f for c in self._candidates if c.when is not None for f in c.when.fields
        ) - {CALLING_AE, CALLED_AE}
        self.called_ae_titles = frozenset(
            {self.node_ae, *(c.called for c in self._candidates if c.called is not None)}
        )

    def _for(self, called: str, calling: str) -> list[_Candidate]:
        return [
            c
            for c in self._candidates
            if (c.called is None or c.called == called) and (not c.calling or calling in c.calling)
        ]

    def admit(self, called: str, calling: str) -> int | None:
        """None when the association may go on; else the A-ASSOCIATE-RJ diagnostic (PS3.8
        9.3.4: 3 calling AE title not recognised, 7 called AE title not recognised)."""
        if self.unmatched == "quarantine" or self._for(called, calling):
            return None
        if any(c.called is None or c.called == called for c in self._candidates):
            return 0x03
        return 0x07

    def decide(
        self, called: str, calling: str, read_header: Callable[[frozenset[str]], Header | None]
    ) -> Route:
        """The first project that matches; ``read_header(fields)`` is called at most once,
        and only when a project with a header condition is reached."""
        header: dict[str, tuple[str, ...]] | None = None
        for candidate in self._for(called, calling):
            if candidate.when is None:
                return Route(candidate.name, "association")
            if header is None:
                values = read_header(self.header_fields)
                if values is None:
                    return Route(NO_PROJECT, "header-unreadable")
                header = {**values, CALLING_AE: (safe_ae(calling),), CALLED_AE: (called,)}
            if candidate.when(header):
                return Route(candidate.name, "header")
        return Route(NO_PROJECT, "no-match")
