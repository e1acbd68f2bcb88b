"""One validated configuration file, loaded once into frozen, typed objects.

Every setting has a default that runs; a file only says what differs. Errors name the file,
the setting and the fix. The pseudonym secret is never here (see ``scrub.pseudonym``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from dicomnode.conditions import When
from dicomnode.durable import Access
from dicomnode.errors import ConfigError
from dicomnode.filters import FilterEntry
from dicomnode.scrub.actions import Option
from dicomnode.scrub.lookup import load_lookup

__all__ = [
    "CONFIG_ENV",
    "Config",
    "CrosswalkConfig",
    "DicomDestination",
    "FolderDestination",
    "LookupConfig",
    "NodeConfig",
    "ProjectConfig",
    "QuarantineConfig",
    "ReviewConfig",
    "ScrubConfig",
    "load_config",
]

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


class LookupConfig(_Frozen):
    """The study's own subject IDs and research accessions (a CSV from the honest broker)."""

    path: Path = Field(description="the lookup table (CSV); see dicomnode.scrub.lookup")
    unmapped: Literal["quarantine", "pseudonym"] = Field(
        default="quarantine",
        description="a patient not in the table: quarantine (unmapped-patient), or the keyed "
        "pseudonym",
    )


class CrosswalkConfig(_Frozen):
    """An encrypted original -> pseudonym record that only the honest broker can read."""

    path: Path = Field(description="the crosswalk file the node appends to")
    public_key: str = Field(
        description="the broker's age public key (age1...); the private key stays with them"
    )

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, v: str) -> str:
        from dicomnode.crosswalk import check_public_key

        return check_public_key(v)


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
    lookup: LookupConfig | None = Field(
        default=None, description="map patients to the study's own subject IDs"
    )
    crosswalk: CrosswalkConfig | None = Field(
        default=None, description="record originals -> pseudonyms, encrypted, for re-identification"
    )
    max_depth: int = Field(
        default=64,
        ge=4,
        le=1000,
        description="sequences nested deeper than this are refused (quarantine: too-deep)",
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


_AE = r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$"


def _ae_title(value: str) -> str:
    if not re.fullmatch(_AE, value):
        raise ValueError(
            f"{value!r} is not an AE title: 1 to 16 printable ASCII characters, no backslash, "
            "no leading or trailing space"
        )
    return value


AETitle = Annotated[str, AfterValidator(_ae_title)]


class AllowedCaller(_Frozen):
    """A calling AE title the node accepts, optionally only from some addresses."""

    ae_title: AETitle
    addresses: tuple[str, ...] = ()

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for address in v:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address or network") from None
        return v


class TLSConfig(_Frozen):
    """TLS for incoming associations (DICOM over TLS, PS3.15 B.1)."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = Field(
        default=None, description="verify client certificates against these CAs"
    )
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _files(self) -> TLSConfig:
        for name in ("certificate", "private_key", "ca_certificates"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates")
        return self


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, and a cgroup v2 CPU quota (a container's
    CPU limit) when it has one; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class NodeConfig(_Frozen):
    """The DICOM listener."""

    ae_title: AETitle = "DICOMNODE"
    bind: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535, description="0: any free port (tests)")
    allowed_callers: tuple[AllowedCaller, ...] = Field(
        default=(), description="calling AE titles accepted; empty: any"
    )
    max_associations: int = Field(default=16, ge=1, le=1000)
    disk_floor_mb: int = Field(
        default=1024, ge=0, description="refuse C-STORE (0xA700) below this much free disk"
    )
    max_pdu: int = Field(
        default=262144,
        description="P-DATA PDU length we offer; longer PDUs abort the association",
    )
    network_timeout_s: float = Field(default=60, gt=0)
    stop_timeout_s: float = Field(
        default=60, gt=0, description="on SIGTERM, how long work in hand may take to finish"
    )
    tls: TLSConfig | None = None
    request_timeout_s: float = Field(
        default=5, gt=0, le=60, description="time from connect (and TLS) to a complete request"
    )
    max_connections_per_address: int = Field(
        default=8, ge=1, le=1000, description="open connections per source address"
    )
    max_instance_mb: int = Field(
        default=2048, ge=1, description="refuse (0xA700) a C-STORE data set larger than this"
    )
    listeners: int = Field(
        default=0,
        ge=0,
        le=256,
        description="processes accepting on the node's port, each receiving into the spool; "
        "0: one per core this node may use. max_associations and max_connections_per_address "
        "hold for all of them together",
    )

    @property
    def listener_processes(self) -> int:
        """``listeners``, or (0) one per core this process may use."""
        return self.listeners or usable_cores()

    @field_validator("max_pdu")
    @classmethod
    def _max_pdu(cls, v: int) -> int:
        if not 4096 <= v <= 16 * 1024 * 1024:
            raise ValueError(
                "use 4096 to 16777216 bytes (default 262144); 0, no limit, is refused because "
                "a peer could then send PDUs of any length"
            )
        return v


class SpoolConfig(_Frozen):
    """The on-disk queue. State is the folder a file is in."""

    path: Path = Path("var/spool")
    keep_forwarded_days: float = Field(
        default=0, ge=0, description="keep forwarded copies this long; 0: delete once confirmed"
    )
    mode: Access = Field(
        default=Access.PRIVATE,
        description="private: spool files 0600, folders 0700 (originals hold PHI); group: "
        "0640/0750 for the node's group, whatever the umask",
    )


class PipelineConfig(_Frozen):
    workers: int = Field(default=0, ge=0, le=256, description="worker processes; 0: one per core")
    cpu_priority: Literal["idle", "nice"] = Field(
        default="nice",
        description="nice: the workers share the CPU, lowered by pipeline.nice; idle: they "
        "run only on CPU time nothing else wants (Linux SCHED_IDLE), for a host that runs "
        "nothing but the node: any other busy process leaves them no time at all (measured: "
        "workers never finished loading in 5 minutes beside two busy loops); on 2 busy cores "
        "idle received no faster than nice and was ~5% slower end to end (2026-12-04)",
    )
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="how much lower the workers' CPU priority is than the node's: a sender "
        "waits for receive, cleaning works through a backlog; 0: the same",
    )
    worker_memory_mb: int = Field(
        default=3072,
        ge=0,
        description="data memory limit of each worker process (RLIMIT_DATA); 0: none",
    )
    max_item_s: float = Field(
        default=3600,
        ge=0,
        description="longest one instance may stay in a worker's stages; a worker still on it "
        "then is stopped and restarted, and the instance quarantined as too-slow (a decoder "
        "that never returns, a loop of thousands of distinct frames each full of text): one "
        "instance cannot hold a worker for ever. 0: no limit. pydicom's 120-frame colour "
        "ultrasound loop takes ~100 s on one core",
    )

    @field_validator("worker_memory_mb")
    @classmethod
    def _worker_memory(cls, v: int) -> int:
        if 0 < v < 1024:
            raise ValueError(
                "a worker needs about 600 MB with the pixel stage before it reads anything: "
                "use 0 (no limit) or at least 1024"
            )
        return v


class RetryConfig(_Frozen):
    initial_delay_s: float = Field(default=2, gt=0)
    max_delay_s: float = Field(default=300, gt=0)
    dead_letter_after_s: float = Field(
        default=7 * 24 * 3600, gt=0, description="move to dead-letter when not delivered by then"
    )
    item_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="an object the destination failed on this many times (no answer, an "
        "abort) while it took others goes to dead-letter; it is sent last and alone meanwhile",
    )


class _Destination(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")


class FolderDestination(_Destination):
    """Writes PatientID/StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm under a folder."""

    type: Literal["folder"] = "folder"
    path: Path
    mode: Access = Field(
        default=Access.PRIVATE,
        description="private: files 0600, folders 0700; group: 0640/0750 (a research team's "
        "group: set group, or make the folder setgid)",
    )
    group: str | None = Field(
        default=None, description="give the files and folders written this group (mode: group)"
    )
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _group(self) -> FolderDestination:
        if self.group is None:
            return self
        import grp

        try:
            grp.getgrnam(self.group)
        except KeyError:
            raise ValueError(
                f"group {self.group!r} does not exist on this host: create it, or remove group"
            ) from None
        if self.mode is not Access.GROUP:
            raise ValueError("group is set but mode is private: set mode: group")
        return self


class ClientTLSConfig(_Frozen):
    """TLS to a destination (DICOM over TLS, PS3.15 B.1; HTTPS): TLS 1.2 or later; the
    server's certificate is checked against ``ca_certificates`` (else the system's CAs) and
    for the name ``server_name`` (else the destination's host)."""

    ca_certificates: Path | None = Field(
        default=None,
        description="CA certificates (PEM) the server's must chain to; default: the system's",
    )
    certificate: Path | None = Field(
        default=None, description="our client certificate (PEM), for servers that ask for one"
    )
    private_key: Path | None = Field(default=None, description="its key (PEM, unencrypted)")
    check_hostname: bool = Field(
        default=True, description="check that the certificate is for the host (or server_name)"
    )
    server_name: str | None = Field(
        default=None,
        description="the name checked in the server's certificate and sent as SNI; default: host",
    )
    verify: bool = Field(
        default=True, description="false: encrypt without checking the server at all (insecure)"
    )

    @model_validator(mode="after")
    def _files(self) -> ClientTLSConfig:
        for name in ("ca_certificates", "certificate", "private_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"tls.{name}: no such file {path}")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("tls: give certificate and private_key together")
        import ssl

        from dicomnode._tls import client_context

        try:
            client_context(self)
        except (ssl.SSLError, OSError) as exc:
            what = "certificate and private_key" if self.certificate else "ca_certificates"
            raise ValueError(
                f"tls: cannot load {what} ({getattr(exc, 'reason', None) or exc}): PEM files, "
                "the key unencrypted and matching the certificate"
            ) from None
        return self


class DicomDestination(_Destination):
    """A C-STORE SCP (the research PACS)."""

    type: Literal["dicom"] = "dicom"
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: AETitle | None = None
    tls: ClientTLSConfig | None = Field(
        default=None, description="DICOM over TLS (PS3.15 B.1); plain TCP when absent"
    )
    batch_size: int = Field(default=100, ge=1, le=10000)
    parallel: int = Field(
        default=1,
        ge=1,
        le=16,
        description="associations in parallel to this destination (helps over slow links)",
    )
    timeout_s: float = Field(default=30, gt=0)
    keep_open_s: float = Field(
        default=1,
        ge=0,
        le=300,
        description="keep an association open this long after a batch, for the next one "
        "(objects come one or two at a time while a study streams in); 0: release after each "
        "batch. Keep it short where the destination takes one association at a time (others "
        "wait meanwhile) and below its idle timeout (Orthanc: 30 s)",
    )
    retry: RetryConfig = RetryConfig()


class _Secret(_Frozen):
    """Where a secret is read from at each use: a file or an environment variable, never
    the configuration itself (it is logged at start-up)."""

    @staticmethod
    def _one_of(file: Path | None, env: str | None, what: str) -> None:
        if (file is None) == (env is None):
            raise ValueError(f"give exactly one of {what}_file and {what}_env")
        if file is not None and not Path(file).is_file():
            raise ValueError(f"{what}_file: no such file {file}")
        if env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise ValueError(f"{what}_env: {env!r} is not an environment variable name")


class BearerAuth(_Secret):
    """``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token_file: Path | None = Field(default=None, description="a file holding the token")
    token_env: str | None = Field(default=None, description="an environment variable holding it")

    @model_validator(mode="after")
    def _source(self) -> BearerAuth:
        self._one_of(self.token_file, self.token_env, "token")
        return self


class BasicAuth(_Secret):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password_file: Path | None = Field(default=None, description="a file holding the password")
    password_env: str | None = Field(default=None, description="an environment variable holding it")

    @model_validator(mode="after")
    def _source(self) -> BasicAuth:
        self._one_of(self.password_file, self.password_env, "password")
        if ":" in self.username:
            raise ValueError("username: basic authentication cannot carry a ':' in the name")
        return self


class DicomwebDestination(_Destination):
    """A DICOMweb server, sent to with STOW-RS (PS3.18 10.5): ``batch_size`` instances per
    POST to ``<url>/studies``, as they are on disk."""

    type: Literal["dicomweb"] = "dicomweb"
    url: str = Field(description="the DICOMweb service root, e.g. https://pacs/dicom-web")
    auth: Annotated[BearerAuth | BasicAuth, Field(discriminator="type")] | None = None
    tls: ClientTLSConfig | None = Field(
        default=None, description="CAs, client certificate, server name (https:// only)"
    )
    batch_size: int = Field(default=100, ge=1, le=10000, description="instances per POST")
    parallel: int = Field(default=1, ge=1, le=16, description="requests in parallel")
    timeout_s: float = Field(default=60, gt=0, description="for each read or write of a request")
    retry: RetryConfig = RetryConfig()

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r}: use http(s)://host[:port]/path, the service root")
        if parts.username or parts.password:
            raise ValueError("put no credentials in the URL: use auth (basic or bearer)")
        if parts.query or parts.fragment:
            raise ValueError("the service root has no query or fragment")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _plain_http(self) -> DicomwebDestination:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme == "https":
            return self
        if self.tls is not None:
            raise ValueError("tls is set but the url is http://: use https://")
        host = parts.hostname or ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if self.auth is not None and not loopback:
            raise ValueError("auth over http:// would send the credentials in clear: use https://")
        return self


Destination = Annotated[
    FolderDestination | DicomDestination | DicomwebDestination, Field(discriminator="type")
]


class DetectorConfig(_Frozen):
    backend: Literal["rapidocr", "paddleocr"] = "rapidocr"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="CPU threads per worker process, for the detector and OpenCV (1: none "
        "besides the worker's own; the node already runs a worker per core)",
    )
    max_side: int = Field(default=1024, ge=256, le=4096, description="detector input size")
    det_model_dir: Path | None = None  # paddleocr backend: local PaddleX model folders
    rec_model_dir: Path | None = None


class RemoverConfig(_Frozen):
    method: Literal["fill", "telea", "diffusion"] = "fill"
    model_path: Path | None = Field(
        default=None, description="diffusion: a local Stable Diffusion 2 inpainting folder"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    steps: int = Field(default=25, ge=1, le=200)
    crop: int = Field(default=512, ge=64, le=1024, description="diffusion crop size (pixels)")


class PixelConfig(_Frozen):
    """The pixel stage: burned-in text."""

    enabled: bool = True
    mode: Literal["all-text", "sensitive-text"] = "all-text"
    presence: Literal["auto", "thorough", "learned"] = Field(
        default="auto",
        description="the cheap check that sends a frame to OCR: auto (learned for grey CT, MR, "
        "PT, NM, CR, DX, MG images; thorough for US, SC, XA, RF, colour, unknown modalities "
        "and device-region matches), thorough (every thin stroke), learned (lines scored by "
        "the bundled model)",
    )
    policy: Path | None = Field(
        default=None, description="a site pixel policy; default rules/pixels.yaml"
    )
    site_regions: Path = Field(
        default=Path("var/rules/site-regions.yaml"),
        description="device regions added from the review page (a regions: list, as in "
        "rules/burned-in-regions.yaml); read after the policy's own when the file exists",
    )
    detector: DetectorConfig = DetectorConfig()
    remover: RemoverConfig = RemoverConfig()
    max_decoded_mb: int = Field(
        default=1024,
        ge=1,
        description="largest decoded pixel data of one instance (rows x columns x frames x "
        "samples x bytes), checked from the header before decoding; larger: too-large",
    )
    max_frame_mb: int = Field(
        default=128,
        ge=1,
        description="largest decoded frame (rows x columns x samples x bytes); larger: too-large",
    )


class MetricsConfig(_Frozen):
    """Prometheus metrics over HTTP."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class LoggingConfig(_Frozen):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    audit_file: Path | None = Field(
        default=Path("var/audit/audit.jsonl"), description="one JSON line per instance; null: none"
    )
    audit_max_mb: int = Field(default=100, ge=1)
    audit_backups: int = Field(default=10, ge=1)
    audit_mode: Access = Field(
        default=Access.PRIVATE,
        description="private: the audit file and its rotations 0600; group: 0640",
    )


class QuarantineConfig(_Frozen):
    """Quarantined originals hold PHI: they are deleted once nobody acted on them in time."""

    keep_days: float = Field(
        default=30,
        ge=0,
        description="delete a quarantined original and its sidecar this many days after it was "
        "quarantined (audited: quarantine-expired); 0: keep forever",
    )


class ReviewConfig(_Frozen):
    """The review page (``dicomnode.review``): quarantine and dead letters in a browser."""

    enabled: bool = True
    bind: str = Field(
        default="127.0.0.1",
        description="the page shows originals: keep it on loopback, or behind a reverse proxy "
        "with TLS",
    )
    port: int = Field(default=8108, ge=0, le=65535, description="0: any free port (tests)")
    users_file: Path = Field(
        default=Path("var/review/users.json"),
        description="users and argon2 password hashes (dicomnode user add); mode 0600",
    )
    secret_key_file: Path | None = Field(
        default=None,
        description="the key that signs session cookies (32 bytes or more); default: derived "
        "from the site secret",
    )
    grafana_url: str | None = Field(default=None, description="linked from the overview")
    trusted_proxies: tuple[str, ...] = Field(
        default=(),
        description="addresses of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed",
    )
    session_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)

    @field_validator("grafana_url")
    @classmethod
    def _grafana(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s\"'<>]+", v):
            raise ValueError(f"{v!r}: give an http(s):// URL")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for address in v:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address or network") from None
        return v

    @field_validator("secret_key_file")
    @classmethod
    def _key_file(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        try:
            size = len(Path(v).read_bytes().strip())
        except OSError as exc:
            raise ValueError(f"cannot read {v} ({exc.strerror})") from None
        if size < 32:
            raise ValueError(f"{v} holds {size} bytes; use 32 or more (openssl rand -hex 32)")
        return v


# -- projects: several research studies on one node (dicomnode.projects) ----------------------


class ProjectMatch(_Frozen):
    """Which instances belong to a project: everything given must hold (nothing: all)."""

    called_ae_title: AETitle | None = Field(
        default=None, description="the AE title the sender calls; default: any this node answers"
    )
    calling_ae_titles: tuple[AETitle, ...] = Field(
        default=(), description="the senders' AE titles; empty: any"
    )
    when: When | None = Field(
        default=None,
        description="a condition on the header as received (dicomnode.conditions), read at "
        "receive time",
    )


class SharedPseudonyms(_Frozen):
    """Link a project's pseudonyms to another's on purpose (the same patient, the same IDs)."""

    shared_with: str = Field(description="the project whose pseudonym key this one uses")


class ProjectConfig(_Frozen):
    """One research study: how its instances are recognised, cleaned and delivered.

    ``scrub`` and ``pixels`` are the top-level sections with this project's settings in place
    of theirs (one level deep).
    """

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,31}$",
        description="a slug (a-z, 0-9, '-'); part of the pseudonym key: renaming a project "
        "changes its pseudonyms",
    )
    match: ProjectMatch = ProjectMatch()
    pseudonyms: Annotated[
        Annotated[Literal["own", "site"], Tag("key")] | Annotated[SharedPseudonyms, Tag("shared")],
        Discriminator(lambda v: "key" if isinstance(v, str) else "shared"),
    ] = Field(
        default="own",
        description="own: a key derived from the secret and the name; site: the site secret "
        "(the pseudonyms of a node without projects); {shared_with: NAME}: that project's",
    )
    scrub: ScrubConfig = ScrubConfig()
    pixels: PixelConfig = PixelConfig()
    destinations: tuple[str, ...] = Field(
        min_length=1, description="names of entries of the top-level destinations list"
    )
    filters: tuple[FilterEntry, ...] = Field(
        default=(),
        description="rules run before scrubbing, in order; a name is a set of rules/filters.yaml",
    )


