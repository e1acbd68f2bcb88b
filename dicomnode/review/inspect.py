"""Everything that reads an instance's content for the review page, run in a process of its
own (:class:`Inspector`).

Quarantined originals are, by definition, the instances the node could not handle: too
large, undecodable, crashing a worker. Reading their headers and decoding their pixels
happens here, under the workers' limits (``node.max_instance_mb``, ``pixels.max_*_mb``,
``pipeline.worker_memory_mb``) and a time limit, so that the worst one costs this process,
which is started again, and never the node. Only plain data comes back: strings, numbers
and PNG bytes.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from dicomnode.config import Config

__all__ = ["InspectError", "Inspector"]

log = logging.getLogger(__name__)

THUMB = 160  # pixels, the longer side of a thumbnail
LARGE = 1024  # pixels, the longer side of the large view
MAX_FRAMES = 500  # thumbnails shown per instance
MAX_ROWS = 3000  # header rows shown
MAX_DEPTH = 4  # sequence levels shown
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")
SUMMARY_KEYWORDS = (
    "SOPClassUID",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "Rows",
    "Columns",
    "NumberOfFrames",
)


class InspectError(Exception):
    """The instance could not be inspected (the message says why; never a value)."""


# -- in the child process ----------------------------------------------------------------------

_state: dict[str, Any] = {}


def _init(config: Config, secret: bytes, level: int) -> None:
    from dicomnode.limits import apply_worker_limits
    from dicomnode.logs import setup_logging

    setup_logging(level)
    apply_worker_limits(config)
    _state["config"] = config
    _state["secret"] = secret
    _state["scrubbers"] = {}


def _registered(uid: str) -> str:
    from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

    entry = UID_dictionary.get(uid.strip())
    if entry is None or entry[1] != "SOP Class":
        return "(not a registered SOP class)"
    return str(entry[0])


def summaries(paths: list[str]) -> list[dict[str, str] | None]:
    """Modality, SOP class, device and image size of each file (None: cannot be read).

    Only the start of the header is read (at most 1 MiB, inflated when deflated).
    """
    from dicomnode.dicomio import read_header

    result: list[dict[str, str] | None] = []
    for path in paths:
        values = read_header(path, SUMMARY_KEYWORDS, max_bytes=1024 * 1024)
        if values is None:
            result.append(None)
            continue

        def one(keyword: str, values: dict[str, tuple[str, ...]] = values) -> str:
            found = values.get(keyword) or ()
            return found[0][:64] if len(found) == 1 else ""

        modality = one("Modality")
        result.append(
            {
                "modality": modality if _MODALITY.fullmatch(modality) else "",
                "sop_class": _registered(one("SOPClassUID")) if one("SOPClassUID") else "",
                "manufacturer": one("Manufacturer"),
                "model": one("ManufacturerModelName"),
                "rows": one("Rows") if one("Rows").isdigit() else "",
                "columns": one("Columns") if one("Columns").isdigit() else "",
                "frames": one("NumberOfFrames") if one("NumberOfFrames").isdigit() else "1",
            }
        )
    return result


def _scrubber(config: Config, project: str) -> Any:
    """The project's scrubber as the workers build it, but writing no crosswalk record: a
    display must not add re-identification records."""
    from dicomnode.projects import pseudonym_key
    from dicomnode.scrub import scrubber_for
    from dicomnode.spool import DEFAULT_PROJECT

    key = (config.model_dump_json(), project)
    cache: dict[tuple[str, str], Any] = _state["scrubbers"]
    if key not in cache:
        settings = config.scrub
        secret = _state["secret"]
        if config.projects:
            chosen = next((p for p in config.projects if p.name == project), None)
            if chosen is None or project == DEFAULT_PROJECT:
                raise InspectError(f"project {project} is not configured")
            settings = chosen.scrub
            secret = pseudonym_key(config, project, secret)
        cache.clear()
        cache[key] = scrubber_for(settings.model_copy(update={"crosswalk": None}), secret)
    return cache[key]


def _value(elem: Any) -> str:
    from pydicom.multival import MultiValue

    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or isinstance(
        elem.value, bytes | bytearray
    ):
        size = len(elem.value) if elem.value is not None else 0
        return f"({size} bytes of binary data)"
    value = elem.value
    if value is None or value == "":
        return ""
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text[:200] + (" …" if len(text) > 200 else "")


def _rows(ds: Any) -> dict[str, tuple[str, str]]:
    """Every element down to :data:`MAX_DEPTH` levels: key -> (label, value)."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.tag import Tag

    rows: dict[str, tuple[str, str]] = {}
    stack: list[tuple[Any, str, str, int]] = [(ds, "", "", 0)]
    while stack and len(rows) < MAX_ROWS:
        dataset, key_prefix, label_prefix, depth = stack.pop()
        items: list[tuple[Any, str, str, int]] = []
        for key_tag in sorted(dataset.keys()):
            tag = Tag(key_tag)  # the scrubber may leave plain ints as keys
            if len(rows) >= MAX_ROWS:
                break
            if tag == 0x7FE00010:
                continue  # the pixels are shown as frames
            name = keyword_for_tag(tag) or (
                f"private ({tag.group:04X},{tag.element:04X})" if tag.is_private else "unknown"
            )
            key = f"{key_prefix}{int(tag):08X}"
            label = f"{label_prefix}{name} ({tag.group:04X},{tag.element:04X})"
            try:
                elem = dataset[tag]
                if elem.VR == "SQ":
                    sequence = elem.value or []
                    rows[key] = (label, f"({len(sequence)} item(s))")
                    if depth < MAX_DEPTH:
                        for index, child in enumerate(sequence):
                            items.append(
                                (
                                    child,
                                    f"{key}[{index}]/",
                                    f"{label_prefix}{name}[{index}] > ",
                                    depth + 1,
                                )
                            )
                    continue
                rows[key] = (label, _value(elem))
            except Exception as exc:  # a value that cannot be decoded: say so, not what
                rows[key] = (label, f"(cannot be decoded: {type(exc).__name__})")
        stack.extend(reversed(items))
    return rows


