"""Is a received instance whole?  Orthanc answers C-STORE Success to truncated files.

``../shared/notes/orthanc.md`` §7: a file cut inside its pixel data is stored with part of its
pixels, one cut in its header is stored without pixel data.  DICOM has no checksum, so what can
be checked is structure: the file parses, an image has its pixel data, native pixel data has
the length its header promises, compressed pixel data decodes and (JPEG, JPEG-LS, JPEG 2000,
whose decoders fill in a cut codestream without a word) every frame ends with its end marker.
Used by the DICOM edge (``voxelhub_dicom``) and by ``voxelhub pull`` (:mod:`voxelhub.dicomweb`).
"""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

# objects VoxelHub ingests that carry no image pixel data of their own
LABEL_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
}
_ENDS_WITH_EOI = {
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
}
_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check_instance(data: bytes) -> str | None:
    """None when the instance may be ingested, else the reason it is rejected."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many kinds on damaged input
        return f"unreadable DICOM: {type(exc).__name__}: {exc}"[:300]
    return check_dataset(ds)


def check_dataset(ds: Dataset) -> str | None:
    """:func:`check_instance` for an instance already parsed (a WADO-RS part)."""
    sop = str(ds.get("SOPClassUID", ""))
    if sop in LABEL_CLASSES:
        return None
    pixels = next((k for k in _PIXELS if k in ds), None)
    if pixels is None:
        if "Rows" in ds or "Columns" in ds:
            return "truncated or corrupt: an image header without pixel data"
        name = UID(sop).name if sop else "a file without a SOP class"
        return f"not an image: {name} carries no pixel data"
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        return f"corrupt image header: {exc}"[:300]
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        raw = ds[pixels].value
    except Exception as exc:
        return f"corrupt pixel data: {exc}"[:300]
    if ts is not None and UID(ts).is_compressed:
        if UID(ts) in _ENDS_WITH_EOI:
            # JPEG, JPEG-LS and JPEG 2000 decoders fill in a cut codestream without an error:
            # each frame must end with its End Of Image (EOC) marker, FFD9 (then maybe a pad)
            try:
                encapsulated = list(generate_frames(raw, number_of_frames=frames))
            except Exception as exc:
                return f"corrupt encapsulated pixel data: {type(exc).__name__}: {exc}"[:300]
            for n, frame in enumerate(encapsulated):
                if not frame.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    return (
                        f"truncated: compressed frame {n + 1} of {frames} ends without its "
                        "end-of-image marker"
                    )
        try:
            ds.pixel_array  # noqa: B018 - decoding is the check
        except Exception as exc:
            return f"compressed pixel data does not decode: {type(exc).__name__}: {exc}"[:300]
        return None
    expected = (rows * cols * spp * frames * bits + 7) // 8
    if len(raw) < expected:
        return (
            f"truncated: pixel data holds {len(raw)} of {expected} bytes "
            f"({frames} frame(s) of {rows}x{cols}x{spp}, {bits} bits)"
        )
    return None