class Config(_Frozen):
    """The whole configuration of a node (and of the offline `scrub` command)."""

    node: NodeConfig = NodeConfig()
    spool: SpoolConfig = SpoolConfig()
    pipeline: PipelineConfig = PipelineConfig()
    scrub: ScrubConfig = ScrubConfig()
    pixels: PixelConfig = PixelConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    review: ReviewConfig = ReviewConfig()
    destinations: tuple[Destination, ...] = (
        FolderDestination(name="folder", path=Path("var/out")),
    )
    projects: tuple[ProjectConfig, ...] = Field(
        default=(), description="research studies, matched in order; none: one, as before"
    )
    unmatched: Literal["refuse", "quarantine"] = Field(
        default="refuse",
        description="an instance no project matches: refused (A-ASSOCIATE-RJ, or the C-STORE) "
        "or quarantined as no-project",
    )
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _project_sections(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("projects"):
            from dicomnode.projects import inherit_sections

            return inherit_sections(data)
        return data

    @model_validator(mode="after")
    def _projects(self) -> Config:
        if self.projects:
            from dicomnode.projects import check_projects

            check_projects(self)  # errors name projects[i].<setting>
        return self

    @model_validator(mode="after")
    def _unique_destinations(self) -> Config:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destinations: two destinations have the same name")
        if not self.destinations:
            raise ValueError("destinations: at least one is needed")
        return self


_PATHS = (
    ("scrub", "site_rules"),
    ("scrub", "lookup", "path"),
    ("scrub", "crosswalk", "path"),
    ("spool", "path"),
    ("node", "tls", "certificate"),
    ("node", "tls", "private_key"),
    ("node", "tls", "ca_certificates"),
    ("pixels", "policy"),
    ("logging", "audit_file"),
    ("pixels", "detector", "det_model_dir"),
    ("pixels", "detector", "rec_model_dir"),
    ("pixels", "remover", "model_path"),
    ("review", "users_file"),
    ("review", "secret_key_file"),
)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths in a configuration file are relative to that file."""

    def fix(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            path = Path(section[key]).expanduser()
            section[key] = str(path if path.is_absolute() else base / path)

    for *parents, key in _PATHS:
        section: Any = data
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        fix(section, key)
    for destination in data.get("destinations") or []:
        fix(destination, "path")
        if isinstance(destination, dict):
            for key in ("ca_certificates", "certificate", "private_key"):
                fix(destination.get("tls"), key)
            for key in ("token_file", "password_file"):
                fix(destination.get("auth"), key)


def load_config(path: Path | str | None = None) -> Config:
    """Load ``path`` (or ``$DICOMNODE_CONFIG``, or nothing: the embedded defaults)."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    if path is None:
        return Config()
    path = Path(path)
    from dicomnode.validate import ConfigProblems, error, model_problems, read_yaml

    doc = read_yaml(path, what="the configuration")
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigProblems(
            [error("the configuration must be a mapping of sections (node:, scrub:...)", file=path)]
        )
    _resolve_paths(data, path.resolve().parent)
    try:
        config = Config.model_validate({**data, "source": path})
    except ValidationError as exc:
        raise ConfigProblems(model_problems(Config, exc, doc)) from None
    problems = []
    site = config.scrub.site_rules
    if site is not None and not site.is_file():
        problems.append(
            error(
                f"no such file {site}",
                file=path,
                line=doc.line(("scrub", "site_rules")),
                setting="scrub.site_rules",
                fix="give the path of the site rules file (relative to this file), or remove it",
            )
        )
    if config.scrub.lookup is not None:
        try:
            load_lookup(config.scrub.lookup.path)  # cached: free when the file did not change
        except ConfigError as exc:
            where = doc.line(("scrub", "lookup", "path"))
            problems.append(error(str(exc), file=path, line=where, setting="scrub.lookup"))
    if problems:
        raise ConfigProblems(problems)
    return config
