"""Reading instances, and writing them fast.

pydicom parses; we keep what it leaves raw as raw. Writing is ours: pydicom's writer costs
about 10 µs per element (4 ms for a 400-element header), most of the budget of an instance,
while copying the raw bytes of unchanged elements costs well under 1 µs. Elements that were
decoded and changed are encoded by pydicom's own element writer, so every VR is encoded as
pydicom encodes it. The file meta information is rebuilt from the dataset, never copied:
PS3.15 E.1.1 asks that it describe the de-identifying application.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterable, MutableSequence
from pathlib import Path
from typing import BinaryIO, cast

from pydicom import filereader as _filereader
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from dicomnode import __version__, limits
from dicomnode.errors import UnreadableInstanceError, UnsupportedInstanceError
from dicomnode.limits import TooLargeError

# What pydicom raises on data it cannot read: cut short, a tag where none can be, a length
# that does not fit its VR, a VR that does not exist, a character set that is a number.
READ_ERRORS = (
    EOFError,
    OSError,
    ValueError,
    KeyError,
    struct.error,
    NotImplementedError,
    BytesLengthException,
    TypeError,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "READ_ERRORS",
    "decoded_copy",
    "encode_chunks",
    "encode_instance",
    "encode_items",
    "header_of_data_set",
    "raw",
    "read_header",
    "read_instance",
    "vr_of",
]

# Our implementation class UID, under the UUID-derived root 2.25 (no registration needed).
IMPLEMENTATION_CLASS_UID = "2.25.207460873491830637215384624150728306465"
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__}"[:16]

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
_UNDEFINED = 0xFFFFFFFF
_PREAMBLE = b"\x00" * 128 + b"DICM"


class _Codec:
    """Byte layouts of one endianness."""

    def __init__(self, order: str) -> None:
        self.little = order == "<"
        self.tag_vr = struct.Struct(order + "HH2s").pack
        self.tag = struct.Struct(order + "HH").pack
        self.us = struct.Struct(order + "H").pack
        self.ul = struct.Struct(order + "I").pack
        self.item = self.tag(0xFFFE, 0xE000) + self.ul(_UNDEFINED)
        self.item_end = self.tag(0xFFFE, 0xE00D) + self.ul(0)
        self.seq_end = self.tag(0xFFFE, 0xE0DD) + self.ul(0)


class _Out:
    """An output buffer that copies small pieces and only references large values.

    Copying the pixel data into one buffer costs a fresh allocation and its page faults
    (about 1.5 ms for 512 KB here); handing the value itself to ``write`` costs nothing.
    """

    __slots__ = ("parts", "small")
    BIG = 32 * 1024

    def __init__(self) -> None:
        self.parts: list[bytes | bytearray] = []
        self.small = bytearray()

    def __iadd__(self, data: bytes | bytearray) -> _Out:
        if len(data) >= self.BIG:
            if self.small:
                self.parts.append(self.small)
                self.small = bytearray()
            self.parts.append(data)
        else:
            self.small += data
        return self

    def chunks(self) -> list[bytes | bytearray]:
        if self.small:
            self.parts.append(self.small)
            self.small = bytearray()
        return self.parts


_LE = _Codec("<")
_BE = _Codec(">")
_PACK_TAG_VR = _LE.tag_vr
_PACK_US = _LE.us
_PACK_UL = _LE.ul


def read_instance(
    source: str | Path | bytes | BinaryIO, *, max_bytes: int | None = None
) -> FileDataset:
    """Parse a DICOM Part 10 file (path, bytes or stream) with elements left raw.

    Nothing larger than ``max_bytes`` (default: the process's instance limit,
    ``node.max_instance_mb``) is read: a bigger file is refused from its size, and a
    deflated dataset is inflated by us, in bounded chunks, before pydicom sees it, so that a
    few megabytes that inflate to gigabytes cost nothing (``too-large``).

    Raises :class:`UnreadableInstanceError` for anything that is not a parseable DICOM file,
    :class:`UnsupportedInstanceError` for a DICOMDIR or an object without SOP Class and
    Instance UIDs, and :class:`~dicomnode.limits.TooLargeError` for one over the limit.
    """
    limit = max_bytes if max_bytes is not None else limits.instance_limit()
    size = _size_of(source)
    if size is not None and size > limit:
        raise _too_large(f"the file is {_mb(size)}", limit)
    try:
        if isinstance(source, str | Path):
            with open(source, "rb") as fp:
                ds = _parse(fp, limit)
        else:
            ds = _parse(io.BytesIO(source) if isinstance(source, bytes) else source, limit)
    except InvalidDicomError as exc:
        raise UnreadableInstanceError(f"not a DICOM file: {exc}") from None
    except MemoryError:
        raise limits.out_of_memory("reading the instance") from None
    except RecursionError:
        # pydicom parses sequences of undefined length as it reads them, recursively.
        raise UnreadableInstanceError(
            "sequences are nested too deeply to be read (thousands of levels); no real "
            "object needs that",
            reason="too-deep",
        ) from None
    except READ_ERRORS as exc:
        raise UnreadableInstanceError(
            f"cannot parse the DICOM data ({type(exc).__name__}): the file is truncated or "
            "malformed"
        ) from None
    _check_complete(ds)
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        raise UnreadableInstanceError("the file meta information has no Transfer Syntax UID")
    try:
        syntax = meta.TransferSyntaxUID
    except Exception:  # pydicom's own, for a VR or value it cannot decode
        syntax = None
    if not isinstance(syntax, str):  # (a UID is a str) a VR that made it a number, or bytes
        raise UnreadableInstanceError(
            "the file meta information's Transfer Syntax UID is not a UID; resend it from "
            "the source"
        )
    if not UID(syntax).is_transfer_syntax:
        # A private or damaged one: pydicom guessed an encoding to read the data set, and
        # the clean copy would be written under a syntax no receiver knows.
        raise UnsupportedInstanceError(
            "the file meta information's Transfer Syntax UID is not one DICOM defines, so the "
            "data set's encoding is a guess; resend it in a standard transfer syntax"
        )
    try:
        directory = meta.get("MediaStorageSOPClassUID") == "1.2.840.10008.1.3.10"
    except Exception:  # pydicom's own, for a VR or value it cannot decode
        raise UnreadableInstanceError(
            "the file meta information's Media Storage SOP Class UID cannot be decoded; "
            "resend it from the source"
        ) from None
    if directory:
        raise UnsupportedInstanceError("a DICOMDIR is a media directory, not an instance")
    for keyword, tag in (("SOPClassUID", 0x00080016), ("SOPInstanceUID", 0x00080018)):
        try:
            elem = decoded_copy(ds, tag)
            present = elem is not None and bool(elem.value)
        except Exception:  # a value pydicom cannot decode is as good as none here
            present = False
        if not present:
            raise UnsupportedInstanceError(
                f"the dataset has no {keyword}: it is not a composite instance",
                reason="not-an-instance",
            )
    return ds


def decoded_copy(ds: Dataset, tag: int) -> DataElement | None:
    """The element ``tag`` of ``ds`` decoded, leaving ``ds`` exactly as read (pydicom's
    ``ds[tag]`` stores what it decodes, at the VR the sender declared, and the scrubber checks
    declared VRs and value shapes on raw elements only). Raises what pydicom raises for a
    value it cannot decode."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        return convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)
    return elem