def header(path: str, clean_path: str | None, project: str, config: Config) -> dict[str, Any]:
    """The header before (the original) and after (the cleaned copy, else the original
    scrubbed here in memory by the project's scrubber), row by row."""
    from dicomnode.dicomio import read_instance
    from dicomnode.errors import InstanceError

    result: dict[str, Any] = {"rows": [], "after_source": None, "after_error": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            original = read_instance(path)
        except InstanceError as exc:
            raise InspectError(str(exc)) from None
        before = _rows(original)
        after: dict[str, tuple[str, str]] | None = None
        try:
            if clean_path is not None:
                after = _rows(read_instance(clean_path))
                result["after_source"] = "clean copy"
            else:
                # Read again: listing the rows decoded the first copy's raw elements, and
                # the scrubber must see them as the workers do.
                fresh = read_instance(path)
                _scrubber(config, project).scrub(fresh)
                after = _rows(fresh)
                result["after_source"] = "scrubbed for display"
        except (InstanceError, InspectError) as exc:
            result["after_error"] = str(exc)
        except Exception as exc:
            result["after_error"] = f"the scrubber failed ({type(exc).__name__})"
    keys = list(before) + [k for k in (after or {}) if k not in before]
    for key in keys:
        label, old = before.get(key, (None, None))
        new = after.get(key) if after is not None else None
        if label is None and new is not None:
            label = new[0]
        if after is None:
            status = "unknown"
        elif key not in before:
            status = "added"
        elif new is None:
            status = "removed"
        elif new[1] != old:
            status = "changed"
        else:
            status = "same"
        result["rows"].append(
            {
                "key": key,
                "label": label,
                "before": old,
                "after": None if new is None else new[1],
                "status": status,
            }
        )
    return result


def _first(value: Any) -> float | None:
    """The first of a window's values (WindowCenter may be multi-valued)."""
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes | int | float):
        return float(value)
    return float(value[0])


def _picture(frame: Any, photometric: str, ds: Any) -> Any:
    """8-bit RGB as a viewer shows it: the window of the header for monochrome images that
    have one (CT, MR...), else the codec's display (palette, YBR and min-max scaling)."""
    import numpy as np

    from dicomnode.pixels.codec import display

    if photometric in ("MONOCHROME1", "MONOCHROME2") and frame.ndim == 2:
        try:
            center = _first(ds.get("WindowCenter"))
            width = _first(ds.get("WindowWidth"))
        except (TypeError, ValueError, IndexError):
            center = width = None
        if center is not None and width is not None and width > 1:
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            values = frame.astype(np.float32) * slope + intercept
            low = center - width / 2
            scaled = np.clip((values - low) / width, 0.0, 1.0) * 255.0
            picture = scaled.astype(np.uint8)
            if photometric == "MONOCHROME1":
                picture = 255 - picture
            return np.ascontiguousarray(np.repeat(picture[:, :, None], 3, axis=2))
    return display(frame, photometric, ds)


