"""Filters: which instances of a project go on to be cleaned (RSNA CTP's DicomFilter).

A project lists rules, in order; the first whose ``when`` holds decides, on the header as
received (before anything is scrubbed)::

    filters:
      - drop-presentation-states            # a named set from rules/filters.yaml
      - {action: quarantine, reason: localizer,
         when: {field: ImageType, op: equals, value: LOCALIZER}}

- ``accept``: cleaned and forwarded as usual (stops the list: later rules are not asked);
- ``drop``: not wanted by the study. It was acknowledged already (the decision is made by a
  worker, after the C-STORE success); it is counted (``dicomnode_instances_dropped_total``
  by project and reason), audited (``dropped``), never forwarded, and its original deleted;
- ``quarantine``: set aside with the rule's ``reason`` as the quarantine folder.

No rule holds: accepted. Named sets are opt-in: nothing is filtered unless a project asks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydicom.dataset import Dataset

from dicomnode.conditions import (
    CALLED_AE,
    CALLING_AE,
    PIXEL_STAGE,
    Header,
    Predicate,
    When,
    header_values,
    when_fields,
)

__all__ = [
    "FilterAction",
    "FilterEntry",
    "FilterRule",
    "FilterSet",
    "Filters",
    "Verdict",
    "load_filter_sets",
]

SLUG = r"^[a-z0-9][a-z0-9-]{0,47}$"


class FilterAction(StrEnum):
    ACCEPT = "accept"
    DROP = "drop"
    QUARANTINE = "quarantine"


class FilterRule(BaseModel):
    """One rule: what to do with an instance when a condition holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: FilterAction
    when: When
    reason: str | None = Field(
        default=None,
        pattern=SLUG,
        description="why, as a slug: the metric label of a drop, the quarantine folder",
    )

    @model_validator(mode="after")
    def _check(self) -> FilterRule:
        if self.action is not FilterAction.ACCEPT and self.reason is None:
            raise ValueError(
                f"a {self.action.value} rule needs a reason (a slug such as 'presentation-state'"
                "): it names the metric label and the quarantine folder"
            )
        if CALLED_AE in when_fields(self.when):
            raise ValueError(
                f"filters cannot look at {CALLED_AE} (the worker does not know it): match on it "
                "in the project's match instead"
            )
        return self


FilterEntry = Annotated[
    Annotated[str, Tag("set")] | Annotated[FilterRule, Tag("rule")],
    Discriminator(lambda v: "set" if isinstance(v, str) else "rule"),
]
"""A project's filters entry: the name of a set of rules/filters.yaml, or a rule."""


class FilterSet(BaseModel):
    """A named list of rules in ``rules/filters.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    why: str
    rules: tuple[FilterRule, ...] = Field(min_length=1)


class _FilterFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sets: dict[str, FilterSet]

    @model_validator(mode="after")
    def _names(self) -> _FilterFile:
        import re

        for name in self.sets:
            if not re.fullmatch(SLUG, name):
                raise ValueError(f"set name {name!r}: use a slug (a-z, 0-9, '-')")
        return self


def _default_path() -> Path:
    from dicomnode.scrub.profile import rules_dir

    return rules_dir() / "filters.yaml"


@cache
def load_filter_sets(path: Path | None = None) -> dict[str, FilterSet]:
    """The named filter sets shipped in ``rules/filters.yaml``, validated (cached)."""
    from dicomnode.validate import parse_model, read_yaml

    path = path or _default_path()
    doc = read_yaml(path, what="the filter sets file")
    parsed = parse_model(
        _FilterFile,
        doc.data if doc.data is not None else {},
        doc,
        hint="the file has 'sets:', each a name with 'why:' and 'rules:'",
    )
    return dict(parsed.sets)


@dataclass(frozen=True)
class Verdict:
    """A rule that said drop or quarantine; ``rule`` names it for the audit trail."""

    action: FilterAction
    reason: str
    rule: str


class Filters:
    """A project's rules, expanded and compiled once per worker.

    ``pixel_stage(ds)`` says what the project's pixel stage will do with an instance
    (``check``, ``skip`` or ``off``), for rules that look at ``pixel_stage``.
    """

    def __init__(
        self,
        entries: Sequence[str | FilterRule],
        pixel_stage: Callable[[Dataset], str] = lambda ds: "off",
    ) -> None:
        sets = load_filter_sets() if any(isinstance(e, str) for e in entries) else {}
        self.rules: list[tuple[str, FilterRule, Predicate]] = []
        for index, entry in enumerate(entries):
            if isinstance(entry, str):
                for n, rule in enumerate(sets[entry].rules):
                    self.rules.append((f"{entry}[{n}]", rule, Predicate(rule.when)))
            else:
                self.rules.append((f"filters[{index}]", entry, Predicate(entry.when)))
        self.fields = frozenset(f for _, _, p in self.rules for f in p.fields)
        self.pixel_stage = pixel_stage

    def __call__(self, ds: Dataset, calling_ae: str) -> Verdict | None:
        """The verdict of the first rule that holds; None: accepted."""
        if not self.rules:
            return None
        header: dict[str, tuple[str, ...]] = header_values(ds, self.fields)
        header[CALLING_AE] = (calling_ae,)
        if PIXEL_STAGE in self.fields:
            header[PIXEL_STAGE] = (self.pixel_stage(ds),)
        return self.verdict(header)

    def verdict(self, header: Header) -> Verdict | None:
        for label, rule, holds in self.rules:
            if holds(header):
                if rule.action is FilterAction.ACCEPT:
                    return None
                assert rule.reason is not None
                return Verdict(rule.action, rule.reason, label)
        return None
