"""One validated configuration file, loaded once into frozen, typed objects.

Every setting has a default that runs; a file only says what differs. Errors name the file,
the setting and the fix. The pseudonym secret is never here (see ``scrub.pseudonym``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicomnode.errors import ConfigError
from dicomnode.scrub.actions import Option

__all__ = ["CONFIG_ENV", "Config", "ScrubConfig", "load_config"]

CONFIG_ENV = "DICOMNODE_CONFIG"

DEFAULT_OPTIONS = (
    # What research and AI work need, within the standard's options: shifted-but-consistent
    # dates, age/sex/size/weight, cleaned (not removed) descriptions, and the private
    # attributes PS3.15 lists as safe (b-values, SUV factors...).
    Option.RETAIN_LONG_MODIFIED_DATES,
    Option.RETAIN_PATIENT_CHARACTERISTICS,
    Option.CLEAN_DESCRIPTORS,
    Option.RETAIN_SAFE_PRIVATE,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScrubConfig(_Frozen):
    """How headers are de-identified."""

    options: tuple[Option, ...] = DEFAULT_OPTIONS
    site_rules: Path | None = Field(
        default=None, description="a site rules file layered on the profile (YAML)"
    )
    patient_id_prefix: str = Field(default="DN", description="prefix of Patient ID pseudonyms")
    patient_name: str = Field(
        default="{patient_id}",
        description="the Patient's Name written; {patient_id} is the pseudonym",
    )
    date_shift_days: tuple[int, int] = Field(
        default=(-3650, -1),
        description="range of the per-patient date shift, in days (modified-dates option)",
    )

    @field_validator("patient_id_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{0,32}", v):
            raise ValueError("use up to 32 letters, digits, '.', '_' or '-'")
        return v

    @field_validator("patient_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v.replace("{patient_id}", "x" * 49)) > 64:
            raise ValueError("the name would exceed 64 characters (the PN limit)")
        if "\\" in v:
            raise ValueError("a backslash would split the name into several values")
        return v

    @field_validator("date_shift_days")
    @classmethod
    def _shift(cls, v: tuple[int, int]) -> tuple[int, int]:
        low, high = v
        if low > high:
            raise ValueError("write the range as [smallest, largest], e.g. [-3650, -1]")
        if low <= 0 <= high:
            raise ValueError(
                "the range must not include 0 (an unshifted date is a real date); "
                "use e.g. [-3650, -1]"
            )
        return v

    @model_validator(mode="after")
    def _dates(self) -> ScrubConfig:
        both = {Option.RETAIN_LONG_FULL_DATES, Option.RETAIN_LONG_MODIFIED_DATES}
        if both <= set(self.options):
            raise ValueError(
                "options retain-long-full-dates and retain-long-modified-dates exclude "
                "each other: keep one"
            )
        return self


class Config(_Frozen):
    """The whole configuration of a node (and of the offline `scrub` command)."""

    scrub: ScrubConfig = ScrubConfig()
    source: Path | None = Field(default=None, exclude=True)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    scrub = data.get("scrub")
    if isinstance(scrub, dict) and isinstance(scrub.get("site_rules"), str):
        path = Path(scrub["site_rules"]).expanduser()
        scrub["site_rules"] = str(path if path.is_absolute() else base / path)


def load_config(path: Path | str | None = None) -> Config:
    """Load ``path`` (or ``$DICOMNODE_CONFIG``, or nothing: the embedded defaults)."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of sections")
    _resolve_paths(data, path.resolve().parent)
    try:
        config = Config.model_validate({**data, "source": path})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "top level"
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown setting (check the spelling against the README)"
            problems.append(f"{where}: {message}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    site = config.scrub.site_rules
    if site is not None and not site.is_file():
        raise ConfigError(f"{path}: scrub.site_rules: no such file {site}")
    return config
