"""What a compressed frame says about itself, read from its first bytes without decoding it.

A decoder allocates what the codestream declares, not what the DICOM header says: a 1 KB JPEG
whose frame header claims 60000 x 60000 makes libjpeg ask for gigabytes. So before a frame is
handed to a decoder, its own header is read here (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, the
RLE segment table) and compared with the DICOM header by the caller. Reading these headers
costs microseconds: each is a few bytes, found by walking marker segments or boxes by length.

References: ITU-T T.81 B.2 (JPEG markers and the frame header), ITU-T T.87 / ISO 14495-1 5.1
(JPEG-LS SOF55), ITU-T T.800 A.5.1 (JPEG 2000 SIZ) and I.4 (JP2 boxes), PS3.5 G.4 (RLE header).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Declared", "StreamError", "declared_j2k", "declared_jpeg", "rle_segments"]

# SOF markers of T.81 (C4 DHT, C8 JPG and CC DAC are not frame headers) and JPEG-LS SOF55.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOF55 = 0xF7
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_MAX_J2K_TILES = 65535  # Isot is 16 bits (T.800 A.4.2): more tiles cannot be addressed
_MAX_J2K_COMPONENTS = 16384  # Csiz (T.800 A.5.1)


class StreamError(ValueError):
    """The frame's own header is missing or nonsense; the message says which part."""


@dataclass(frozen=True)
class Declared:
    """Dimensions a codestream declares for the image it decodes to."""

    rows: int
    columns: int
    components: int
    precision: int
    where: str  # "JPEG SOF", "JPEG-LS SOF55", "JPEG 2000 SIZ": for messages


def declared_jpeg(stream: bytes | memoryview) -> Declared:
    """The frame header of a JPEG (T.81) or JPEG-LS (T.87) stream.

    Walks the marker segments from SOI to the first SOF by their lengths; raises
    :class:`StreamError` when there is no SOI, a segment runs past the end, a scan starts
    before any frame header, or the frame header declares zero columns, zero components, or
    a height deferred to a DNL marker (which would let the decoder grow the image as it goes).
    """
    data = memoryview(stream)
    if bytes(data[:2]) != b"\xff\xd8":
        raise StreamError("the frame does not start with a JPEG SOI marker")
    position = 2
    end = len(data)
    while position < end:
        if data[position] != 0xFF:
            raise StreamError(f"no JPEG marker where one is expected (byte {position})")
        while position < end and data[position] == 0xFF:  # fill bytes (T.81 B.1.1.2)
            position += 1
        if position >= end:
            break
        marker = data[position]
        position += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            what = {0xD8: "a second SOI", 0xD9: "EOI", 0xDA: "a scan (SOS)"}[marker]
            raise StreamError(f"the JPEG stream reaches {what} before any frame header")
        if position + 2 > end:
            break
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2 or position + length > end:
            raise StreamError("a JPEG marker segment runs past the end of the frame")
        if marker in _SOF or marker == _SOF55:
            if length < 8:
                raise StreamError("the JPEG frame header is too short")
            precision = data[position + 2]
            rows, columns = struct.unpack(">HH", data[position + 3 : position + 7])
            components = data[position + 7]
            where = "JPEG-LS SOF55" if marker == _SOF55 else "JPEG SOF"
            if rows == 0:
                raise StreamError(
                    f"the {where} defers the image height to a DNL marker, which is not accepted"
                )
            if columns == 0 or components == 0 or precision == 0:
                raise StreamError(f"the {where} declares zero columns, components or precision")
            return Declared(rows, columns, components, precision, where)
        position += length
    raise StreamError("the JPEG stream ends before any frame header")


def declared_j2k(stream: bytes | memoryview) -> Declared:
    """The image size of a JPEG 2000 codestream (SIZ), bare or inside a JP2 file.

    Raises :class:`StreamError` when SOC and SIZ are not where T.800 puts them, when the
    image or a tile is empty, when the tiling needs more tiles than a codestream can address
    (a decoder would allocate per tile), or when a component is subsampled by 0.
    """
    data = memoryview(stream)
    start = _codestream_start(data)
    if bytes(data[start : start + 4]) != _J2K_SOC_SIZ:
        raise StreamError("the frame does not start with JPEG 2000 SOC and SIZ markers")
    body = start + 4
    if body + 38 > len(data):
        raise StreamError("the JPEG 2000 SIZ segment is truncated")
    lsiz, _rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack(
        ">HHIIIIIIIIH", data[body : body + 38]
    )
    if not 1 <= csiz <= _MAX_J2K_COMPONENTS or lsiz != 38 + 3 * csiz:
        raise StreamError("the JPEG 2000 SIZ segment has an impossible component count")
    if body + lsiz > len(data):
        raise StreamError("the JPEG 2000 SIZ segment is truncated")
    if xsiz <= xo or ysiz <= yo or xt == 0 or yt == 0 or xto > xo or yto > yo:
        raise StreamError("the JPEG 2000 SIZ segment declares an empty image or tile")
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    if tiles > _MAX_J2K_TILES:
        raise StreamError(
            f"the JPEG 2000 SIZ segment declares {tiles} tiles; a codestream can address "
            f"{_MAX_J2K_TILES}"
        )
    precision = 0
    for index in range(csiz):
        ssiz, xr, yr = data[body + 38 + 3 * index : body + 41 + 3 * index]
        if xr == 0 or yr == 0:
            raise StreamError("the JPEG 2000 SIZ segment subsamples a component by 0")
        precision = max(precision, (ssiz & 0x7F) + 1)
    return Declared(ysiz - yo, xsiz - xo, csiz, precision, "JPEG 2000 SIZ")


def _codestream_start(data: memoryview) -> int:
    """Offset of the codestream: 0 for a bare one, the ``jp2c`` box's content in a JP2 file."""
    if bytes(data[:12]) != _JP2_SIGNATURE:
        return 0
    position = 0
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        header = 8
        if length == 1:
            if position + 16 > len(data):
                break
            length = int.from_bytes(data[position + 8 : position + 16], "big")
            header = 16
        if kind == b"jp2c":
            return position + header
        if length == 0 or length < header:
            break  # a box to the end of the file, or a broken length: no codestream box
        position += length
    raise StreamError("the JP2 file holds no codestream box")


def rle_segments(stream: bytes | memoryview) -> int:
    """The number of segments the RLE header of a frame declares (PS3.5 G.4: 1 to 15)."""
    data = memoryview(stream)
    if len(data) < 64:
        raise StreamError("the RLE frame is shorter than its 64-byte header")
    count = int.from_bytes(data[:4], "little")
    if not 1 <= count <= 15:
        raise StreamError(f"the RLE header declares {count} segments; PS3.5 G.4 allows 1 to 15")
    return count
