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

import re
import struct
from dataclasses import dataclass

from rle.rle import decode_segment  # pylibjpeg-rle (Rust)

__all__ = [
    "Declared",
    "StreamError",
    "declared_j2k",
    "declared_jpeg",
    "j2k_image_only",
    "jpeg_image_only",
    "rle_image_only",
    "rle_segments",
]

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


# -- what a codestream carries besides the image -------------------------------------------

_APP = range(0xE0, 0xF0)
# The segments that say how to decode a frame: SOFn, DHT, DAC (0xC0-0xCF but JPG, 0xC8), SOS,
# DQT, DNL, DRI, DHP, EXP (0xDA-0xDF), and JPEG-LS's SOF55 and LSE (T.87 C.2).
_DECODING = frozenset({*range(0xC0, 0xD0), *range(0xDA, 0xE0), 0xF7, 0xF8}) - {0xC8}
_COM = 0xFE
_EOI = 0xD9
_SOS = 0xDA


def jpeg_image_only(stream: bytes | memoryview) -> tuple[bytes, list[str]]:
    """A JPEG (T.81) or JPEG-LS (T.87) frame without what is not image, and what that was:
    application segments (EXIF, with its dates, camera and GPS place; XMP; IPTC captions; a
    JFIF thumbnail, a second picture nobody looks at), comments, JPGn and reserved segments,
    bytes after the end of image.
    Kept: a JFIF APP0 with no thumbnail, Adobe's APP14 and JPEG-LS's "mrfx" APP8 (they say
    how the colours were transformed). A decoder skips the rest, and so did the pixel stage: a
    frame it left unchanged went out with them (a name in a comment). Nothing that decodes
    moves: the segments dropped are self-contained, and no JPEG segment points at another.

    Walks the segments by their lengths and each scan's entropy-coded data to the marker
    that ends it (T.81 B.1.1.5: 0xFF00 and RSTn inside a scan; T.87 A.1: in JPEG-LS a 0xFF
    is followed by a bit of 0, so a byte under 0x80). Raises :class:`StreamError` on a stream
    that cannot be walked.
    """
    data = bytes(stream)
    if data[:2] != b"\xff\xd8":
        raise StreamError("the frame does not start with a JPEG SOI marker")
    removed: list[str] = []
    kept = [data[:2]]
    position, end, lossless_ls = 2, len(data), False
    while True:
        if position >= end or data[position] != 0xFF:
            raise StreamError(f"no JPEG marker where one is expected (byte {position})")
        start = position
        while position < end and data[position] == 0xFF:
            position += 1
        if position >= end:
            raise StreamError("the JPEG stream ends without an EOI marker")
        marker = data[position]
        position += 1
        if marker == _EOI:
            kept.append(b"\xff\xd9")
            if end - position > 1:  # one byte: the pad to an even length (PS3.5 A.4)
                removed.append(f"{end - position} bytes after the end of image")
            return b"".join(kept), removed
        if marker in _STANDALONE:
            kept.append(data[start:position])
            continue
        if position + 2 > end:
            raise StreamError("a JPEG marker segment runs past the end of the frame")
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2 or position + length > end:
            raise StreamError("a JPEG marker segment runs past the end of the frame")
        body = data[position + 2 : position + length]
        position += length
        if marker == _SOF55:
            lossless_ls = True
        if marker == _COM:
            removed.append("a comment")
            continue
        if marker in _APP and not _image_app(marker, body):
            removed.append(f"an APP{marker - 0xE0} segment")
            continue
        if marker not in _APP and marker not in _DECODING:
            # JPGn and reserved markers (T.81 B.1.1.3): a decoder skips them as it skips
            # a comment, and they can hold as much.
            removed.append(f"a reserved segment (0xFF{marker:02X})")
            continue
        if marker == _SOS:
            position = _scan_end(data, position, lossless_ls)
        kept.append(data[start:position])


def _image_app(marker: int, body: bytes) -> bool:
    """An application segment that says how to decode the image, and nothing else (each is a
    few fixed bytes: no room for more)."""
    if marker == 0xE0 and body[:5] == b"JFIF\x00":
        return len(body) == 14 and body[12] == 0 and body[13] == 0  # no thumbnail
    if marker == 0xEE and body[:5] == b"Adobe":
        return len(body) <= 12  # version, flags, colour transform
    return marker == 0xE8 and body[:4] == b"mrfx" and len(body) == 5  # JPEG-LS colour transform


# The marker that ends a scan's entropy-coded data: an 0xFF followed by neither a stuffed 0x00
# nor a restart marker (T.81 B.1.1.5; fill bytes 0xFF are skipped by the caller), or, in
# JPEG-LS, by a byte with its high bit set (T.87 A.1). Searched for by the regular expression
# engine: a scan made of 0xFF00 pairs costs a pass over it, not a Python step per pair.
_SCAN_END = re.compile(rb"\xff(?=[\x01-\xcf\xd8-\xfe])")
_SCAN_END_LS = re.compile(rb"\xff(?=[\x80-\xfe])")


