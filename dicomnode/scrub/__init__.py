"""Header de-identification: PS3.15 Annex E as data (``rules/``), applied by one engine.

>>> scrubber = build_scrubber(load_config(), demo=True)
>>> report = scrubber.scrub(dataset)      # in place; raises InstanceError if it cannot
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomnode.scrub.actions import Action, DateMode, Option
from dicomnode.scrub.engine import Scrubber, ScrubReport
from dicomnode.scrub.lookup import LookupTable, load_lookup
from dicomnode.scrub.profile import Profile, load_profile
from dicomnode.scrub.pseudonym import Pseudonymizer, load_secret

if TYPE_CHECKING:
    from dicomnode.config import Config, ScrubConfig

__all__ = [
    "Action",
    "DateMode",
    "LookupTable",
    "Option",
    "Profile",
    "Pseudonymizer",
    "ScrubReport",
    "Scrubber",
    "build_scrubber",
    "load_lookup",
    "load_profile",
    "load_secret",
    "scrubber_for",
]


def build_scrubber(config: Config, *, demo: bool = False, secret: bytes | None = None) -> Scrubber:
    """The scrubber a configuration describes, with the site secret (or the demo one)."""
    key = secret if secret is not None else load_secret(demo=demo)
    return scrubber_for(config.scrub, key)


def scrubber_for(settings: ScrubConfig, key: bytes) -> Scrubber:
    """The scrubber of one set of scrub settings, with its pseudonym key (the site secret, or
    a project's key: ``dicomnode.projects.pseudonym_key``)."""
    profile = load_profile(settings.options, settings.site_rules)
    lookup = load_lookup(settings.lookup.path) if settings.lookup is not None else None
    crosswalk = None
    if settings.crosswalk is not None:
        from dicomnode.crosswalk import CrosswalkWriter

        crosswalk = CrosswalkWriter(settings.crosswalk.path, settings.crosswalk.public_key)
    return Scrubber(
        profile,
        Pseudonymizer(key, date_shift_days=settings.date_shift_days),
        patient_id_prefix=settings.patient_id_prefix,
        patient_name=settings.patient_name,
        lookup=lookup,
        unmapped=settings.lookup.unmapped if settings.lookup is not None else "quarantine",
        crosswalk=crosswalk,
        max_depth=settings.max_depth,
    )
