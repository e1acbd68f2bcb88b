"""Frames in and out: decode each frame in its native values, show it to OCR, write it back.

Decoding goes through pydicom's pixel handlers (pylibjpeg and its plugins, pyjpegls) for every
transfer syntax the node accepts. Values stay native (bit depth, signedness, photometric
interpretation) where that can be written back exactly; YBR_FULL_422, YBR_RCT, YBR_ICT and
every lossy source are decoded to RGB.

Nothing is decoded before the header has been checked against the limits (``PixelLimits``):
Rows x Columns x NumberOfFrames x SamplesPerPixel x bytes per sample, in total and per frame,
and the size each compressed frame's own header declares (``streams``), which is what a
decoder allocates. Frames are then decoded one at a time (:class:`FrameSource`) and written
one at a time (:class:`FrameWriter`): the working set is one decoded frame plus the encoded
output, never every frame.

Writing back happens only when a frame changed; otherwise the Pixel Data element is left as
it was, byte for byte. Lossless sources are re-encoded in their own transfer syntax when an
encoder exists (RLE, JPEG-LS, JPEG 2000) and takes the image (pydicom's RLE encoder stops at 16
bits); JPEG Lossless (process 14), which no installed encoder writes, images the encoder
refuses, and every lossy source are written uncompressed in Explicit VR Little Endian: no second
generation of loss, LossyImageCompression stays "01" where it was. Uncompressed output is
joined into one Pixel Data value at the end, so it briefly needs twice its size (bounded by
``pixels.max_decoded_mb``).

Photometric Interpretation and Planar Configuration follow PS3.5 8.2 for the syntax written:
JPEG 2000 RGB frames are written YBR_RCT with the reversible colour transform (8.2.4: the PI
names the transform in the codestream; the US, VL and ophthalmic IODs accept nothing else),
unless the source itself was RGB, which is written back without the transform; JPEG-LS and
JPEG 2000 take Planar Configuration 0 (8.2.3, 8.2.4); RLE and native data keep the source's
value (G.2 note 2: free unless the IOD constrains it, as US does for YBR_FULL).
"""

from __future__ import annotations

import collections
import functools
import io
import itertools
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_fragmented_frames
from pydicom.multival import MultiValue
from pydicom.pixels import (  # type: ignore[attr-defined]
    apply_color_lut,
    as_pixel_options,
    convert_color_space,
    get_encoder,
    iter_pixels,
)
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dicomnode.errors import InstanceError, panicked
from dicomnode.limits import MB, TooLargeError
from dicomnode.pixels import streams

__all__ = [
    "FLOAT_PIXELS",
    "FrameSource",
    "FrameWriter",
    "Frames",
    "Geometry",
    "PixelDecodeError",
    "PixelLimits",
    "decode",
    "display",
    "encode",
    "fill_value",
    "float_frames",
    "geometry",
    "open_frames",
    "value_span",
    "value_spans",
]

log = logging.getLogger(__name__)

UNCOMPRESSED = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
}
REENCODABLE = {RLELossless, JPEGLSLossless, JPEG2000Lossless}
NATIVE_PI = {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL"}

# Where each compressed syntax says how large its frames are.
_JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50",  # baseline
    "1.2.840.10008.1.2.4.51",  # extended
    "1.2.840.10008.1.2.4.57",  # lossless, process 14
    "1.2.840.10008.1.2.4.70",  # lossless, SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
}
_J2K_FAMILY = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
_HEAD = 1024 * 1024  # bytes of a frame read for its header (APP segments come before SOF)
_BITS_ALLOCATED = (1, 8, 16, 32)


class PixelDecodeError(InstanceError):
    reason = "pixel-decode-failed"


@dataclass(frozen=True)
class PixelLimits:
    """The most the pixel stage decodes: per instance and per frame (``pixels.max_*_mb``)."""

    max_decoded_mb: int = 1024
    max_frame_mb: int = 128