def _scan_end(data: bytes, position: int, lossless_ls: bool) -> int:
    """The offset of the marker that ends the entropy-coded data starting at ``position``."""
    found = (_SCAN_END_LS if lossless_ls else _SCAN_END).search(data, position)
    if found is None:
        raise StreamError("a JPEG scan runs to the end of the frame without EOI")
    return found.start()


# Main-header segments that say how to decode a JPEG 2000 frame: Part 1's (T.800 A.2: CAP of
# Part 15 (HTJ2K), SIZ, COD, COC, TLM, PLM, CPF, QCD, QCC, RGN, POC, PPM, CRG) and Part 2's
# multi-component and extension segments (0xFF70-0xFF79: DCO, VMS, DFS, ADS, MCT, MCC, NLT,
# MCO, CBD, ATK).
_J2K_DECODING = frozenset({0x50, 0x51, 0x52, 0x53, 0x55, 0x57, 0x59, *range(0x5C, 0x61), 0x63})
_J2K_DECODING |= frozenset(range(0x70, 0x7A))
# ... and of a tile-part header: COD, COC, PLT, QCD, QCC, RGN, POC, PPT (T.800 A.4), Part 2's.
_J2K_TILE_DECODING = frozenset({0x52, 0x53, 0x58, *range(0x5C, 0x60), 0x61, *range(0x70, 0x7A)})


def j2k_image_only(stream: bytes | memoryview) -> tuple[bytes | None, list[str]]:
    """A JPEG 2000 frame without what is not image, and what that was: comment segments
    (COM) and reserved segments of the main header, bytes after the end of codestream. None
    instead of the frame when what is there cannot be cut out by itself: a JP2 file's boxes
    around the codestream (XML, UUID; its colour box may matter to a decoder) or a comment
    in a tile-part header (cutting it would change the tile-part's length and any TLM
    index): the caller re-encodes the image instead. Main-header segments are
    self-contained; tile-parts are found by their own lengths (Psot, T.800 A.4.2), which do
    not change.

    Raises :class:`StreamError` on a stream that cannot be walked.
    """
    data = bytes(stream)
    removed: list[str] = []
    start = _codestream_start(memoryview(data))
    whole = True
    if start:
        removed.append("a JP2 file wrapper")
        whole = False
    if data[start : start + 2] != b"\xff\x4f":
        raise StreamError("the frame does not start with a JPEG 2000 SOC marker")
    kept = [data[start : start + 2]]
    position, end = start + 2, len(data)
    while True:
        if position + 2 > end or data[position] != 0xFF:
            raise StreamError(f"no JPEG 2000 marker where one is expected (byte {position})")
        marker = data[position + 1]
        if marker == 0xD9:  # EOC
            kept.append(b"\xff\xd9")
            if end - position - 2 > 1:
                removed.append(f"{end - position - 2} bytes after the end of the codestream")
            return (b"".join(kept) if whole else None), removed
        if position + 4 > end:
            raise StreamError("a JPEG 2000 marker segment runs past the end of the frame")
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0x90:  # SOT: the tile-part's header, then its data, Psot bytes in all
            if length != 10 or position + 12 > end:
                raise StreamError("a JPEG 2000 SOT segment is malformed")
            psot = int.from_bytes(data[position + 6 : position + 10], "big")
            if psot == 0:  # the last tile-part: it runs to the EOC that ends the frame
                tile_end = data.rfind(b"\xff\xd9", max(position, end - 3))
                if tile_end < 0:
                    raise StreamError("the last JPEG 2000 tile-part has no EOC after it")
            else:
                tile_end = position + psot
            if tile_end > end or (psot and psot < 14):
                raise StreamError("a JPEG 2000 tile-part runs past the end of the frame")
            comments = _tile_header_comments(data, position + 12, tile_end)
            if comments:
                removed += comments
                whole = False
            kept.append(data[position:tile_end])
            position = tile_end
            continue
        if length < 2 or position + 2 + length > end:
            raise StreamError("a JPEG 2000 marker segment runs past the end of the frame")
        if marker == 0x64:
            removed.append("a comment")
        elif marker not in _J2K_DECODING:
            removed.append(f"a reserved segment (0xFF{marker:02X})")  # a decoder skips it
        else:
            kept.append(data[position : position + 2 + length])
        position += 2 + length


