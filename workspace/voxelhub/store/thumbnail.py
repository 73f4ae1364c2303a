"""Thumbnails: one slice of a volume's smallest stored pyramid level as a small PNG.

One rule for every thumbnail (the StudyBrowser's strip, the data service's
``api/volumes/<uid>/thumbnail``): the smallest level the store holds (≤ 64 px a side, so one
small read), the first time point of a 4-D volume, and a window from what is stored with the
volume: the modality's stored ``abdomen`` preset (CT), otherwise the 1st–99th percentiles of
the whole smallest level, so every slice of a volume gets the same window.  The store keeps no
intensity range of its own; the smallest level stands in for it.  A colour volume's thumbnail
is an RGB PNG of its samples as stored (no window: colours are already display values).
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from voxelhub.errors import StoreError

if TYPE_CHECKING:
    from voxelhub.store.stored import StoredVolume

AXES = ("z", "y", "x")
"""Axes a thumbnail may cut across: ``z`` axial, ``y`` coronal, ``x`` sagittal."""


def png_bytes(image: Any) -> bytes:
    """An 8-bit PNG of a 2-D uint8 array (grey) or an ``(h, w, 3)`` one (RGB), no imaging
    library needed."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = arr.shape[:2]
    colour_type = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def window(values: Any, presets: Any = None) -> tuple[float, float]:
    """(centre, width): the stored ``abdomen`` preset, else the 1st–99th percentiles."""
    preset = (presets or {}).get("abdomen")
    if preset:
        return float(preset[0]), float(preset[1])
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(arr, (1.0, 99.0))
    width = float(hi - lo) or 1.0
    return float(lo + width / 2), width


def thumbnail(stored: StoredVolume, index: int | None = None, axis: str = "z") -> np.ndarray:
    """The 8-bit slice ``index`` (in full-resolution voxels along ``axis``; default the
    middle) of the smallest stored level: ``(h, w)`` grey, or ``(h, w, 3)`` for a colour
    volume, whose samples are shown as they are (16-bit ones scaled to 8), never windowed."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, not {axis[:20]!r}")
    level = len(stored.levels) - 1
    smallest = stored.open(level)
    if "t" in smallest.dims:
        smallest = smallest.isel(t=0)
    data = np.asarray(smallest.data)
    dim = AXES.index(axis)
    coloured = "c" in smallest.dims
    full = stored.levels[0].shape[-3:][dim]
    if index is None:
        index = full // 2
    if not 0 <= index < full:
        raise ValueError(f"{axis}={index} is outside the volume (0..{full - 1})")
    factor = stored.levels[level].factor[dim]
    at = min(index // factor, data.shape[dim + coloured] - 1)
    if coloured:  # (c, z, y, x): the channels go last, as an RGB image has them
        plane = np.moveaxis(np.take(data, at, axis=dim + 1), 0, -1)
        shift = max(0, 8 * data.dtype.itemsize - 8)
        return (plane >> shift).astype(np.uint8)
    plane = np.take(data, at, axis=dim)
    centre, width = window(data, smallest.attrs.get("window_presets"))
    grey = np.clip((plane.astype(np.float64) - (centre - width / 2)) / width * 255, 0, 255)
    return grey.astype(np.uint8)


def thumbnail_png(stored: StoredVolume, index: int | None = None, axis: str = "z") -> bytes:
    """:func:`thumbnail` as PNG bytes."""
    try:
        return png_bytes(thumbnail(stored, index, axis))
    except (KeyError, OSError) as exc:
        raise StoreError(f"no thumbnail of {stored.volume_uid}: {exc}") from exc