@dataclass(frozen=True)
class Geometry:
    """The image as the header declares it, checked to be whole and in range."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame (1-bit data decodes to a byte per sample)."""
        return self.rows * self.columns * self.samples * max(1, self.bits_allocated // 8)

    @property
    def decoded_bytes(self) -> int:
        return self.frame_bytes * self.frames

    @property
    def stored_bytes(self) -> int:
        """Bytes of native (uncompressed) Pixel Data for this geometry."""
        bits = self.rows * self.columns * self.samples * self.frames * self.bits_allocated
        return (bits + 7) // 8

    def describe(self) -> str:
        return (
            f"{self.rows} x {self.columns} pixels, {self.frames} frame(s), "
            f"{self.samples} sample(s) of {self.bits_allocated} bits"
        )


@dataclass
class Frames:
    """Every decoded frame of one instance, and how to read them (offline tools, tests)."""

    arrays: list[np.ndarray]
    photometric: str  # of the arrays, which may differ from the dataset's
    syntax: UID
    lossy: bool


def geometry(ds: Dataset) -> Geometry:
    """Rows, Columns, NumberOfFrames, SamplesPerPixel and BitsAllocated, or PixelDecodeError.

    Missing, zero, negative, fractional, multi-valued or unreadable values are refused here,
    before anything is allocated from them; a value read as text is never echoed (it could
    carry anything).
    """
    rows = _whole(ds, "Rows", 1, 65535)
    columns = _whole(ds, "Columns", 1, 65535)
    samples = _whole(ds, "SamplesPerPixel", 1, 4, default=1)
    if samples not in (1, 3):
        raise _header_error(f"SamplesPerPixel is {samples}; only 1 and 3 are decodable")
    bits = _whole(ds, "BitsAllocated", 1, 64)
    if bits not in _BITS_ALLOCATED:
        raise _header_error(
            f"BitsAllocated is {bits}; Pixel Data is 1, 8, 16 or 32 bits per sample"
        )
    stored = _whole(ds, "BitsStored", 1, 64, default=bits)
    if stored > bits:
        raise _header_error(f"BitsStored ({stored}) is larger than BitsAllocated ({bits})")
    frames = _whole(ds, "NumberOfFrames", 1, None, default=1)
    return Geometry(rows, columns, frames, samples, bits)


def _whole(
    ds: Dataset, keyword: str, low: int, high: int | None, default: int | None = None
) -> int:
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom cannot convert what was sent
        raise _header_error(f"{keyword} cannot be read as a number") from None
    if value is None or value == "":
        if default is None:
            raise _header_error(f"{keyword} is missing")
        return default
    if isinstance(value, MultiValue | list | tuple):
        raise _header_error(f"{keyword} has {len(value)} values; it must have one")
    number: int | None = None
    whole = isinstance(value, float) and value.is_integer()
    if whole or (isinstance(value, int) and not isinstance(value, bool)):
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise _header_error(f"{keyword} is not a whole number")
    if number < low or (high is not None and number > high):
        limit = f"{low} to {high}" if high is not None else f"at least {low}"
        raise _header_error(f"{keyword} is {number}; it must be {limit}")
    return number


def _header_error(problem: str) -> PixelDecodeError:
    return PixelDecodeError(
        f"the image header cannot describe decodable pixels: {problem}; the instance was not "
        "decoded. Ask the sender for a corrected instance"
    )


def _check_budget(shape: Geometry, limits: PixelLimits) -> None:
    """Refuse (``too-large``) what would decode to more than the limits, before decoding."""
    frame_limit = limits.max_frame_mb * MB
    total_limit = limits.max_decoded_mb * MB
    if shape.frame_bytes > frame_limit:
        raise TooLargeError(
            f"the header declares {shape.describe()}: {_mb(shape.frame_bytes)} per decoded "
            f"frame, over pixels.max_frame_mb ({limits.max_frame_mb} MB). Nothing was decoded; "
            "if the image is genuine, raise pixels.max_frame_mb (and pipeline.worker_memory_mb "
            "with it) and 'dicomnode retry --quarantine too-large'"
        )
    if shape.decoded_bytes > total_limit:
        raise TooLargeError(
            f"the header declares {shape.describe()}: {_mb(shape.decoded_bytes)} decoded, over "
            f"pixels.max_decoded_mb ({limits.max_decoded_mb} MB). Nothing was decoded; if the "
            "instance is genuine, raise pixels.max_decoded_mb (and pipeline.worker_memory_mb "
            "with it) and 'dicomnode retry --quarantine too-large'"
        )


def _mb(size: int) -> str:
    return f"{size / MB:,.1f} MB"


def _check_pixel_data(ds: Dataset, shape: Geometry, syntax: UID) -> None:
    """Check that the Pixel Data holds what the header says, reading only frame headers.

    Native data must be long enough for every frame. Each compressed frame's own header
    (SOF, SOF55, SIZ, the RLE segment table) must declare the header's rows, columns and
    samples: a decoder allocates what the stream says, so a stream that declares more is
    ``too-large``, and one that declares something else, or nonsense, ``pixel-decode-failed``,
    both without decoding.
    """
    data = ds.PixelData or b""
    if _native(syntax):
        needed = _native_bytes(ds, shape)
        if len(data) < needed:
            raise PixelDecodeError(
                f"the Pixel Data holds {len(data)} bytes and the header ({shape.describe()}) "
                f"needs {needed}: the instance is truncated or its header is wrong; ask the "
                "sender to resend it"
            )
        return
    if syntax not in _JPEG_FAMILY and syntax not in _J2K_FAMILY and syntax != RLELossless:
        raise PixelDecodeError(
            f"no decoder here checks the frame sizes of {syntax.name}; the instance was not decoded"
        )
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    count = 0
    try:
        found = generate_fragmented_frames(
            data, number_of_frames=shape.frames, extended_offsets=extended
        )
        for fragments in itertools.islice(found, shape.frames):
            count += 1
            _check_frame(_head(fragments), count, shape, syntax)
    except (ValueError, IndexError, KeyError, EOFError, struct.error) as exc:
        # (struct.error: pydicom's, on a Basic Offset Table longer than the data)
        if isinstance(exc, streams.StreamError):
            raise PixelDecodeError(
                f"frame {count} cannot be decoded: {exc}; the instance was not decoded"
            ) from None
        raise PixelDecodeError(
            f"the encapsulated Pixel Data cannot be split into frames ({type(exc).__name__}); "
            "it is corrupt or truncated. Ask the sender to resend it"
        ) from None
    if count < shape.frames:
        raise PixelDecodeError(
            f"the header declares {shape.frames} frame(s) and the Pixel Data holds {count}; "
            "the instance is truncated or its header is wrong"
        )


def _native(syntax: UID) -> bool:
    return syntax in UNCOMPRESSED or (syntax.is_transfer_syntax and not syntax.is_encapsulated)


def _native_bytes(ds: Dataset, shape: Geometry) -> int:
    """Bytes of native Pixel Data the header declares (without the pad to an even length)."""
    needed = shape.stored_bytes
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        needed = needed * 2 // 3  # two chroma samples per pixel pair (PS3.3 C.7.6.3.1.2)
    return needed


def _trim(ds: Dataset, needed: int) -> int:
    """Drop native Pixel Data bytes after the image and its pad byte; how many were dropped.

    They belong to no frame, no viewer shows them and no check of the pixel stage looks at
    them, so they can hold anything (a name and an ID appended after a CT slice went out with
    the slice, which was left unchanged; seen while triaging the campaign through the node).
    The image itself is kept byte for byte. (Encapsulated data's like places:
    :func:`image_only`.)"""
    data = ds.PixelData or b""
    keep = needed + needed % 2
    if len(data) <= keep:
        return 0
    ds.PixelData = bytes(data[:needed]) + b"\x00" * (needed % 2)
    return len(data) - keep


def image_only(ds: Dataset, frames: int) -> list[str] | None:
    """Encapsulated Pixel Data rebuilt from each frame's codestream alone
    (``streams.jpeg_image_only``, ``streams.j2k_image_only``) when a frame carries more:
    application segments, comments, bytes after its end, data after the last frame. Returns
    what was removed ([] when nothing was: ``ds`` untouched), or None when it cannot be cut
    out by itself (the caller re-encodes the frames). The codestreams are kept byte for
    byte: nothing is decoded or compressed again (RLE: a run past the rows is shortened).
    Native data: [] (``_trim`` cuts what follows its image)."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax in _JPEG_FAMILY:
        strip: Callable[[bytes], tuple[bytes | None, list[str]]] = streams.jpeg_image_only
    elif syntax in _J2K_FAMILY:
        strip = streams.j2k_image_only
    elif syntax == RLELossless:
        strip = functools.partial(streams.rle_image_only, length=int(ds.Rows) * int(ds.Columns))
    else:
        return []
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    kept: list[bytes] = []
    removed: list[str] = []
    if not _offsets_only(bytes(ds.PixelData), frames, extended):
        removed.append("an offset table that holds more than the frames' offsets")
    try:
        found = generate_fragmented_frames(
            ds.PixelData, number_of_frames=frames, extended_offsets=extended
        )
        for index, fragments in enumerate(found):
            if index >= frames:
                removed.append("data after the last frame")
                break
            frame, what = strip(b"".join(fragments))
            if frame is None:
                return None
            kept.append(frame)
            removed += what
    except (ValueError, IndexError, KeyError, EOFError, struct.error):
        return None  # not walked to its end (streams.StreamError is a ValueError)
    if not removed:
        return []
    if extended is not None:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            kept
        )
    else:
        ds.PixelData = encapsulate(kept, has_bot=len(kept) > 1)
    counted = collections.Counter(removed)
    return [what if n == 1 else f"{what} (x{n})" for what, n in sorted(counted.items())]


def _offsets_only(data: bytes, frames: int, extended: tuple[Any, Any] | None) -> bool:
    """Do the Basic Offset Table (the first item of encapsulated Pixel Data) and the
    Extended Offset Table hold nothing but the frames' offsets (and lengths)? Decoders read
    the basic table of a multi-frame instance only, and the frames then as the offsets say,
    so bytes in a single frame's table, or beyond the frames' entries, are seen by no one
    (a name there went out with a frame left unchanged). A table that is there must have
    one entry a frame, the first 0, each the start of an item; the extended table's two
    values 8 bytes a frame."""
    if len(data) < 8 or data[:4] != b"\xfe\xff\x00\xe0":
        return False
    length = int.from_bytes(data[4:8], "little")
    if extended is not None:
        sizes = [len(bytes(v)) for v in extended]
        return length == 0 and sizes == [8 * frames, 8 * frames]
    if length == 0:
        return True
    if length != 4 * frames or 8 + length > len(data):
        return False
    offsets = struct.unpack_from(f"<{frames}I", data, 8)
    starts, position = set(), 8 + length  # items after the table, from 0
    while position + 8 <= len(data) and data[position : position + 4] == b"\xfe\xff\x00\xe0":
        starts.add(position - 8 - length)
        position += 8 + int.from_bytes(data[position + 4 : position + 8], "little")
    return (
        offsets[0] == 0
        and all(o in starts for o in offsets)
        and list(offsets) == sorted(set(offsets))
    )


def _own_codestream(piece: bytes, syntax: UID | None) -> bytes:
    """A frame this node encoded, without what its encoder wrote besides the image
    (OpenJPEG's "Created by OpenJPEG" comment): the output holds the image only, and the
    stage run again on it changes nothing."""
    strip = streams.j2k_image_only if syntax in _J2K_FAMILY else None
    if syntax in _JPEG_FAMILY:
        strip = streams.jpeg_image_only
    if strip is None:
        return piece
    try:
        kept, _removed = strip(piece)
    except streams.StreamError:
        return piece  # our encoder's own stream, as it wrote it
    return piece if kept is None else kept


def _head(fragments: tuple[bytes, ...]) -> bytes:
    """The first bytes of a frame (whole fragments until 1 MB), without joining the rest."""
    if not fragments or len(fragments[0]) >= _HEAD:
        return fragments[0] if fragments else b""
    head = bytearray()
    for fragment in fragments:
        head += fragment
        if len(head) >= _HEAD:
            break
    return bytes(head)


def _check_frame(head: bytes, number: int, shape: Geometry, syntax: UID) -> None:
    if syntax == RLELossless:
        segments = streams.rle_segments(head)
        expected = shape.samples * max(1, shape.bits_allocated // 8)
        if segments != expected:
            raise PixelDecodeError(
                f"frame {number}'s RLE header declares {segments} segment(s) and the header "
                f"({shape.describe()}) needs {expected}; the instance was not decoded"
            )
        return
    declared = streams.declared_jpeg(head) if syntax in _JPEG_FAMILY else streams.declared_j2k(head)
    said = f"{declared.rows} x {declared.columns} x {declared.components}"
    header = f"{shape.rows} x {shape.columns} x {shape.samples}"
    if (
        declared.rows > shape.rows
        or declared.columns > shape.columns
        or declared.components > shape.samples
    ):
        raise TooLargeError(
            f"frame {number}'s {declared.where} declares {said} (rows x columns x samples), "
            f"more than the header's {header}; a decoder would allocate what the stream "
            "declares, so it was not decoded. The instance is malformed or hostile: ask the "
            "sender"
        )
    if (declared.rows, declared.columns, declared.components) != (
        shape.rows,
        shape.columns,
        shape.samples,
    ):
        raise PixelDecodeError(
            f"frame {number}'s {declared.where} declares {said} (rows x columns x samples) and "
            f"the header {header}; the instance was not decoded"
        )
    if declared.precision > max(8, shape.bits_allocated):
        raise PixelDecodeError(
            f"frame {number}'s {declared.where} declares {declared.precision}-bit samples and "
            f"BitsAllocated is {shape.bits_allocated}; the instance was not decoded"
        )


class FrameSource:
    """The frames of one instance, decoded one at a time after every check has passed.

    Raises :class:`~dicomnode.limits.TooLargeError` or :class:`PixelDecodeError` from the
    constructor (the header, the limits, the frames' own headers) before any decoding.
    """

    def __init__(self, ds: Dataset, limits: PixelLimits | None = None) -> None:
        self.ds = ds
        self.syntax = UID(ds.file_meta.TransferSyntaxUID)
        self.geometry = geometry(ds)
        _check_budget(self.geometry, limits or PixelLimits())
        _check_pixel_data(ds, self.geometry, self.syntax)
        #: Native Pixel Data bytes after the image, dropped (``_trim``).
        self.trimmed = _trim(ds, _native_bytes(ds, self.geometry)) if _native(self.syntax) else 0
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        self.source_photometric = photometric
        self.lossy = self.syntax not in UNCOMPRESSED and not _is_lossless(self.syntax)
        self.raw = photometric in NATIVE_PI and not self.lossy
        if not self.raw and self.geometry.samples > 1:
            photometric = "RGB"
        elif photometric == "YBR_FULL_422":
            photometric = "YBR_FULL"
        self.photometric = photometric  # of the decoded arrays
        # Each pixel's value is its BitsStored bits; what the rest of its word holds, no
        # viewer shows and no check sees (pydicom drops it as it decodes): an overlay of an
        # older scanner (a name, drawn there), or anything a sender hides there. Frames whose
        # unused bits hold something are counted; the caller writes them anew.
        stored = _whole(ds, "BitsStored", 1, 64, default=self.geometry.bits_allocated)
        grey = self.geometry.samples == 1 or self.raw  # no colour conversion after decoding
        self._unused = self.geometry.bits_allocated - stored if grey else 0
        self._unused_frames: set[int] = set()

    def __len__(self) -> int:
        return self.geometry.frames

    @property
    def unused_bits(self) -> int:
        """Frames decoded so far whose bits outside BitsStored were not what their value
        implies (zero, or the sign's): :meth:`frames` yields them without."""
        return len(self._unused_frames)

    def frames(self, stop: int | None = None) -> Iterator[np.ndarray]:
        """Decoded frames in order (the first ``stop`` only, if given), one at a time."""
        if stop == 0:
            return
        shift = self._unused
        decoded = iter_pixels(self.ds, raw=self.raw, correct_unused_bits=not shift)
        try:
            for index, frame in enumerate(itertools.islice(decoded, stop)):
                yield self._used_bits(frame, shift, index) if shift else frame
        except MemoryError:
            raise
        except BaseException as exc:
            if not (isinstance(exc, Exception) or panicked(exc)):
                raise  # GeneratorExit (the caller stopped early), KeyboardInterrupt, ...
            raise PixelDecodeError(
                f"cannot decode the pixel data ({self.syntax.name}, {self.source_photometric}): "
                f"{type(exc).__name__}; the data may be corrupt or use an option no installed "
                "decoder supports (pylibjpeg, pyjpegls; python-gdcm adds more)"
            ) from None
        finally:
            close = getattr(decoded, "close", None)
            if close is not None:
                close()  # frees the decoder's state now, not at garbage collection

    def _used_bits(self, frame: np.ndarray, shift: int, index: int) -> np.ndarray:
        """``frame`` with each value's unused bits as its BitsStored bits imply (pydicom's
        own correction: shifted out and back, so signed values keep their sign), counted
        in :attr:`unused_bits` when that changed anything."""
        if frame.dtype.kind not in "iu" or frame.dtype.itemsize * 8 != self.geometry.bits_allocated:
            return frame
        used = frame.copy()
        np.left_shift(used, shift, out=used)
        np.right_shift(used, shift, out=used)
        if not np.array_equal(used, frame):
            self._unused_frames.add(index)
        return used


#: Pixel values kept as floats (a parametric map's): the keyword and its numpy type.
FLOAT_PIXELS = {"FloatPixelData": "f4", "DoubleFloatPixelData": "f8"}


def float_frames(ds: Dataset, keyword: str, limits: PixelLimits | None = None) -> np.ndarray:
    """The frames of Float or Double Float Pixel Data (frames x rows x columns, read-only,
    a view of the value), read here: they are always native and one sample per pixel
    (PS3.5 A.1, PS3.3 C.7.6.3), and pydicom's decoders do not read them. Bytes after the
    image are dropped from the value, as for Pixel Data (:func:`_trim`); a value shorter
    than the header declares, or a header that cannot describe it, is
    :class:`PixelDecodeError`; more than the limits allow, ``too-large``."""
    rows = _whole(ds, "Rows", 1, 65535)
    columns = _whole(ds, "Columns", 1, 65535)
    frames = _whole(ds, "NumberOfFrames", 1, None, default=1)
    if _whole(ds, "SamplesPerPixel", 1, 4, default=1) != 1:
        raise _header_error(f"{keyword} has one sample per pixel; SamplesPerPixel says more")
    dtype = np.dtype(FLOAT_PIXELS[keyword])
    shape = Geometry(rows, columns, frames, 1, dtype.itemsize * 8)
    _check_budget(shape, limits or PixelLimits())
    if UID(ds.file_meta.TransferSyntaxUID) == ExplicitVRBigEndian:
        dtype = dtype.newbyteorder(">")
    else:
        dtype = dtype.newbyteorder("<")
    data = ds[keyword].value or b""
    needed = shape.stored_bytes
    if len(data) < needed:
        raise PixelDecodeError(
            f"{keyword} holds {len(data):,} bytes; the header declares {shape.describe()} "
            f"({needed:,} bytes). Ask the sender for a corrected instance"
        )
    if len(data) > needed:
        ds[keyword].value = data = bytes(data[:needed])
    return np.frombuffer(data, dtype).reshape(frames, rows, columns)


def open_frames(ds: Dataset, limits: PixelLimits | None = None) -> FrameSource:
    """:class:`FrameSource` of ``ds``: checked, nothing decoded yet."""
    return FrameSource(ds, limits)


def decode(ds: Dataset, limits: PixelLimits | None = None) -> Frames:
    """Every frame of ``ds`` in one list (offline tools and tests; the stage streams them)."""
    source = FrameSource(ds, limits)
    arrays = list(source.frames())
    return Frames(arrays, source.photometric, source.syntax, source.lossy)


def _is_lossless(syntax: UID) -> bool:
    return syntax in REENCODABLE or syntax in (
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, process 14
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    )


def display(
    frame: np.ndarray, photometric: str, ds: Dataset, span: tuple[float, float] | None = None
) -> np.ndarray:
    """An 8-bit RGB picture of a frame, as a viewer would show it, for OCR.

    Values deeper than 8 bits are stretched from ``span`` (low, high) to 0-255; None: the
    frame's own range (:func:`value_span`). The pixel stage passes the original frame's span
    for its cleaned frame too, so that verification sees the cleaned frame as the original
    was seen: a fill that removed the brightest pixels must not brighten what is left. A
    palette is shown by its entries' own depth (16-bit entries over 65535), never stretched.
    """
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(frame, ds))
        if rgb.dtype == np.uint8:
            return np.ascontiguousarray(rgb)
        if _palette_is_16_bit(ds):
            return np.ascontiguousarray((rgb.astype(np.float32) / 257.0 + 0.5).astype(np.uint8))
        return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if photometric == "YBR_FULL":
        frame = convert_color_space(frame, "YBR_FULL", "RGB")
    picture = _stretched(frame, photometric, span)
    if picture.ndim == 2:  # (OpenCV copies a plane to three ~25 times faster than numpy)
        return cv2.cvtColor(np.ascontiguousarray(picture), cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(picture)


def display_grey(
    frame: np.ndarray, photometric: str, span: tuple[float, float] | None = None
) -> np.ndarray | None:
    """The one plane of what :func:`display` shows for a grey frame (MONOCHROME1 or 2, one
    sample per pixel), None for any other: what the learned presence check looks at, without
    the three planes made and one copied back out (~0.13 ms of a 512x512 frame)."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or frame.ndim != 2:
        return None
    return np.ascontiguousarray(_stretched(frame, photometric, span))


def _stretched(frame: np.ndarray, photometric: str, span: tuple[float, float] | None) -> np.ndarray:
    """A frame's values as 8 bits (:func:`_to_uint8`), MONOCHROME1 turned over."""
    if frame.dtype.kind == "f":  # NaN as the lowest value, infinities as the ends
        span = span if span is not None else value_span(frame)
        values = np.nan_to_num(
            frame.astype(np.float64), nan=span[0], posinf=span[1], neginf=span[0]
        )
        picture = _to_uint8(values.astype(np.float32), span)
    else:
        picture = frame if frame.dtype == np.uint8 else _to_uint8(frame.astype(np.float32), span)
    if photometric == "MONOCHROME1":
        picture = 255 - picture
    return picture


def value_span(frame: np.ndarray) -> tuple[float, float]:
    """The range of a frame's values (what :func:`display` stretches to 0-255); of its
    finite values, for floats (NaN marks "no value" in a parametric map)."""
    if frame.dtype.kind == "f":
        finite = frame[np.isfinite(frame)]
        if not finite.size:
            return 0.0, 0.0
        return float(finite.min()), float(finite.max())
    return float(frame.min()), float(frame.max())


#: A frame is looked at over the bulk of its values too when its whole range is this many
#: times wider: the bulk then has a quarter of the grey levels or less (64 of 256).
SQUEEZED = 4.0


def value_spans(frame: np.ndarray) -> list[tuple[float, float]]:
    """The spans a grey frame is looked at over: its range (:func:`value_span`), and the
    range of the bulk of its values (0.5th to 99.5th percentile, of every eighth pixel each
    way) when the whole range is ``SQUEEZED`` times wider. A few extreme values (an MR
    spike, a PET bladder, a pixel set to hide text) otherwise show everything else in a
    few grey levels, below what the presence check sees as a stroke. 8-bit and colour
    frames are shown as they are: one span."""
    full = value_span(frame)
    floats = frame.dtype.kind == "f"  # any scale: 0 to 2.5 is as deep as 0 to 4095
    if frame.dtype == np.uint8 or frame.ndim != 2 or (not floats and full[1] - full[0] <= 255):
        return [full]
    sample = frame[::8, ::8]
    if floats:
        sample = sample[np.isfinite(sample)]
    if sample.size < 16:
        return [full]
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if high > low and (high - low) * SQUEEZED < full[1] - full[0]:
        return [full, (low, high)]
    return [full]


def _palette_is_16_bit(ds: Dataset) -> bool:
    """Whether the palette's entries use 16 bits: declared so, and some entry above 255 (a
    few writers declare 16 and store 8-bit values)."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor", [256, 0, 8])
    if int(descriptor[2]) != 16:
        return False
    lut = np.asarray(apply_color_lut(np.arange(_palette_size(ds)), ds))
    return bool(lut.max() > 255)


def _to_uint8(values: np.ndarray, span: tuple[float, float] | None = None) -> np.ndarray:
    """``values`` (float32, a copy of the frame: it is scaled in place, which is ten times
    faster than making new arrays at each step) stretched from ``span`` to 0-255."""
    if values.dtype == np.uint8:
        return values
    low, high = span if span is not None else (float(values.min()), float(values.max()))
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    values -= low
    values *= 255.0 / (high - low)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def fill_value(frame: np.ndarray, photometric: str, ds: Dataset) -> np.ndarray:
    """The value that displays as black, in the frame's own terms."""
    if photometric == "MONOCHROME1":
        return np.array(frame.max(), frame.dtype)
    if photometric == "PALETTE COLOR":
        lut = np.asarray(apply_color_lut(np.arange(_palette_size(ds)), ds), dtype=np.float64)
        return np.array(int(np.argmin(lut.sum(axis=-1))), frame.dtype)
    if photometric == "YBR_FULL":
        half = (np.iinfo(frame.dtype).max + 1) // 2 if frame.dtype.kind == "u" else 0
        return np.array([0, half, half], frame.dtype)
    if frame.ndim == 3:
        return np.zeros(frame.shape[-1], frame.dtype)
    low = value_span(frame)[0] if frame.dtype.kind == "f" else frame.min()
    return np.array(low, frame.dtype)


def _palette_size(ds: Dataset) -> int:
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor", [256, 0, 8])
    return int(descriptor[0]) or 65536


class FrameWriter:
    """Writes an instance's frames back, one at a time, in the syntax chosen for it.

    The first frame decides the output: the source syntax where it is lossless and an
    encoder takes the image, else uncompressed (see the module docstring). Each frame is
    encoded as it comes and only its encoded bytes are kept: compressed frames in a list,
    uncompressed ones straight into one buffer of the final size. :meth:`add` returns the
    frame's slot so that an identical frame can be written again with :meth:`repeat`
    without encoding it twice. :meth:`finish` puts the Pixel Data and the image attributes
    into the dataset; until then the dataset is untouched (its frames may still be being
    decoded).
    """

    def __init__(
        self, ds: Dataset, photometric: str, syntax: UID, lossy: bool, frames: int
    ) -> None:
        self.ds = ds
        self.photometric = photometric
        self.syntax = syntax
        self.lossy = lossy
        self.frames = frames
        self.source_pi = str(ds.get("PhotometricInterpretation", "")).strip()
        planar = ds.get("PlanarConfiguration")
        self.source_planar: int | None = planar if planar in (0, 1) else None
        self.target: UID | None = None
        self.attributes: dict[str, Any] = {}
        self.refused = ""
        self._options: dict[str, Any] = {}
        self._encoder: Any = None
        self._pieces: list[bytes] = []  # compressed frames
        self._native: io.BytesIO | None = None  # uncompressed frames, end to end
        self._frame_size = 0
        self._written = 0
        self._byte_order: Literal["<", ">"] = "<"

    def add(self, frame: np.ndarray) -> int:
        """Encode ``frame`` as the next frame; returns its slot, for :meth:`repeat`."""
        if self.target is None:
            return self._put(self._first(frame))
        return self._put(self._encode(frame))

    def repeat(self, slot: int) -> None:
        """Write the frame of an earlier slot again (an identical frame)."""
        if self._native is None:
            self._put(self._pieces[slot])
            return
        start = slot * self._frame_size
        with self._native.getbuffer() as view:
            piece = bytes(view[start : start + self._frame_size])
        self._put(piece)

    def _put(self, piece: bytes) -> int:
        if self._written >= self.frames:
            raise ValueError("more frames written than the instance has")
        if self._native is not None:
            self._native.write(piece)
        else:
            self._pieces.append(piece)
        self._written += 1
        return self._written - 1

    def _first(self, frame: np.ndarray) -> bytes:
        source = self.syntax
        if source in REENCODABLE and not self.lossy:
            self._choose(frame, source)
            try:
                return self._encode(frame)
            except (ValueError, RuntimeError) as exc:  # pydicom's encoders refuse the image
                log.warning(
                    "%s encoder refused the image, writing it uncompressed: %s",
                    source.name,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                self.refused = f" ({source.name} encoder refused the image)"
        self._choose(frame, source if source in UNCOMPRESSED else ExplicitVRLittleEndian)
        piece = self._encode(frame)
        # One buffer of the final size (padded to even), filled frame by frame; getvalue()
        # then hands that buffer over as the Pixel Data without copying it (CPython's
        # BytesIO shares its bytes when nothing else holds them), so the output costs its
        # size once, not twice as joining per-frame pieces would.
        self._frame_size = len(piece)
        total = self._frame_size * self.frames
        self._native = io.BytesIO()
        self._native.seek(total + total % 2 - 1)
        self._native.write(b"\x00")
        self._native.seek(0)
        return piece

    def _choose(self, frame: np.ndarray, target: UID) -> None:
        self.target = target
        self.attributes = _image_attributes(
            frame,
            self.photometric,
            self.syntax,
            target,
            self.source_pi,
            self.source_planar,
            int(self.ds.get("BitsAllocated", 8)),
        )
        if target in UNCOMPRESSED:
            self._encoder = None
            self._byte_order = ">" if target == ExplicitVRBigEndian else "<"
            return
        self._encoder = get_encoder(target)
        options = {
            "number_of_frames": 1,
            "photometric_interpretation": self.attributes["PhotometricInterpretation"],
        }
        if frame.ndim == 3:
            options["samples_per_pixel"] = self.attributes["SamplesPerPixel"]
            options["planar_configuration"] = self.attributes["PlanarConfiguration"]
        if "BitsAllocated" in self.attributes:
            options["bits_allocated"] = self.attributes["BitsAllocated"]
            options["bits_stored"] = self.attributes["BitsStored"]
        self._options = as_pixel_options(self.ds, **options)

    def _encode(self, frame: np.ndarray) -> bytes:
        if self._encoder is not None:
            piece = bytes(self._encoder.encode(frame, **self._options))
            return _own_codestream(piece, self.target)
        if self.attributes.get("PlanarConfiguration") == 1:
            frame = np.moveaxis(frame, -1, 0)  # samples, rows, columns
        dtype = frame.dtype.newbyteorder(self._byte_order)
        piece = np.ascontiguousarray(frame).astype(dtype, copy=False).tobytes()
        if self._frame_size and len(piece) != self._frame_size:
            raise ValueError("a frame differs in size from the first one")
        return piece

    def finish(self) -> str:
        """Put the written frames into the dataset; returns what was done, for the record."""
        ds, target, source = self.ds, self.target, self.syntax
        if target is None or self._written != self.frames:
            raise ValueError(f"{self._written} of {self.frames} frames were written")
        for keyword, value in self.attributes.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        for keyword in ("PixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            if keyword in ds:
                delattr(ds, keyword)
        if self._native is None:
            pieces, self._pieces = self._pieces, []
            total = (len(pieces) - 1) * 8 + sum(len(p) for p in pieces[:-1])
            if total > 2**32 - 1:
                ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
                    encapsulate_extended(pieces)
                )
            else:
                ds.PixelData = encapsulate(pieces)
            del pieces
            element = ds["PixelData"]
            element.is_undefined_length = True
            element.VR = "OB"
            ds.file_meta.TransferSyntaxUID = target
            return f"re-encoded in {source.name}"
        data, self._native = self._native.getvalue(), None
        itemsize = int(ds.get("BitsAllocated", 8)) // 8
        ds.add_new(0x7FE00010, "OW" if itemsize > 1 else "OB", data)
        if target != source:
            ds.file_meta.TransferSyntaxUID = target
            if self.lossy:
                ds.LossyImageCompression = "01"
            return f"written uncompressed ({target.name}) from {source.name}{self.refused}"
        return "written uncompressed"


def encode(ds: Dataset, frames: Frames) -> str:
    """Write every frame of ``frames`` back into ``ds``; returns what was done."""
    writer = FrameWriter(ds, frames.photometric, frames.syntax, frames.lossy, len(frames.arrays))
    for frame in frames.arrays:
        writer.add(frame)
    return writer.finish()


def _image_attributes(
    first: np.ndarray,
    photometric: str,
    syntax: UID,
    target: UID,
    source_pi: str,
    source_planar: int | None,
    bits_allocated: int,
) -> dict[str, Any]:
    """The image attributes for frames like ``first`` written in ``target`` (None: remove).

    PS3.5 8.2: the Photometric Interpretation must be one the syntax allows and, for JPEG 2000,
    name the colour transform applied in the codestream (pydicom's encoder applies the
    reversible one when told YBR_RCT and none for RGB).
    """
    if target == JPEG2000Lossless and photometric == "RGB" and source_pi != "RGB":
        photometric = "YBR_RCT"
    attributes: dict[str, Any] = {"PhotometricInterpretation": photometric}
    if first.ndim == 3:
        attributes["SamplesPerPixel"] = first.shape[-1]
        planar = 0
        keeps_own = UNCOMPRESSED | {RLELossless}
        if source_planar is not None and target in keeps_own and syntax in keeps_own:
            planar = source_planar
        attributes["PlanarConfiguration"] = planar
    else:
        attributes["PlanarConfiguration"] = None  # Type 1C: present only with more samples
    if first.dtype.itemsize == 1 and bits_allocated != 8:
        attributes.update(BitsAllocated=8, BitsStored=8, HighBit=7)
    return attributes