def _png(picture: Any, size: int) -> bytes:
    from PIL import Image

    image = Image.fromarray(picture)
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=3)
    return out.getvalue()


def frames(
    path: str,
    size: int,
    masks: dict[int, list[tuple[int, int, int, int]]],
    only: int | None,
    config: Config,
) -> dict[str, Any]:
    """PNGs of the frames (every one up to :data:`MAX_FRAMES`, or frame ``only``), with the
    ``masks`` boxes of each frame filled black first."""
    from dicomnode.dicomio import read_instance
    from dicomnode.errors import InstanceError
    from dicomnode.pixels.codec import FLOAT_PIXELS, PixelLimits, float_frames, open_frames

    limits = PixelLimits(config.pixels.max_decoded_mb, config.pixels.max_frame_mb)
    stop = MAX_FRAMES if only is None else only + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_instance(path)
            floats = [k for k in FLOAT_PIXELS if k in ds]
            if "PixelData" in ds:
                source = open_frames(ds, limits)
                decoded: Iterator[Any] = source.frames(stop)
                photometric, geometry = source.photometric, source.geometry
                shape = (geometry.frames, geometry.rows, geometry.columns)
            elif floats:  # a parametric map's values: shown as a grey frame is
                values = float_frames(ds, floats[0], limits)
                decoded, photometric, shape = iter(values[:stop]), "MONOCHROME2", values.shape
            else:
                return {"pngs": [], "frames": 0, "rows": 0, "columns": 0}
            pngs: list[bytes] = []
            for index, frame in enumerate(decoded):
                if only is not None and index != only:
                    continue
                picture = _picture(frame, photometric, ds)
                for x0, y0, x1, y1 in masks.get(index, []):
                    picture[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 0
                pngs.append(_png(picture, size))
        except InstanceError as exc:
            raise InspectError(str(exc)) from None
    return {"pngs": pngs, "frames": shape[0], "rows": shape[1], "columns": shape[2]}


_CALLS: dict[str, Callable[..., Any]] = {"summaries": summaries, "header": header, "frames": frames}


def _serve(conn: Connection, config: Config, secret: bytes, level: int) -> None:
    _init(config, secret, level)
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", _CALLS[name](*args)))
        except InspectError as exc:
            conn.send(("error", str(exc)))
        except MemoryError:
            conn.send(("error", "the instance needs more memory than pipeline.worker_memory_mb"))
        except Exception as exc:  # never the message: a library's may quote a value
            conn.send(("error", f"it could not be read ({type(exc).__name__})"))


# -- in the node ------------------------------------------------------------------------------


class Inspector:
    """One helper process, started on first use, called one request at a time.

    A request that takes longer than ``timeout_s`` or kills the process ends it; the next
    request starts a new one.
    """

    def __init__(self, config: Callable[[], Config], secret: bytes, timeout_s: float = 60) -> None:
        self._config = config
        self._secret = secret
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=_serve,
            args=(child, self._config(), self._secret, logging.getLogger().level),
            name="dicomnode-review-inspect",
            daemon=True,
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        return parent

    def call(self, name: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Run ``name(*args)`` in the helper; :class:`InspectError` when it cannot."""
        with self._lock:
            conn = self._conn if self._process is not None and self._process.is_alive() else None
            if conn is None:
                self.close_locked()
                conn = self._start()
            started = time.monotonic()
            try:
                conn.send((name, args))
                if not conn.poll(timeout_s or self.timeout_s):
                    self.close_locked()
                    raise InspectError(
                        f"reading it took more than {timeout_s or self.timeout_s:.0f} s; stopped"
                    )
                status, value = conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                self.close_locked()
                raise InspectError("reading it ended the helper process (see the log)") from None
            log.debug("inspect %s took %.3f s", name, time.monotonic() - started)
        if status != "ok":
            raise InspectError(str(value))
        return value

    def close_locked(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5)
            self._process = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()