def _tile_header_comments(data: bytes, position: int, end: int) -> list[str]:
    """COM and reserved segments of a tile-part header (from after SOT to SOD)."""
    found = []
    while position + 2 <= end and data[position] == 0xFF and data[position + 1] != 0x93:
        if position + 4 > end:
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        marker = data[position + 1]
        if marker == 0x64:
            found.append("a comment")
        elif marker not in _J2K_TILE_DECODING:
            found.append(f"a reserved segment (0xFF{marker:02X})")
        if length < 2:
            break
        position += 2 + length
    return found


_RLE_OFFSETS = struct.Struct("<15I")


def rle_image_only(stream: bytes | memoryview, length: int) -> tuple[bytes, list[str]]:
    """An RLE frame (PS3.5 G.3, G.4) without what is not image, and what that was: each
    segment cut where its ``length`` bytes (rows x columns) are decoded, so that bytes after
    them, the rest of a literal run longer than the rows need, bytes between the header and
    the first segment, and offsets in the header's unused slots are gone. Decoders stop at
    ``length`` (pydicom's with a warning) and show none of it, and neither did the pixel
    stage: a frame it left unchanged went out with them. One pad byte a segment is allowed;
    the decoded image does not change.

    Walks each segment's runs (PackBits: a control byte n < 128 copies n + 1 bytes, n > 128
    repeats the next byte 257 - n times, 128 is nothing). Raises :class:`StreamError` on a
    frame that cannot be walked: offsets out of order or past its end, a segment that ends
    before its rows do.
    """
    data = bytes(stream)
    count = rle_segments(data)
    offsets = _RLE_OFFSETS.unpack_from(data, 4)
    used = offsets[:count]
    ends = (*used[1:], len(data))
    if used[0] < 64 or any(end <= start for start, end in zip(used, ends, strict=True)):
        raise StreamError("the RLE header's segment offsets are out of order or past the frame")
    removed: list[str] = []
    if any(offsets[count:]):
        removed.append("offsets in the RLE header's unused slots")
    if used[0] > 64:
        removed.append(f"{used[0] - 64} bytes between the RLE header and its first segment")
    segments = []
    # A segment holds at most its rows and a control byte per 128 of them; a longer one holds
    # more, and is walked without being decoded whole (a repeat run decodes 2 bytes to 128: a
    # long tail of them would have the decoder allocate 64 times its size).
    most = length + length // 128 + 2
    for start, end in zip(used, ends, strict=True):
        if end - start <= most and _decodes_to(data[start:end], length):
            segments.append(data[start:end])  # as it is: a pad after a control byte decodes
            continue
        last, needed = _last_run(data, start, end, length)
        control = data[last]
        if control < 128:  # a literal run: only the bytes the rows need
            tail = bytes([needed - 1]) + data[last + 1 : last + 1 + needed]
            if needed < control + 1:
                removed.append("bytes of a literal run past an RLE segment's rows")
        else:  # a repeat run: its count cut to the rows (it carries one byte either way)
            value = data[last + 1 : last + 2]
            tail = bytes([257 - needed]) + value if needed > 1 else b"\x00" + value
        segment = data[start:last] + tail
        size = last + (2 if control >= 128 else control + 2)
        extra = end - size
        if extra > 1:  # one: a pad to even length (G.3.1), or the fragment's (PS3.5 A.4)
            removed.append(f"{extra} bytes after an RLE segment's rows")
        segments.append(segment + b"\x00" * (len(segment) % 2))
    if not removed:
        return data, []
    places, position = [], 64
    for segment in segments:
        places.append(position)
        position += len(segment)
    header = struct.pack("<I", count) + _RLE_OFFSETS.pack(*places, *[0] * (15 - count))
    return header + b"".join(segments), removed


def _decodes_to(segment: bytes, length: int) -> bool:
    """Does the whole segment decode to ``length`` bytes, neither more nor less? Then it holds
    nothing beyond its rows but what decodes to nothing (no-operation bytes, a stray control
    byte at its end). pylibjpeg-rle's decoder (Rust, ~0.2 ms a 512 x 512 CT frame) decodes
    to the segment's end; the walk in Python (:func:`_last_run`, ~4 ms) is for the frames
    that fail this."""
    try:
        return len(decode_segment(segment)) == length
    except BaseException as exc:  # a run cut short; pyo3 panics are BaseExceptions
        if isinstance(exc, Exception) or type(exc).__module__ == "pyo3_runtime":
            return False
        raise


def _last_run(data: bytes, position: int, end: int, length: int) -> tuple[int, int]:
    """The offset of the run of an RLE segment (from ``position`` to ``end``) that completes
    its ``length`` bytes, and how many of its bytes they take."""
    out = 0
    while position < end:
        control = data[position]
        if control == 128:  # no operation
            position += 1
            continue
        take, size = (control + 1, control + 2) if control < 128 else (257 - control, 2)
        if position + size > end:
            break
        if out + take >= length:
            return position, length - out
        out += take
        position += size
    raise StreamError("an RLE segment ends before its rows do")
