"""Frames in and out: decode every frame in its native values, show it to OCR, write it back.

Decoding goes through pydicom's pixel handlers (pylibjpeg and its plugins, pyjpegls) for every
transfer syntax the node accepts. Values stay native (bit depth, signedness, photometric
interpretation) where that can be written back exactly; YBR_FULL_422, YBR_RCT, YBR_ICT and
every lossy source are decoded to RGB.

Writing back happens only when a frame changed; otherwise the Pixel Data element is left as
it was, byte for byte. Lossless sources are re-encoded in their own transfer syntax when an
encoder exists (RLE, JPEG-LS, JPEG 2000) and takes the image (pydicom's RLE encoder stops at 16
bits); JPEG Lossless (process 14), which no installed encoder writes, images the encoder
refuses, and every lossy source are written uncompressed in Explicit VR Little Endian: no second
generation of loss, LossyImageCompression stays "01" where it was.

Photometric Interpretation and Planar Configuration follow PS3.5 8.2 for the syntax written:
JPEG 2000 RGB frames are written YBR_RCT with the reversible colour transform (8.2.4: the PI
names the transform in the codestream; the US, VL and ophthalmic IODs accept nothing else),
unless the source itself was RGB, which is written back without the transform; JPEG-LS and
JPEG 2000 take Planar Configuration 0 (8.2.3, 8.2.4); RLE and native data keep the source's
value (G.2 note 2: free unless the IOD constrains it, as US does for YBR_FULL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import (  # type: ignore[attr-defined]
    apply_color_lut,
    convert_color_space,
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

from dicomnode.errors import InstanceError

__all__ = ["Frames", "decode", "display", "encode", "fill_value"]

log = logging.getLogger(__name__)

UNCOMPRESSED = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
}
REENCODABLE = {RLELossless, JPEGLSLossless, JPEG2000Lossless}
NATIVE_PI = {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL"}


class PixelDecodeError(InstanceError):
    reason = "pixel-decode-failed"


@dataclass
class Frames:
    """The decoded frames of one instance, and how to read them."""

    arrays: list[np.ndarray]
    photometric: str  # of the arrays, which may differ from the dataset's
    syntax: UID
    lossy: bool


def decode(ds: Dataset) -> Frames:
    """Every frame of ``ds``; raises PixelDecodeError when any frame cannot be decoded."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    lossy = syntax not in UNCOMPRESSED and not _is_lossless(syntax)
    raw = photometric in NATIVE_PI and not lossy
    try:
        arrays = [np.array(frame) for frame in iter_pixels(ds, raw=raw)]
    except Exception as exc:
        raise PixelDecodeError(
            f"cannot decode the pixel data ({syntax.name}, {photometric}): "
            f"{type(exc).__name__}; the data may be corrupt or use an option no installed "
            "decoder supports (pylibjpeg, pyjpegls; python-gdcm adds more)"
        ) from None
    if not raw and arrays and arrays[0].ndim == 3:
        photometric = "RGB"
    elif photometric == "YBR_FULL_422":
        photometric = "YBR_FULL"
    return Frames(arrays, photometric, syntax, lossy)


def _is_lossless(syntax: UID) -> bool:
    return syntax in REENCODABLE or syntax in (
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, process 14
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    )


def display(frame: np.ndarray, photometric: str, ds: Dataset) -> np.ndarray:
    """An 8-bit RGB picture of a frame, as a viewer would show it, for OCR."""
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(frame, ds), dtype=np.float32)
        return _to_uint8(rgb)
    if photometric == "YBR_FULL":
        frame = convert_color_space(frame, "YBR_FULL", "RGB")
    picture = frame if frame.dtype == np.uint8 else _to_uint8(frame.astype(np.float32))
    if photometric == "MONOCHROME1":
        picture = 255 - picture
    if picture.ndim == 2:
        picture = np.repeat(picture[:, :, None], 3, axis=2)
    return np.ascontiguousarray(picture)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return ((values - low) * (255.0 / (high - low))).astype(np.uint8)


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
    return np.array(frame.min(), frame.dtype)


def _palette_size(ds: Dataset) -> int:
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor", [256, 0, 8])
    return int(descriptor[0]) or 65536


def encode(ds: Dataset, frames: Frames) -> str:
    """Write changed frames back into ``ds``; returns what was done, for the record."""
    stack = np.stack(frames.arrays)
    source = frames.syntax
    source_pi = str(ds.get("PhotometricInterpretation", "")).strip()
    source_planar = ds.get("PlanarConfiguration")
    source_planar = source_planar if source_planar in (0, 1) else None
    refused = ""
    if source in REENCODABLE and not frames.lossy:
        _set_image_attributes(ds, frames, source, source_pi, source_planar)
        try:
            ds.compress(
                source, stack if len(frames.arrays) > 1 else stack[0], generate_instance_uid=False
            )
        except ValueError as exc:  # pydicom's encoders refuse what they cannot write
            log.warning(
                "%s encoder refused the image, writing it uncompressed: %s",
                source.name,
                str(exc).splitlines()[0],
            )
            refused = f" ({source.name} encoder refused the image)"
        else:
            return f"re-encoded in {source.name}"
    target = source if source in UNCOMPRESSED else ExplicitVRLittleEndian
    planar = _set_image_attributes(ds, frames, target, source_pi, source_planar)
    if planar == 1:
        stack = np.moveaxis(stack, -1, 1)  # frames, samples, rows, columns
    dtype = stack.dtype.newbyteorder(">" if target == ExplicitVRBigEndian else "<")
    data = np.ascontiguousarray(stack).astype(dtype, copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"
    if "PixelData" in ds:
        del ds.PixelData
    ds.add_new(0x7FE00010, "OW" if stack.dtype.itemsize > 1 else "OB", data)
    if target != source:
        ds.file_meta.TransferSyntaxUID = target
        if frames.lossy:
            ds.LossyImageCompression = "01"
        return f"written uncompressed ({target.name}) from {source.name}{refused}"
    return "written uncompressed"


def _set_image_attributes(
    ds: Dataset, frames: Frames, target: UID, source_pi: str, source_planar: int | None
) -> int | None:
    """Describe the frames as they will be written in ``target``; returns the planar configuration.

    PS3.5 8.2: the Photometric Interpretation must be one the syntax allows and, for JPEG 2000,
    name the colour transform applied in the codestream (pydicom's encoder applies the
    reversible one when told YBR_RCT and none for RGB).
    """
    first = frames.arrays[0]
    photometric = frames.photometric
    if target == JPEG2000Lossless and photometric == "RGB" and source_pi != "RGB":
        photometric = "YBR_RCT"
    ds.PhotometricInterpretation = photometric
    planar: int | None = None
    if first.ndim == 3:
        ds.SamplesPerPixel = first.shape[-1]
        planar = 0
        keeps_own = UNCOMPRESSED | {RLELossless}
        if source_planar is not None and target in keeps_own and frames.syntax in keeps_own:
            planar = source_planar
        ds.PlanarConfiguration = planar
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration  # Type 1C: present only with more than one sample
    if first.dtype.itemsize == 1 and int(ds.get("BitsAllocated", 8)) != 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    return planar