def _size_of(source: str | Path | bytes | BinaryIO) -> int | None:
    """The size of what is to be read, when it can be known without reading it."""
    if isinstance(source, bytes):
        return len(source)
    if isinstance(source, str | Path):
        try:
            return os.stat(source).st_size
        except OSError:
            return None  # open() will say what is wrong
    try:
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
    except (OSError, ValueError, AttributeError):
        return None
    return end - here


def _mb(size: int) -> str:
    return f"{size / limits.MB:,.1f} MB"


def _too_large(what: str, limit: int) -> TooLargeError:
    return TooLargeError(
        f"{what}; the limit is {_mb(limit)} (node.max_instance_mb). If the instance is "
        "genuine, raise node.max_instance_mb (and pipeline.worker_memory_mb with it), then "
        "'dicomnode retry --quarantine too-large'"
    )


def _parse(fp: BinaryIO, limit: int) -> FileDataset:
    """pydicom's reader, except that a deflated dataset is inflated here, with a limit."""
    start = fp.tell()
    preamble = read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        fp.seek(start)
        return read_partial(fp, stop_when=_Once())
    data = _inflate(fp, limit)
    buffer = DicomBytesIO(data)
    name = getattr(fp, "name", None)
    if isinstance(name, str):
        buffer.name = name
    dataset = read_dataset(
        cast(BinaryIO, buffer),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=_Once(),
    )
    ds = FileDataset(buffer, dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


class _Once:
    """Refuses an element that occurs twice in the data set as pydicom reads it (its
    ``stop_when``, called with each element's tag before the value is read; it never stops
    the reading). pydicom keeps the later of two elements with one tag, silently: found by
    mutating a test instance byte by byte, InstitutionName's tag turned into Manufacturer's
    put the hospital's name into Manufacturer, which the profile keeps. PS3.5 7.1: each
    element at most once; which value is the real one cannot be told."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._first: tuple[int, int] | None = None

    def __call__(self, tag: BaseTag, _vr: str | None, length: int) -> bool:
        seen = self._seen
        if not seen:
            # pydicom looks at the first element once more (with a length of 0) when the
            # data set is not encoded as the transfer syntax says: the same element.
            if self._first is None:
                self._first = (tag, length)
                return False
            if self._first != (tag, 0):
                seen.add(self._first[0])
        if tag in seen:
            raise UnreadableInstanceError(
                f"element {tag} occurs twice in the data set: which value is the real one "
                "cannot be told; resend it from the source, or report the sender's export "
                "to its vendor"
            )
        seen.add(tag)
        return False


_INFLATE_CHUNK = 1024 * 1024


def _inflate(fp: BinaryIO, limit: int) -> bytes:
    """The inflated dataset of a deflated file, refused unread when it exceeds ``limit``.

    A first pass inflates in 1 MB pieces and only counts, stopping as soon as the count
    passes the limit: a bomb costs a megabyte of memory and the time to inflate ``limit``
    bytes. Only a dataset within the limit is inflated again and kept.
    """
    start = fp.tell()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or fp.read(_INFLATE_CHUNK)
            inflated = len(inflater.decompress(data, _INFLATE_CHUNK))
            if not data and not inflated:
                break  # the file ended; zlib has nothing pending either
            total += inflated
            if total > limit:
                raise _too_large(
                    f"the deflated dataset inflates to more than {_mb(limit)} (it stops being "
                    "read there)",
                    limit,
                )
    except zlib.error:
        raise UnreadableInstanceError(
            "the deflated dataset is not a valid deflate stream; resend it from the source"
        ) from None
    if not inflater.eof:
        raise UnreadableInstanceError(
            "the deflated dataset ends before its deflate stream does; resend it from the source",
            reason="truncated",
        )
    fp.seek(start)
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read())


def _check_complete(ds: Dataset) -> None:
    """pydicom reads a value that declares more bytes than the file has left as whatever is
    left, and goes on; we refuse such a file. Any element, not only the last tag: found by
    mutating a test instance, a length past the end on an element that was not the last
    one took every later element (names, IDs, address) into a kept Manufacturer."""
    if not ds._dict:
        raise UnreadableInstanceError("the file holds no data elements")
    _check_held(ds, "the file is truncated")


def _check_held(ds: Dataset, what: str) -> None:
    """Every raw element of ``ds`` holds the bytes it declares (see :func:`_check_complete`)."""
    for elem in ds._dict.values():
        if type(elem) is not RawDataElement:
            continue
        held = len(elem.value or b"")
        if held != elem.length and elem.length != _UNDEFINED:
            raise UnreadableInstanceError(
                f"{what}: element {elem.tag} should hold {elem.length} bytes and holds "
                f"{held}; resend it from the source",
                reason="truncated",
            )


def _read_item(
    fp: BinaryIO,
    is_implicit_VR: bool,  # (pydicom's parameter names)
    is_little_endian: bool,
    encoding: str | MutableSequence[str],
    offset: int = 0,
) -> Dataset | None:
    """pydicom 3.0's ``read_sequence_item`` (pinned in tests/test_declared_lengths.py), with
    each item checked as the data set is: an element that occurs twice in one item
    (:class:`_Once`), a value longer than what is left of its item, or one shorter than it
    declares, refuses the instance. pydicom keeps the later of two elements in an item, and
    reads an element that runs past its item's end into the next item, silently.

    Installed as ``pydicom.filereader.read_sequence_item`` at import, so that every sequence
    is read so: those pydicom reads at once (undefined length), and those decoded later (the
    scrubber's items, pydicom's ``convert_SQ``), all through ``read_sequence``."""
    item_tell = fp.tell() + offset
    header = fp.read(8)
    if len(header) < 8:
        raise OSError(f"No tag to read at file position {fp.tell() + offset:X}")
    group, element, length = struct.unpack("<HHL" if is_little_endian else ">HHL", header)
    if (group, element) == (0xFFFE, 0xE0DD):
        return None  # the sequence delimiter: no more items
    start = fp.tell()
    defined = length != _UNDEFINED
    ds = read_dataset(
        fp,
        is_implicit_VR,
        is_little_endian,
        length if defined else None,
        stop_when=_Once(),
        parent_encoding=encoding,
        at_top_level=False,
    )
    ds.is_undefined_length_sequence_item = not defined
    ds.seq_item_tell = item_tell
    if defined and fp.tell() > start + length:
        raise UnreadableInstanceError(
            f"an element of the sequence item at byte {item_tell} runs past the end of the "
            f"item ({length} bytes): the item's length or an element's is wrong; resend it "
            "from the source",
            reason="truncated",
        )
    _check_held(ds, "a sequence item is truncated")
    return ds


#: pydicom's own, which :func:`_read_item` stands in for (its source is pinned by a test).
PYDICOM_READ_SEQUENCE_ITEM = _filereader.read_sequence_item


def install_checked_items() -> None:
    """Read every sequence item with :func:`_read_item` (this process, every read)."""
    assert callable(getattr(_filereader, "read_sequence_item", None))
    _filereader.read_sequence_item = _read_item


def read_header(
    path: str | Path, keywords: Iterable[str], *, max_bytes: int
) -> dict[str, tuple[str, ...]] | None:
    """The values of ``keywords`` (top-level attributes) in a Part 10 file, as conditions see
    them (``dicomnode.conditions.header_values``), for a decision at receive time.

    At most ``max_bytes`` of the data set are read (inflated, when deflated), and parsing stops
    at the first attribute after the last one asked for: pixel data is never read for a
    header attribute. None when the values cannot be known: not DICOM, malformed, or the data
    set goes on past ``max_bytes`` before reaching that point.
    """
    keywords = list(keywords)
    if not any(tag_for_keyword(k) is not None for k in keywords):
        return {}
    try:
        with open(path, "rb") as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            syntax = UID(str(meta.get("TransferSyntaxUID", "")))
            if syntax == DeflatedExplicitVRLittleEndian:
                data, whole = _inflate_prefix(fp, max_bytes)
            elif syntax.is_transfer_syntax:
                data = fp.read(max_bytes + 1)
                whole = len(data) <= max_bytes
                data = data[:max_bytes]
            else:
                return None
    except Exception:  # whatever a sender wrote: the decision is "cannot tell", never an error
        return None
    return _header_values(data, whole, syntax, keywords)


def header_of_data_set(
    head: bytes, whole: bool, syntax: str, keywords: Iterable[str], *, max_bytes: int
) -> dict[str, tuple[str, ...]] | None:
    """:func:`read_header` for the first bytes of a data set as received (``head``, in
    transfer syntax ``syntax``: deflated when that is deflated; ``whole`` when it is all of
    the data set), with no file to open: the listener keeps them as they arrive."""
    uid = UID(syntax)
    try:
        if uid == DeflatedExplicitVRLittleEndian:
            data, inflated_whole = _inflate_prefix(io.BytesIO(head), max_bytes)
            whole = whole and inflated_whole
        elif uid.is_transfer_syntax:
            data = head[:max_bytes]
            whole = whole and len(head) <= max_bytes
        else:
            return None
    except Exception:  # a deflate stream that is not one: "cannot tell"
        return None
    return _header_values(data, whole, uid, keywords)


def _header_values(
    data: bytes, whole: bool, syntax: UID, keywords: Iterable[str]
) -> dict[str, tuple[str, ...]] | None:
    from dicomnode.conditions import header_values

    wanted = list(keywords)
    tags = sorted(t for t in (tag_for_keyword(k) for k in wanted) if t is not None)
    if not tags:
        return {}
    last = tags[-1]
    passed = False

    def stop(tag: int, _vr: str | None, _length: int) -> bool:
        nonlocal passed
        passed = tag > last
        return passed

    try:
        ds = read_dataset(
            cast(BinaryIO, DicomBytesIO(data)),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=stop,
            specific_tags=tags,
        )
    except Exception:  # whatever a sender wrote: the decision is "cannot tell", never an error
        return None
    if not (passed or whole):
        return None
    return header_values(ds, wanted)


def _inflate_prefix(fp: BinaryIO, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` inflated bytes of a deflated data set, and whether that was all."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while len(out) <= limit and not inflater.eof:
        chunk = inflater.unconsumed_tail or fp.read(64 * 1024)
        if not chunk:
            break
        out += inflater.decompress(chunk, limit + 1 - len(out))
    return bytes(out[:limit]), inflater.eof and len(out) <= limit


def vr_of(elem: DataElement | RawDataElement) -> str:
    """The VR of an element, resolving implicit-VR raw elements through the dictionary."""
    vr = elem.VR
    if vr and vr != "UN" and len(vr) == 2:
        return str(vr)
    tag = elem.tag
    if tag >> 16 & 1:
        return str(vr or "UN")
    try:
        known = str(dictionary_VR(tag))
    except KeyError:
        return str(vr or "UN")
    if len(known) == 2:
        return known
    if known == "US or SS or OW" or known == "US or SS":
        return "US"
    return "OW" if "OW" in known else "OB"


def encode_instance(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """Serialise ``ds`` as a DICOM Part 10 file with fresh file meta information.

    The dataset is written in ``transfer_syntax`` (default: the one it was read in), whose
    byte order must be the one it was read in: raw elements are copied, not converted. The
    128-byte preamble is zeroed.
    """
    return b"".join(encode_chunks(ds, transfer_syntax))


def encode_chunks(ds: Dataset, transfer_syntax: str | None = None) -> list[bytes | bytearray]:
    """:func:`encode_instance` as a list of buffers, for ``writev`` without a joining copy."""
    meta = getattr(ds, "file_meta", None)
    syntax = transfer_syntax or (meta.TransferSyntaxUID if meta is not None else None)
    if syntax is None:
        raise UnsupportedInstanceError("no transfer syntax to write the dataset in")
    implicit = syntax == ImplicitVRLittleEndian
    codec = _BE if syntax == ExplicitVRBigEndian else _LE
    out = _Out()
    out += _PREAMBLE
    out += _file_meta(ds, str(syntax))
    try:
        if syntax == DeflatedExplicitVRLittleEndian:
            body = _Out()
            _encode_dataset(ds, body, implicit, codec)
            packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            for chunk in body.chunks():
                out += packer.compress(chunk)
            out += packer.flush()
        else:
            _encode_dataset(ds, out, implicit, codec)
    except MemoryError:
        raise limits.out_of_memory("writing the clean copy") from None
    return out.chunks()


def _file_meta(ds: Dataset, syntax: str) -> bytes:
    def text(tag: int, vr: str, value: str) -> bytes:
        data = value.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        return _PACK_TAG_VR(0x0002, tag, vr.encode()) + _PACK_US(len(data)) + data

    elements = [
        _PACK_TAG_VR(0x0002, 0x0001, b"OB") + b"\x00\x00" + _PACK_UL(2) + b"\x00\x01",
        text(0x0002, "UI", str(ds.SOPClassUID)),
        text(0x0003, "UI", str(ds.SOPInstanceUID)),
        text(0x0010, "UI", syntax),
        text(0x0012, "UI", IMPLEMENTATION_CLASS_UID),
        text(0x0013, "SH", IMPLEMENTATION_VERSION_NAME),
    ]
    group = b"".join(elements)
    return _PACK_TAG_VR(0x0002, 0x0000, b"UL") + _PACK_US(4) + _PACK_UL(len(group)) + group


def _encode_dataset(ds: Dataset, out: _Out, implicit: bool, codec: _Codec) -> None:
    elements = ds._dict
    for tag in sorted(elements, key=int):
        elem = elements[tag]
        if isinstance(elem, RawDataElement):
            _encode_raw(elem, out, implicit, codec)
        elif elem.VR == "SQ":
            _header(out, tag, "SQ", _UNDEFINED, implicit, codec)
            for item in elem.value:
                out += codec.item
                _encode_dataset(item, out, implicit, codec)
                out += codec.item_end
            out += codec.seq_end
        elif _is_bulk(elem):
            # A large binary value set by a stage (re-encoded Pixel Data): referenced, not
            # copied twice through pydicom's writer; it is already in the byte order written.
            _header(out, tag, elem.VR, len(elem.value), implicit, codec)
            out += elem.value
        else:
            _encode_element(ds, elem, out, implicit, codec)


def _is_bulk(elem: DataElement) -> bool:
    value = elem.value
    return (
        elem.VR in ("OB", "OW", "UN")
        and isinstance(value, bytes)
        and len(value) >= _Out.BIG
        and len(value) % 2 == 0
        and not elem.is_undefined_length
    )


def encode_items(
    items: list[Dataset] | tuple[Dataset, ...], implicit: bool, little: bool = True
) -> bytes:
    """The value of a sequence element: its items, each of undefined length."""
    codec = _LE if little else _BE
    out = _Out()
    for item in items:
        out += codec.item
        _encode_dataset(item, out, implicit, codec)
        out += codec.item_end
    return b"".join(out.chunks())


def _header(out: _Out, tag: int, vr: str, length: int, implicit: bool, codec: _Codec) -> None:
    if implicit:
        out += codec.tag(tag >> 16, tag & 0xFFFF) + codec.ul(length)
    elif vr in _LONG_VRS:
        out += codec.tag_vr(tag >> 16, tag & 0xFFFF, vr.encode()) + b"\x00\x00" + codec.ul(length)
    elif length > 0xFFFF:
        # Too long for a 16-bit length: PS3.5 6.2.2 says encode it as UN.
        out += codec.tag_vr(tag >> 16, tag & 0xFFFF, b"UN") + b"\x00\x00" + codec.ul(length)
    else:
        out += codec.tag_vr(tag >> 16, tag & 0xFFFF, vr.encode()) + codec.us(length)


def _encode_raw(elem: RawDataElement, out: _Out, implicit: bool, codec: _Codec) -> None:
    value = elem.value or b""
    if elem.is_little_endian != codec.little:
        raise UnsupportedInstanceError(
            "the dataset mixes byte orders; it cannot be written without conversion",
            reason="byte-order",
        )
    vr = elem.VR if elem.VR and len(elem.VR) == 2 else (None if implicit else vr_of(elem))
    if elem.length == _UNDEFINED:
        _header(out, elem.tag, vr or "UN", _UNDEFINED, implicit, codec)
        out += value
        out += codec.seq_end
        return
    _header(out, elem.tag, vr or "UN", len(value), implicit, codec)
    out += value


def _encode_element(
    ds: Dataset, elem: DataElement, out: _Out, implicit: bool, codec: _Codec
) -> None:
    buffer = DicomBytesIO()
    buffer.is_little_endian = codec.little
    buffer.is_implicit_VR = implicit
    encodings = ds._character_set if hasattr(ds, "_character_set") else None
    write_data_element(buffer, elem, encodings)
    out += buffer.getvalue()


def raw(
    tag: int, vr: str, value: bytes, *, implicit: bool = False, little: bool = True
) -> RawDataElement:
    """A raw element holding already-encoded ``value``."""
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, little, True, False)


# Every sequence item this process reads is checked (see _read_item): the reader's callers are
# the workers, the CLI and the review page, all of them reading what senders sent.
install_checked_items()
